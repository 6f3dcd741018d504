"""Rows to messages (and request timestamps to datetimes) for both gRPC services."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.partner.v1 import partner_pb2 as ppb

from services.billing.domain import refunds
from services.billing.domain.archive_access import ArchiveView, PaymentSummary, Retention
from services.billing.domain.coverage import code_status
from services.billing.domain.partner_access import CoveredCase
from services.billing.domain.prices import PriceLine, entries_of
from services.billing.models import (
    BillingMandate,
    CoverageCode,
    Invoice,
    LedgerEntry,
    Order,
    PartnerAgreement,
    PartnerCredential,
    PaymentAttempt,
    PayoutStatement,
    PriceCatalog,
    Refund,
)
from services.shared.protoconv import code_to_pb_enum, to_pb_enum, to_timestamp


def when(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime(tzinfo=UTC)
    return value


def stamp(value: datetime | None) -> Any:
    return to_timestamp(value) if value is not None else None


def line_to_pb(line: PriceLine) -> pb.Line:
    return pb.Line(
        kind=code_to_pb_enum(pb.LineKind, line.kind),
        wording_code=line.wording_code,
        quantity=line.quantity,
        unit_amount_cents=line.unit_amount_cents,
        total_amount_cents=line.total_amount_cents,
        vat_amount_cents=line.vat_amount_cents,
        vat_rate_basis_points=line.vat_rate_basis_points,
        currency=line.currency,
    )


def lines_to_pb(lines: list[dict[str, object]]) -> list[pb.Line]:
    return [line_to_pb(PriceLine.from_json(line)) for line in lines]


def catalog_to_pb(catalog: PriceCatalog) -> pb.PriceCatalog:
    return pb.PriceCatalog(
        catalog_version=catalog.catalog_version,
        effective_at=to_timestamp(catalog.effective_at),
        published_at=to_timestamp(catalog.published_at),
        entries=[
            pb.PriceEntry(
                purpose=code_to_pb_enum(pb.CasePurpose, entry.purpose),
                therapeutic_area=entry.therapeutic_area,
                doctor_fee_amount_cents=entry.doctor_fee_amount_cents,
                platform_fee_amount_cents=entry.platform_fee_amount_cents,
                currency=entry.currency,
                doctor_fee_vat_rate_basis_points=entry.doctor_fee_vat_rate_basis_points,
                platform_fee_vat_rate_basis_points=entry.platform_fee_vat_rate_basis_points,
            )
            for entry in entries_of(catalog)
        ],
    )


def order_to_pb(order: Order) -> pb.Order:
    return pb.Order(
        order_id=order.order_id,
        order_reference=order.order_reference,
        case_id=order.case_id,
        payer_account_id=order.payer_account_id,
        purpose=code_to_pb_enum(pb.CasePurpose, order.purpose),
        therapeutic_area=order.therapeutic_area,
        doctor_count=order.doctor_count,
        catalog_version=order.catalog_version,
        lines=lines_to_pb(order.lines),
        total_amount_cents=order.total_amount_cents,
        currency=order.currency,
        status=code_to_pb_enum(pb.OrderStatus, order.status),
        funding_source=code_to_pb_enum(pb.FundingSource, order.funding_source or "unspecified"),
        partner_id=order.partner_id or "",
        agreement_id=order.agreement_id or "",
        coverage_code_id=order.coverage_code_id or "",
        created_at=to_timestamp(order.created_at),
        settled_at=stamp(order.settled_at),
    )


def attempt_to_pb(attempt: PaymentAttempt) -> pb.PaymentAttempt:
    return pb.PaymentAttempt(
        payment_attempt_id=attempt.payment_attempt_id,
        order_id=attempt.order_id,
        status=code_to_pb_enum(pb.PaymentStatus, attempt.status),
        amount_cents=attempt.amount_cents,
        currency=attempt.currency,
        psp_transaction_id=attempt.psp_transaction_id or "",
        psp_error_code=attempt.psp_error_code,
        created_at=to_timestamp(attempt.created_at),
        captured_at=stamp(attempt.captured_at),
    )


def mandate_to_pb(mandate: BillingMandate) -> pb.BillingMandate:
    return pb.BillingMandate(
        mandate_id=mandate.mandate_id,
        doctor_id=mandate.doctor_id,
        doctor_account_id=mandate.doctor_account_id,
        covers_billing=mandate.covers_billing,
        covers_collection=mandate.covers_collection,
        starts_at=to_timestamp(mandate.starts_at),
        ends_at=stamp(mandate.ends_at),
        mandate_text_version=mandate.mandate_text_version,
        mandate_text_sha256_hex=mandate.mandate_text_sha256_hex,
        signed_document_id=mandate.signed_document_id,
        accepted_at=to_timestamp(mandate.accepted_at),
        invoice_number_prefix=mandate.invoice_number_prefix,
        doctor_legal_name=mandate.doctor_legal_name,
    )


def invoice_to_pb(invoice: Invoice) -> pb.Invoice:
    return pb.Invoice(
        invoice_id=invoice.invoice_id,
        invoice_number=invoice.invoice_number,
        kind=code_to_pb_enum(pb.InvoiceKind, invoice.kind),
        issuer_kind=code_to_pb_enum(pb.IssuerKind, invoice.issuer_kind),
        issuer_doctor_id=invoice.issuer_doctor_id,
        billing_mandate_id=invoice.billing_mandate_id,
        recipient_kind=code_to_pb_enum(pb.RecipientKind, invoice.recipient_kind),
        recipient_account_id=invoice.recipient_account_id,
        recipient_partner_id=invoice.recipient_partner_id,
        order_id=invoice.order_id,
        case_id=invoice.case_id,
        lines=lines_to_pb(invoice.lines),
        total_amount_cents=invoice.total_amount_cents,
        currency=invoice.currency,
        format=code_to_pb_enum(pb.InvoiceFormat, invoice.format),
        sha256_hex=invoice.sha256_hex,
        issued_at=to_timestamp(invoice.issued_at),
        corrects_invoice_id=invoice.corrects_invoice_id,
        archive_locked=invoice.archive_locked,
    )


def agreement_to_pb(agreement: PartnerAgreement) -> pb.PartnerAgreement:
    return pb.PartnerAgreement(
        agreement_id=agreement.agreement_id,
        partner_id=agreement.partner_id,
        covered_purposes=[code_to_pb_enum(pb.CasePurpose, p) for p in agreement.covered_purposes],
        covered_therapeutic_areas=agreement.covered_therapeutic_areas,
        starts_at=to_timestamp(agreement.starts_at),
        ends_at=stamp(agreement.ends_at),
        quota=agreement.quota,
        used_count=agreement.used_count,
        created_at=to_timestamp(agreement.created_at),
    )


def partner_agreement_to_pb(agreement: PartnerAgreement) -> ppb.Agreement:
    return ppb.Agreement(
        agreement_id=agreement.agreement_id,
        starts_at=to_timestamp(agreement.starts_at),
        ends_at=stamp(agreement.ends_at),
        quota=agreement.quota,
        used_count=agreement.used_count,
    )


def code_to_pb(code: CoverageCode, secret: str = "") -> pb.CoverageCode:
    return pb.CoverageCode(
        code_id=code.code_id,
        partner_id=code.partner_id,
        agreement_id=code.agreement_id,
        code=secret,
        usage=code_to_pb_enum(pb.CoverageCodeUsage, code.usage),
        max_uses=code.max_uses,
        use_count=code.use_count,
        status=code_to_pb_enum(pb.CoverageCodeStatus, code_status(code).value),
        expires_at=to_timestamp(code.expires_at),
        created_at=to_timestamp(code.created_at),
        revoked_at=stamp(code.revoked_at),
        issuer=code_to_pb_enum(pb.CoverageCodeIssuer, code.issuer),
    )


def partner_code_to_pb(code: CoverageCode, secret: str = "") -> ppb.CoverageCode:
    return ppb.CoverageCode(
        code_id=code.code_id,
        agreement_id=code.agreement_id,
        code=secret,
        usage=code_to_pb_enum(ppb.CoverageCodeUsage, code.usage),
        max_uses=code.max_uses,
        use_count=code.use_count,
        status=code_to_pb_enum(ppb.CoverageCodeStatus, code_status(code).value),
        expires_at=to_timestamp(code.expires_at),
        created_at=to_timestamp(code.created_at),
        revoked_at=stamp(code.revoked_at),
    )


def credential_to_pb(credential: PartnerCredential) -> pb.PartnerCredential:
    return pb.PartnerCredential(
        credential_id=credential.credential_id,
        partner_id=credential.partner_id,
        kind=code_to_pb_enum(pb.PartnerCredentialKind, credential.kind),
        api_key_prefix=credential.api_key_prefix,
        certificate_sha256_fingerprint=credential.certificate_sha256_fingerprint,
        created_at=to_timestamp(credential.created_at),
        expires_at=stamp(credential.expires_at),
        revoked_at=stamp(credential.revoked_at),
    )


def ledger_to_pb(entry: LedgerEntry) -> pb.LedgerEntry:
    return pb.LedgerEntry(
        entry_id=entry.entry_id,
        doctor_id=entry.doctor_id,
        order_id=entry.order_id,
        invoice_id=entry.invoice_id,
        source=code_to_pb_enum(pb.CollectionSource, entry.source),
        kind=code_to_pb_enum(pb.LedgerEntryKind, entry.kind),
        amount_cents=entry.amount_cents,
        currency=entry.currency,
        occurred_at=to_timestamp(entry.occurred_at),
    )


def statement_to_pb(statement: PayoutStatement) -> pb.PayoutStatement:
    return pb.PayoutStatement(
        statement_id=statement.statement_id,
        doctor_id=statement.doctor_id,
        period_start=to_timestamp(statement.period_start),
        period_end=to_timestamp(statement.period_end),
        collected_amount_cents=statement.collected_amount_cents,
        refunded_amount_cents=statement.refunded_amount_cents,
        payout_amount_cents=statement.payout_amount_cents,
        currency=statement.currency,
        entry_count=statement.entry_count,
        generated_at=to_timestamp(statement.generated_at),
        sha256_hex=statement.sha256_hex,
    )


def covered_case_to_pb(case: CoveredCase) -> ppb.CoveredCase:
    order = case.order
    return ppb.CoveredCase(
        case_reference=order.case_reference,
        code_id=order.coverage_code_id or "",
        agreement_id=order.agreement_id or "",
        covered_at=stamp(order.settled_at),
        status=code_to_pb_enum(ppb.CoveredCaseStatus, case.status),
        amount_cents=order.total_amount_cents,
        credited_amount_cents=case.credited_cents,
        currency=order.currency,
        invoice_numbers=case.invoice_numbers,
    )


def partner_invoice_to_pb(invoice: Invoice, case_reference: str, corrected: str) -> ppb.PartnerInvoice:
    return ppb.PartnerInvoice(
        invoice_id=invoice.invoice_id,
        invoice_number=invoice.invoice_number,
        kind=code_to_pb_enum(ppb.InvoiceKind, invoice.kind),
        case_reference=case_reference,
        issued_at=to_timestamp(invoice.issued_at),
        total_amount_cents=invoice.total_amount_cents,
        currency=invoice.currency,
        sha256_hex=invoice.sha256_hex,
        corrects_invoice_number=corrected,
    )


def refund_to_pb(refund: Refund) -> pb.Refund:
    message = pb.Refund(
        refund_id=refund.refund_id,
        order_id=refund.order_id,
        payment_attempt_id=refund.payment_attempt_id,
        amount_cents=refund.amount_cents,
        currency=refund.currency,
        reason=to_pb_enum(pb.RefundReason, refunds.RefundReason(refund.reason)),
        status=to_pb_enum(pb.RefundStatus, refunds.RefundStatus(refund.status)),
        created_at=to_timestamp(refund.created_at),
        credit_note_ids=list(refund.credit_note_ids or []),
    )
    if refund.completed_at is not None:
        message.completed_at.CopyFrom(to_timestamp(refund.completed_at))
    return message


def retention_to_pb(retention: Retention) -> pb.ArchiveRetention:
    return pb.ArchiveRetention(
        archived_at=to_timestamp(retention.archived_at),
        retain_until=to_timestamp(retention.retain_until),
        restricted=retention.restricted,
    )


def payment_summary_to_pb(summary: PaymentSummary) -> pb.ArchivedPaymentSummary:
    return pb.ArchivedPaymentSummary(
        order_id=summary.order_id,
        attempt_count=summary.attempt_count,
        captured_count=summary.captured_count,
        captured_amount_cents=summary.captured_amount_cents,
        currency=summary.currency,
        latest_status=code_to_pb_enum(pb.PaymentStatus, summary.latest_status),
        latest_attempt_at=stamp(summary.latest_attempt_at),
        captured_at=stamp(summary.captured_at),
        psp_transaction_id=summary.psp_transaction_id,
        notification_count=summary.notification_count,
        retain_until=stamp(summary.retain_until),
    )


def archive_view_to_pb(view: ArchiveView, access_id: str) -> pb.ReadArchivedSubjectResponse:
    return pb.ReadArchivedSubjectResponse(
        orders=[pb.ArchivedOrder(order=order_to_pb(o), retention=retention_to_pb(r)) for o, r in view.orders],
        invoices=[
            pb.ArchivedInvoice(invoice=invoice_to_pb(i), retention=retention_to_pb(r))
            for i, r in view.invoices
        ],
        refunds=[
            pb.ArchivedRefund(refund=refund_to_pb(f), retention=retention_to_pb(r)) for f, r in view.refunds
        ],
        payments=[payment_summary_to_pb(p) for p in view.payments],
        archived_at=to_timestamp(view.archived_at),
        restricted=view.restricted,
        access_log_id=access_id,
    )
