"""Invoices under billing mandates, the ledger, the partner API, retention of payment data."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from datetime import timedelta

import facturx  # type: ignore[import-untyped]
import grpc
import pytest
from pypdf import PdfReader
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.partner.v1 import partner_pb2 as ppb
from sqlalchemy import text

from services.billing.psp.sandbox import SUCCESS_CARD
from services.shared.auth import Role
from services.shared.db import create_engine
from tests.billing.conftest import (
    Env,
    eventually,
    expect_status,
    new_order,
    now,
    partner_with_agreement,
    pay_in_sandbox,
    record_mandate,
    ts,
)


async def paid_order(env: Env, payer: str | None = None, doctors: int = 1) -> pb.Order:
    order = await new_order(env, payer=payer, doctors=doctors)
    await pay_in_sandbox(env, order, SUCCESS_CARD)
    return order


async def download(stub: object, request: object) -> tuple[object, bytes]:
    metadata = None
    content = b""
    async for part in stub.DownloadInvoice(request):  # type: ignore[attr-defined]
        if part.HasField("metadata"):
            metadata = part.metadata
        else:
            content += part.chunk
    return metadata, content


async def archived_invoice(stub: object, invoice_id: str, within: float = 10.0) -> pb.Invoice:
    """The invoice once its document is archived (filled after the numbering commit)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        invoice: pb.Invoice = (
            await stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id))  # type: ignore[attr-defined]
        ).invoice
        if invoice.sha256_hex or asyncio.get_running_loop().time() > deadline:
            return invoice
        await asyncio.sleep(0.05)


def pdf_text(content: bytes) -> str:
    return " ".join(" ".join(page.extract_text().split()) for page in PdfReader(io.BytesIO(content)).pages)


@pytest.mark.req("BIL-03")
@pytest.mark.req("BIL-04")
@pytest.mark.req("BIL-05")
@pytest.mark.req("BIL-08")
@pytest.mark.req("BIL-09")
@pytest.mark.req("BIL-11")
async def test_invoices_are_issued_per_doctor_under_mandate_numbered_archived_and_downloadable(
    env: Env,
) -> None:
    payer = await env.sign_up()
    doctors = [await record_mandate(env), await record_mandate(env)]
    order = await paid_order(env, payer=payer, doctors=2)
    worker = env.billing(env.tokens("worker"))
    request = pb.IssueInvoicesRequest(
        idempotency_key=f"invoices-{order.order_id}",
        order_id=order.order_id,
        doctor_ids=[d.doctor_id for d in doctors],
    )
    issued = (await worker.IssueInvoices(request)).invoices
    assert len(issued) == 3
    assert sum(i.total_amount_cents for i in issued) == order.total_amount_cents
    platform = next(i for i in issued if i.issuer_kind == pb.ISSUER_KIND_PLATFORM)
    year = now().year
    assert platform.invoice_number.startswith(f"P-{year}-")
    for doctor in doctors:
        mine = next(i for i in issued if i.issuer_doctor_id == doctor.doctor_id)
        assert mine.issuer_kind == pb.ISSUER_KIND_DOCTOR_UNDER_MANDATE
        assert mine.billing_mandate_id == doctor.mandate_id
        assert mine.invoice_number == f"{doctor.invoice_number_prefix}-{year}-000001"
        assert mine.recipient_account_id == payer and mine.format == pb.INVOICE_FORMAT_PDF
    # Rendered and archived right after the numbering transaction, by the background renderer.
    for invoice in issued:
        archived = await archived_invoice(worker, invoice.invoice_id)
        assert archived.archive_locked and len(archived.sha256_hex) == 64
    # A retry returns the same invoices; another key for the same order is refused.
    assert [i.invoice_id for i in (await worker.IssueInvoices(request)).invoices] == [
        i.invoice_id for i in issued
    ]
    request.idempotency_key = "another"
    await expect_status(worker.IssueInvoices(request), grpc.StatusCode.FAILED_PRECONDITION)
    # The payer lists and downloads theirs; the archived copy matches its hash.
    patient = env.billing(env.person(payer, Role.PATIENT))
    listed = await patient.ListInvoices(pb.ListInvoicesRequest())
    assert {i.invoice_id for i in listed.invoices} == {i.invoice_id for i in issued}
    doctor_invoice = next(i for i in issued if i.issuer_doctor_id == doctors[0].doctor_id)
    metadata, content = await download(
        patient, pb.DownloadInvoiceRequest(invoice_id=doctor_invoice.invoice_id)
    )
    assert metadata.invoice_number == doctor_invoice.invoice_number  # type: ignore[attr-defined]
    assert hashlib.sha256(content).hexdigest() == metadata.sha256_hex  # type: ignore[attr-defined]
    assert metadata.sha256_hex == (await archived_invoice(worker, doctor_invoice.invoice_id)).sha256_hex  # type: ignore[attr-defined]
    body = pdf_text(content)
    assert (
        "au nom et pour le compte de" in body
        and "Dr Claire Martin" in body
        and doctor_invoice.invoice_number in body
    )
    # BIL-03 / BIL-11: firm prices all taxes included, and no withdrawal right, stated on the invoice.
    assert "toutes taxes comprises" in body and "Pas de droit de rétractation" in body
    # Someone else cannot read it.
    other = env.billing(env.person(str(uuid.uuid4()), Role.PATIENT))
    await expect_status(
        other.GetInvoice(pb.GetInvoiceRequest(invoice_id=platform.invoice_id)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        download(other, pb.DownloadInvoiceRequest(invoice_id=platform.invoice_id)), grpc.StatusCode.NOT_FOUND
    )
    # BIL-08: "invoice available" email.
    await eventually(
        lambda: any(
            m.template == npb.NOTIFICATION_TEMPLATE_INVOICE_AVAILABLE
            and m.variables.invoice_number == platform.invoice_number
            for m in env.recorder.sent
        )
    )
    # Credit note: a new number in the issuer's series, the original untouched.
    note = (
        await worker.IssueCreditNote(
            pb.IssueCreditNoteRequest(
                idempotency_key=f"cn-{doctor_invoice.invoice_id}",
                invoice_id=doctor_invoice.invoice_id,
                amount_cents=10000,
                currency="EUR",
                reason=pb.CREDIT_NOTE_REASON_INVOICE_ERROR,
            )
        )
    ).credit_note
    assert note.kind == pb.INVOICE_KIND_CREDIT_NOTE and note.total_amount_cents == -10000
    assert note.invoice_number == f"{doctors[0].invoice_number_prefix}-{year}-000002"
    assert note.corrects_invoice_id == doctor_invoice.invoice_id
    for amount, currency in ((doctor_invoice.total_amount_cents, "EUR"), (100, "USD")):
        await expect_status(
            worker.IssueCreditNote(
                pb.IssueCreditNoteRequest(
                    idempotency_key=f"cn-{uuid.uuid4()}",
                    invoice_id=doctor_invoice.invoice_id,
                    amount_cents=amount,
                    currency=currency,
                    reason=pb.CREDIT_NOTE_REASON_REFUND,
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    unchanged = await worker.GetInvoice(pb.GetInvoiceRequest(invoice_id=doctor_invoice.invoice_id))
    # The invoice as issued, with the archive reference filled once after rendering.
    assert unchanged.invoice == await archived_invoice(worker, doctor_invoice.invoice_id)
    as_issued = pb.Invoice()
    as_issued.CopyFrom(unchanged.invoice)
    as_issued.ClearField("sha256_hex")
    as_issued.ClearField("archive_locked")
    assert as_issued == doctor_invoice
    # BIL-05: the doctor's ledger and payout statement.
    ledger = await worker.ListCollectionLedger(pb.ListCollectionLedgerRequest(doctor_id=doctors[0].doctor_id))
    assert [(e.kind, e.amount_cents) for e in ledger.entries] == [
        (pb.LEDGER_ENTRY_KIND_COLLECTED, 30000),
        (pb.LEDGER_ENTRY_KIND_REFUNDED, -10000),
    ]
    assert ledger.entries[0].source == pb.COLLECTION_SOURCE_USER_CARD
    statement = (
        await env.billing().GeneratePayoutStatement(
            pb.GeneratePayoutStatementRequest(
                idempotency_key=f"payout-{doctors[0].doctor_id}",
                doctor_id=doctors[0].doctor_id,
                period_start=ts(now() - timedelta(days=1)),
                period_end=ts(now()),
            )
        )
    ).statement
    assert (
        statement.collected_amount_cents,
        statement.refunded_amount_cents,
        statement.payout_amount_cents,
    ) == (
        30000,
        10000,
        20000,
    )
    # A doctor reads their own ledger only.
    doctor_token = env.person(doctors[1].doctor_account_id, Role.REFERENT_DOCTOR)
    await env.billing(doctor_token).ListCollectionLedger(
        pb.ListCollectionLedgerRequest(doctor_id=doctors[1].doctor_id)
    )
    await expect_status(
        env.billing(doctor_token).ListCollectionLedger(
            pb.ListCollectionLedgerRequest(doctor_id=doctors[0].doctor_id)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # No mandate in force: nothing issued, nothing numbered.
    unmandated = await paid_order(env)
    await expect_status(
        worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"i-{uuid.uuid4()}",
                order_id=unmandated.order_id,
                doctor_ids=[str(uuid.uuid4())],
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    after = await worker.ListInvoices(pb.ListInvoicesRequest(order_id=unmandated.order_id))
    assert not after.invoices


@pytest.mark.req("BIL-09")
async def test_concurrent_issues_number_each_series_without_gaps(env: Env) -> None:
    doctor = await record_mandate(env)
    orders = [await paid_order(env) for _ in range(8)]
    worker = env.billing(env.tokens("worker"))
    results = await asyncio.gather(
        *(
            worker.IssueInvoices(
                pb.IssueInvoicesRequest(
                    idempotency_key=f"inv-{o.order_id}", order_id=o.order_id, doctor_ids=[doctor.doctor_id]
                )
            )
            for o in orders
        )
    )
    numbers = sorted(
        int(i.invoice_number.rsplit("-", 1)[1])
        for r in results
        for i in r.invoices
        if i.issuer_doctor_id == doctor.doctor_id
    )
    assert numbers == list(range(1, 9))
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as connection:
            series = (
                await connection.execute(
                    text("SELECT series, count(*), max(sequence) FROM invoices GROUP BY series")
                )
            ).fetchall()
    finally:
        await engine.dispose()
    assert all(count == top for _, count, top in series), series


async def partner_key(env: Env, partner_id: str) -> tuple[str, str]:
    created = await env.billing().CreatePartnerApiKey(pb.CreatePartnerApiKeyRequest(partner_id=partner_id))
    assert created.api_key.startswith("sopk_") and created.credential.api_key_prefix == created.api_key[:12]
    return created.api_key, created.credential.credential_id


@pytest.mark.req("BIL-01")
@pytest.mark.req("BIL-10")
@pytest.mark.req("CASE-15")
async def test_the_partner_api_authenticates_each_partner_and_confines_it_to_its_data(env: Env) -> None:
    partner_id, agreement_id = await partner_with_agreement(env)
    other_id, _ = await partner_with_agreement(env)
    key, credential_id = await partner_key(env, partner_id)
    other_key, _ = await partner_key(env, other_id)
    api = env.partner(key)
    rival = env.partner(other_key)
    # Authentication: no key, a wrong key, an internal token instead of a key.
    await expect_status(
        env.partner("").ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    await expect_status(
        env.partner("sopk_wrong").ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED
    )
    agreements = await api.ListAgreements(ppb.ListAgreementsRequest())
    assert [a.agreement_id for a in agreements.agreements] == [agreement_id]
    # The partner issues codes under its own agreement only.
    request = ppb.IssueCoverageCodesRequest(
        idempotency_key="batch-1",
        agreement_id=agreement_id,
        count=2,
        usage=ppb.COVERAGE_CODE_USAGE_SINGLE_USE,
        expires_at=ts(now() + timedelta(days=10)),
    )
    codes = (await api.IssueCoverageCodes(request)).codes
    assert len(codes) == 2 and all(c.code for c in codes)
    # The same idempotency key from another partner is that partner's own (and here refused:
    # the agreement is not theirs).
    await expect_status(rival.IssueCoverageCodes(request), grpc.StatusCode.NOT_FOUND)
    await expect_status(
        rival.CheckCoverageCode(ppb.CheckCoverageCodeRequest(code_id=codes[0].code_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        rival.CheckCoverageCode(ppb.CheckCoverageCodeRequest(code=codes[0].code)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        rival.RevokeCoverageCode(
            ppb.RevokeCoverageCodeRequest(idempotency_key="r", code_id=codes[0].code_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    checked = await api.CheckCoverageCode(ppb.CheckCoverageCodeRequest(code=codes[0].code))
    assert checked.code.status == ppb.COVERAGE_CODE_STATUS_ACTIVE and not checked.code.code
    revoked = await api.RevokeCoverageCode(
        ppb.RevokeCoverageCodeRequest(idempotency_key="r-1", code_id=codes[1].code_id)
    )
    assert revoked.code.status == ppb.COVERAGE_CODE_STATUS_REVOKED
    # A member uses the code; the case is invoiced to the partner as Factur-X.
    doctor = await record_mandate(env)
    order = await new_order(env, area="oncology")
    await env.billing(env.tokens("gateway")).ValidateCoverageCode(
        pb.ValidateCoverageCodeRequest(
            idempotency_key=f"v-{order.order_id}", order_id=order.order_id, code=codes[0].code
        )
    )
    issued = (
        await env.billing(env.tokens("worker")).IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{order.order_id}",
                order_id=order.order_id,
                doctor_ids=[doctor.doctor_id],
            )
        )
    ).invoices
    assert all(
        i.recipient_partner_id == partner_id and i.format == pb.INVOICE_FORMAT_FACTUR_X for i in issued
    )
    cases = (await api.ListCoveredCases(ppb.ListCoveredCasesRequest())).cases
    assert len(cases) == 1
    case = cases[0]
    assert case.case_reference.startswith("SO-") and order.case_id not in str(case)
    assert case.status == ppb.COVERED_CASE_STATUS_DELIVERED and case.amount_cents == order.total_amount_cents
    assert sorted(case.invoice_numbers) == sorted(i.invoice_number for i in issued)
    assert not (await rival.ListCoveredCases(ppb.ListCoveredCasesRequest())).cases
    invoices = (await api.ListInvoices(ppb.ListInvoicesRequest())).invoices
    assert {i.invoice_id for i in invoices} == {i.invoice_id for i in issued}
    metadata, content = await download(api, ppb.DownloadInvoiceRequest(invoice_id=invoices[0].invoice_id))
    assert hashlib.sha256(content).hexdigest() == metadata.sha256_hex  # type: ignore[attr-defined]
    filename, xml = facturx.get_facturx_xml_from_pdf(content)
    assert filename == "factur-x.xml" and b"CrossIndustryInvoice" in xml
    assert b"oncology" not in xml and b"oncolog" not in content.lower()  # BIL-10: no therapeutic area
    await expect_status(
        download(rival, ppb.DownloadInvoiceRequest(invoice_id=invoices[0].invoice_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    # CASE-15: satisfaction only in aggregate, withheld below the minimum.
    period = ppb.GetSatisfactionSummaryRequest(
        period_start=ts(now() - timedelta(days=1)), period_end=ts(now() + timedelta(days=1))
    )
    gateway = env.billing(env.tokens("gateway"))
    await gateway.RecordSatisfactionAnswer(
        pb.RecordSatisfactionAnswerRequest(
            idempotency_key=f"s-{order.case_id}", case_id=order.case_id, score=4, would_recommend=True
        )
    )
    hidden = await api.GetSatisfactionSummary(period)
    assert hidden.suppressed and hidden.average_score == 0 and not hidden.score_counts
    for score in (5, 5, 3, 4):
        extra = await new_order(env)
        (code,) = (
            await api.IssueCoverageCodes(
                ppb.IssueCoverageCodesRequest(
                    idempotency_key=f"b-{extra.order_id}",
                    agreement_id=agreement_id,
                    count=1,
                    usage=ppb.COVERAGE_CODE_USAGE_SINGLE_USE,
                    expires_at=ts(now() + timedelta(days=10)),
                )
            )
        ).codes
        await gateway.ValidateCoverageCode(
            pb.ValidateCoverageCodeRequest(
                idempotency_key=f"v-{extra.order_id}", order_id=extra.order_id, code=code.code
            )
        )
        await gateway.RecordSatisfactionAnswer(
            pb.RecordSatisfactionAnswerRequest(
                idempotency_key=f"s-{extra.case_id}", case_id=extra.case_id, score=score
            )
        )
    shown = await api.GetSatisfactionSummary(period)
    assert not shown.suppressed and shown.response_count == 5 and shown.average_score == 4.2
    assert shown.would_recommend_count == 1
    assert (await rival.GetSatisfactionSummary(period)).suppressed
    # A revoked key stops working at once.
    await env.billing().RevokePartnerCredential(
        pb.RevokePartnerCredentialRequest(idempotency_key=f"rk-{credential_id}", credential_id=credential_id)
    )
    await expect_status(api.ListAgreements(ppb.ListAgreementsRequest()), grpc.StatusCode.UNAUTHENTICATED)
    # Keys are stored hashed: the secret is nowhere in the database.
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as connection:
            dump = str((await connection.execute(text("SELECT * FROM partner_credentials"))).fetchall())
    finally:
        await engine.dispose()
    assert key not in dump and key[12:] not in dump


@pytest.mark.req("RET-05")
async def test_payment_data_is_purged_after_13_months_while_invoices_stay(env: Env) -> None:
    doctor = await record_mandate(env)
    order = await paid_order(env)
    issued = (
        await env.billing(env.tokens("worker")).IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{order.order_id}",
                order_id=order.order_id,
                doctor_ids=[doctor.doctor_id],
            )
        )
    ).invoices
    old = now() - timedelta(days=500)
    engine = create_engine(env.database_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text("UPDATE payment_attempts SET created_at = :t WHERE order_id = :o"),
                {"t": old, "o": order.order_id},
            )
            await connection.execute(
                text(
                    "UPDATE psp_notifications SET received_at = :t WHERE payment_attempt_id IN "
                    "(SELECT payment_attempt_id FROM payment_attempts WHERE order_id = :o)"
                ),
                {"t": old, "o": order.order_id},
            )
    finally:
        await engine.dispose()
    worker = env.billing(env.tokens("worker"))
    await expect_status(
        worker.PurgePaymentData(
            pb.PurgePaymentDataRequest(idempotency_key="too-soon", older_than=ts(now() - timedelta(days=200)))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    purged = await worker.PurgePaymentData(
        pb.PurgePaymentDataRequest(
            idempotency_key=f"purge-{uuid.uuid4()}", older_than=ts(now() - timedelta(days=400))
        )
    )
    assert purged.purged_payment_attempt_count >= 1 and purged.purged_notification_count >= 1
    await expect_status(
        worker.GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    # The order (proof of the purchase) and the archived invoices remain.
    kept = await worker.GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    assert kept.order.status == pb.ORDER_STATUS_PAID
    metadata, content = await download(worker, pb.DownloadInvoiceRequest(invoice_id=issued[0].invoice_id))
    assert hashlib.sha256(content).hexdigest() == metadata.sha256_hex  # type: ignore[attr-defined]
    await expect_status(
        env.billing(env.tokens("gateway")).PurgePaymentData(
            pb.PurgePaymentDataRequest(idempotency_key="x", older_than=ts(now() - timedelta(days=400)))
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
