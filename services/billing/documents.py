"""Invoice, credit-note and payout-statement documents: PDF (fpdf2) and Factur-X
(PDF/A-3 with its CII XML, `factur-x`) for invoices addressed to partners.

Wording comes from catalog codes: a partner's document names the service, never a
therapeutic area nor anything about the person (BIL-10). A Unicode TrueType font is
embedded when the system has one (DejaVu, Debian `fonts-dejavu-core`), as PDF/A wants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from xml.sax.saxutils import escape

import facturx  # type: ignore[import-untyped]
from fpdf import FPDF

FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
)
WORDING = {
    "second_opinion_doctor_fee": "Avis médical à distance (second avis) - honoraires du médecin",
    "opinion_before_indemnity_claim_doctor_fee": "Avis médical à distance - honoraires du médecin",
    "platform_use_fee": "Utilisation de la plateforme",
}
EXEMPTION_REASON = "Exonération de TVA, article 261-4-1° du CGI"


@dataclass(frozen=True)
class Party:
    name: str
    identifiers: list[str] = field(default_factory=list)
    vat_number: str = ""
    siren: str = ""


@dataclass(frozen=True)
class DocumentLine:
    wording_code: str
    quantity: int
    unit_amount_cents: int
    total_amount_cents: int
    vat_amount_cents: int
    vat_rate_basis_points: int


@dataclass(frozen=True)
class InvoiceDocument:
    number: str
    credit_note: bool
    issued_at: datetime
    seller: Party
    on_behalf_mention: str
    buyer: Party
    order_reference: str
    lines: list[DocumentLine]
    total_amount_cents: int
    currency: str
    corrects_number: str = ""
    paid: bool = True


def wording(code: str) -> str:
    return WORDING.get(code, code.replace("_", " "))


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    cents = abs(cents)
    return f"{sign}{cents // 100}.{cents % 100:02d}"


def _pdf() -> tuple[FPDF, str]:
    pdf = FPDF()
    pdf.set_creation_date(datetime(2000, 1, 1))  # deterministic bytes apart from content
    font = next((path for path in FONT_CANDIDATES if path.exists()), None)
    if font is not None:
        pdf.add_font("DejaVu", "", str(font))
        family = "DejaVu"
    else:
        family = "Helvetica"
    pdf.add_page()
    pdf.set_font(family, size=10)
    return pdf, family


def _text(family: str, text: str) -> str:
    return text if family == "DejaVu" else text.encode("latin-1", "replace").decode("latin-1")


def render_invoice_pdf(doc: InvoiceDocument) -> bytes:
    pdf, family = _pdf()
    w = pdf.epw

    def line(text: str, size: int = 10, height: float = 6) -> None:
        pdf.set_font(family, size=size)
        pdf.multi_cell(w, height, _text(family, text), new_x="LMARGIN", new_y="NEXT")

    title = "AVOIR" if doc.credit_note else "FACTURE"
    line(f"{title} n° {doc.number}", 16, 9)
    line(f"Date d'émission : {doc.issued_at.date().isoformat()}")
    line(f"Commande : {doc.order_reference}")
    if doc.corrects_number:
        line(f"Rectifie la facture n° {doc.corrects_number}")
    line("")
    line(f"Émetteur : {doc.seller.name}")
    for identifier in doc.seller.identifiers:
        line(f"  {identifier}")
    if doc.on_behalf_mention:
        line(doc.on_behalf_mention, 8, 5)
    line(f"Destinataire : {doc.buyer.name}")
    line("")
    for item in doc.lines:
        rate = item.vat_rate_basis_points / 100
        line(
            f"{wording(item.wording_code)} - quantité {item.quantity} x {money(item.unit_amount_cents)} "
            f"= {money(item.total_amount_cents)} {doc.currency} TTC (dont TVA {rate:g} % : "
            f"{money(item.vat_amount_cents)})"
        )
        if item.vat_rate_basis_points == 0:
            line(EXEMPTION_REASON, 8, 5)
    line("")
    vat = sum(item.vat_amount_cents for item in doc.lines)
    line(f"Total TTC : {money(doc.total_amount_cents)} {doc.currency} (dont TVA {money(vat)})", 12, 8)
    if not doc.credit_note:
        line("Acquittée." if doc.paid else "À régler selon la convention de prise en charge.")
    line(
        "Prix en euros toutes taxes comprises, fermes et définitifs. "
        "Pas de droit de rétractation (CGU §6.6).",
        8,
        5,
    )
    return bytes(pdf.output())


def _cii_amount(cents: int) -> str:
    return money(abs(cents))


def cii_xml(doc: InvoiceDocument) -> bytes:
    """Factur-X BASIC profile (EN 16931 subset) CII XML."""
    lines_xml = []
    taxes: dict[int, list[int]] = {}
    net_total = 0
    for index, item in enumerate(doc.lines, start=1):
        net = abs(item.total_amount_cents) - abs(item.vat_amount_cents)
        unit_net = net // max(item.quantity, 1)
        net_total += net
        bucket = taxes.setdefault(item.vat_rate_basis_points, [0, 0])
        bucket[0] += net
        bucket[1] += abs(item.vat_amount_cents)
        category = "S" if item.vat_rate_basis_points else "E"
        lines_xml.append(
            f"""<ram:IncludedSupplyChainTradeLineItem>
<ram:AssociatedDocumentLineDocument><ram:LineID>{index}</ram:LineID></ram:AssociatedDocumentLineDocument>
<ram:SpecifiedTradeProduct>
<ram:Name>{escape(wording(item.wording_code))}</ram:Name>
</ram:SpecifiedTradeProduct>
<ram:SpecifiedLineTradeAgreement>
<ram:NetPriceProductTradePrice>
<ram:ChargeAmount>{_cii_amount(unit_net)}</ram:ChargeAmount>
</ram:NetPriceProductTradePrice>
</ram:SpecifiedLineTradeAgreement>
<ram:SpecifiedLineTradeDelivery>
<ram:BilledQuantity unitCode="C62">{item.quantity}</ram:BilledQuantity>
</ram:SpecifiedLineTradeDelivery>
<ram:SpecifiedLineTradeSettlement>
<ram:ApplicableTradeTax>
<ram:TypeCode>VAT</ram:TypeCode>
<ram:CategoryCode>{category}</ram:CategoryCode>
<ram:RateApplicablePercent>{item.vat_rate_basis_points / 100:.2f}</ram:RateApplicablePercent>
</ram:ApplicableTradeTax>
<ram:SpecifiedTradeSettlementLineMonetarySummation>
<ram:LineTotalAmount>{_cii_amount(net)}</ram:LineTotalAmount>
</ram:SpecifiedTradeSettlementLineMonetarySummation>
</ram:SpecifiedLineTradeSettlement>
</ram:IncludedSupplyChainTradeLineItem>"""
        )
    taxes_xml = []
    for rate, (basis, amount) in sorted(taxes.items()):
        category = "S" if rate else "E"
        reason = f"<ram:ExemptionReason>{escape(EXEMPTION_REASON)}</ram:ExemptionReason>" if not rate else ""
        taxes_xml.append(
            f"<ram:ApplicableTradeTax><ram:CalculatedAmount>{_cii_amount(amount)}</ram:CalculatedAmount>"
            f"<ram:TypeCode>VAT</ram:TypeCode>{reason}<ram:BasisAmount>{_cii_amount(basis)}</ram:BasisAmount>"
            f"<ram:CategoryCode>{category}</ram:CategoryCode>"
            f"<ram:RateApplicablePercent>{rate / 100:.2f}</ram:RateApplicablePercent>"
            "</ram:ApplicableTradeTax>"
        )
    tax_total = sum(amount for _, amount in taxes.values())
    grand = abs(doc.total_amount_cents)
    seller_ids = ""
    if doc.seller.siren:
        seller_ids += (
            f'<ram:SpecifiedLegalOrganization><ram:ID schemeID="0002">{escape(doc.seller.siren)}</ram:ID>'
            "</ram:SpecifiedLegalOrganization>"
        )
    seller_ids += "<ram:PostalTradeAddress><ram:CountryID>FR</ram:CountryID></ram:PostalTradeAddress>"
    if doc.seller.vat_number:
        seller_ids += (
            f'<ram:SpecifiedTaxRegistration><ram:ID schemeID="VA">{escape(doc.seller.vat_number)}</ram:ID>'
            "</ram:SpecifiedTaxRegistration>"
        )
    referenced = (
        f"<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>{escape(doc.corrects_number)}</ram:IssuerAssignedID>"
        "</ram:InvoiceReferencedDocument>"
        if doc.corrects_number
        else ""
    )
    note = f"<ram:IncludedNote><ram:Content>{escape(doc.on_behalf_mention)}</ram:Content></ram:IncludedNote>"
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
  xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
  xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100"
  xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100">
<rsm:ExchangedDocumentContext>
<ram:GuidelineSpecifiedDocumentContextParameter>
<ram:ID>urn:cen.eu:en16931:2017#compliant#urn:factur-x.eu:1p0:basic</ram:ID>
</ram:GuidelineSpecifiedDocumentContextParameter>
</rsm:ExchangedDocumentContext>
<rsm:ExchangedDocument>
<ram:ID>{escape(doc.number)}</ram:ID>
<ram:TypeCode>{"381" if doc.credit_note else "380"}</ram:TypeCode>
<ram:IssueDateTime>
<udt:DateTimeString format="102">{doc.issued_at.strftime("%Y%m%d")}</udt:DateTimeString>
</ram:IssueDateTime>{note if doc.on_behalf_mention else ""}</rsm:ExchangedDocument>
<rsm:SupplyChainTradeTransaction>
{"".join(lines_xml)}
<ram:ApplicableHeaderTradeAgreement>
<ram:SellerTradeParty><ram:Name>{escape(doc.seller.name)}</ram:Name>{seller_ids}</ram:SellerTradeParty>
<ram:BuyerTradeParty><ram:Name>{escape(doc.buyer.name)}</ram:Name></ram:BuyerTradeParty>
<ram:BuyerOrderReferencedDocument>
<ram:IssuerAssignedID>{escape(doc.order_reference)}</ram:IssuerAssignedID>
</ram:BuyerOrderReferencedDocument>
</ram:ApplicableHeaderTradeAgreement>
<ram:ApplicableHeaderTradeDelivery/>
<ram:ApplicableHeaderTradeSettlement>
<ram:InvoiceCurrencyCode>{doc.currency}</ram:InvoiceCurrencyCode>
{"".join(taxes_xml)}
<ram:SpecifiedTradeSettlementHeaderMonetarySummation>
<ram:LineTotalAmount>{_cii_amount(net_total)}</ram:LineTotalAmount>
<ram:TaxBasisTotalAmount>{_cii_amount(net_total)}</ram:TaxBasisTotalAmount>
<ram:TaxTotalAmount currencyID="{doc.currency}">{_cii_amount(tax_total)}</ram:TaxTotalAmount>
<ram:GrandTotalAmount>{_cii_amount(grand)}</ram:GrandTotalAmount>
<ram:DuePayableAmount>{_cii_amount(grand)}</ram:DuePayableAmount>
</ram:SpecifiedTradeSettlementHeaderMonetarySummation>
{referenced}
</ram:ApplicableHeaderTradeSettlement>
</rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
"""
    return xml.encode()


def render_facturx(doc: InvoiceDocument) -> bytes:
    pdf = render_invoice_pdf(doc)
    result: bytes = facturx.generate_from_binary(
        pdf,
        cii_xml(doc),
        flavor="factur-x",
        level="basic",
        check_xsd=True,
        pdf_metadata={
            "author": doc.seller.name,
            "keywords": "Factur-X",
            "title": f"{'Avoir' if doc.credit_note else 'Facture'} {doc.number}",
            "subject": f"{'Avoir' if doc.credit_note else 'Facture'} {doc.number}",
        },
        lang="fr-FR",
    )
    return result


@dataclass(frozen=True)
class StatementDocument:
    doctor_id: str
    period_start: datetime
    period_end: datetime
    collected_cents: int
    refunded_cents: int
    payout_cents: int
    entry_count: int
    currency: str
    generated_at: datetime


def render_statement_pdf(doc: StatementDocument) -> bytes:
    pdf, family = _pdf()
    for text in (
        "RELEVÉ DE REVERSEMENT (mandat d'encaissement)",
        f"Médecin : {doc.doctor_id}",
        f"Période : {doc.period_start.isoformat()} - {doc.period_end.isoformat()}",
        f"Encaissé pour le compte du médecin : {money(doc.collected_cents)} {doc.currency}",
        f"Remboursé : {money(doc.refunded_cents)} {doc.currency}",
        f"À reverser : {money(doc.payout_cents)} {doc.currency}",
        f"Écritures : {doc.entry_count}",
        f"Établi le {doc.generated_at.isoformat()}",
    ):
        pdf.multi_cell(pdf.epw, 7, _text(family, text), new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())
