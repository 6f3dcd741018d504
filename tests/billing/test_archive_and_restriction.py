"""A subject's archived billing records and the restriction of their processing (issue 10),
on SQLite and PostgreSQL:

- archived records are out of every day-to-day path; only the DPO or habilitated staff
  read them, for a legal reason, and every attempt (refusals included) is appended to a
  hash-chained, append-only archive access log (RET-02, RET-07);
- once processing is restricted (GDPR-04) no new order, card payment or coverage is
  accepted for the subject (FAILED_PRECONDITION, which the case workflow treats as a
  refusal no retry fixes), while the person still reads their own invoices.
"""

from __future__ import annotations

import uuid
from datetime import UTC, timedelta
from typing import Any

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2 as pb
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from temporalio.exceptions import ApplicationError

from services.billing.domain import archive_access
from services.billing.psp.sandbox import SUCCESS_CARD
from services.shared.auth import Habilitation, Role
from services.shared.db import create_engine, session_factory
from tests.billing.conftest import (
    Env,
    expect_status,
    new_order,
    now,
    partner_with_agreement,
    pay_in_sandbox,
    record_mandate,
)
from tests.billing.test_coverage import issue
from tests.billing.test_invoices_and_partners import download
from workflows.grpc_errors import as_activity_error

PD, IA = grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT
NF, FP = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION
DPO = "3b1d4f0e-8c61-4a8e-b7d2-0c9a6e5f2d01"
# A coordinator to whom identity granted the archive-access habilitation (SEC-05, RET-07);
# tests/identity/test_habilitations.py drives the real grant end to end.
ARCHIVIST = "7e0c2a35-5d1f-4d0e-9a57-a4c1b0f3e001"
ARCHIVE_ACCESS = frozenset({Habilitation.ARCHIVE_ACCESS})


def read(
    subject_id: str,
    purpose: Any = pb.ARCHIVE_READ_PURPOSE_LITIGATION,
    reference: str = "RG 26/01234",
) -> pb.ReadArchivedSubjectRequest:
    return pb.ReadArchivedSubjectRequest(subject_id=subject_id, purpose=purpose, reference=reference)


async def history(env: Env) -> dict[str, Any]:
    """A payer with a card-paid order (invoiced, partly refunded with a credit note) and an
    order covered by a partner's code."""
    payer = await env.sign_up()
    worker = env.billing(env.tokens("worker"))
    paid = await new_order(env, payer=payer)
    await pay_in_sandbox(env, paid, SUCCESS_CARD)
    mandate = await record_mandate(env)
    invoices = (
        await worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{paid.order_id}", order_id=paid.order_id, doctor_ids=[mandate.doctor_id]
            )
        )
    ).invoices
    refund = (
        await worker.RefundPayment(
            pb.RefundPaymentRequest(
                idempotency_key=f"refund-{paid.order_id}",
                order_id=paid.order_id,
                amount_cents=1000,
                currency="EUR",
                reason=pb.REFUND_REASON_ORDER_ERROR,
            )
        )
    ).refund
    assert refund.status == pb.REFUND_STATUS_COMPLETED and refund.credit_note_ids
    partner_id, agreement_id = await partner_with_agreement(env)
    (code,) = await issue(env, partner_id, agreement_id)
    covered = await new_order(env, payer=payer)
    await env.billing(env.tokens("gateway")).ValidateCoverageCode(
        pb.ValidateCoverageCodeRequest(
            idempotency_key=f"v-{covered.order_id}", order_id=covered.order_id, code=code.code
        )
    )
    mine = env.billing(env.person(payer, Role.PATIENT))
    own = (await mine.ListInvoices(pb.ListInvoicesRequest())).invoices
    return {
        "payer": payer,
        "paid": paid,
        "covered": covered,
        "invoice_ids": [i.invoice_id for i in invoices] + list(refund.credit_note_ids),
        "own_invoice_ids": [i.invoice_id for i in own],
        "refund": refund,
        "mine": mine,
    }


async def log_entries(env: Env, subject_id: str) -> list[Any]:
    engine = create_engine(env.database_url)
    try:
        async with session_factory(engine)() as session:
            return await archive_access.entries_about(session, subject_id)
    finally:
        await engine.dispose()


@pytest.mark.req("RET-02")
@pytest.mark.req("RET-05")
@pytest.mark.req("RET-07")
@pytest.mark.req("BIL-06")
@pytest.mark.req("BIL-09")
@pytest.mark.req("SEC-02")
async def test_archived_records_are_read_only_by_habilitated_staff_for_a_legal_reason_and_logged(
    env: Env,
) -> None:
    subject = await history(env)
    payer, paid, covered, mine = subject["payer"], subject["paid"], subject["covered"], subject["mine"]
    dpo = env.billing(env.person(DPO, Role.DPO))
    # Nothing archived yet: NOT_FOUND, and the attempt is logged all the same.
    await expect_status(dpo.ReadArchivedSubject(read(payer)), NF)
    archived = await env.billing(env.tokens("worker")).ArchiveSubject(
        pb.ArchiveSubjectRequest(idempotency_key=f"archive-{payer}", subject_id=payer)
    )
    assert {c.category: c.count for c in archived.archived}["orders"] == 2

    # RET-07: out of every day-to-day path, for the person and for staff.
    staff = env.billing(env.person(str(uuid.uuid4()), Role.COORDINATOR))
    for stub in (mine, staff):
        await expect_status(stub.GetOrder(pb.GetOrderRequest(order_id=paid.order_id)), NF)
        await expect_status(stub.GetOrder(pb.GetOrderRequest(case_id=covered.case_id)), NF)
        await expect_status(stub.GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=paid.order_id)), NF)
        for invoice_id in subject["invoice_ids"]:
            await expect_status(stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id)), NF)
    assert not (await mine.ListInvoices(pb.ListInvoicesRequest())).invoices
    assert not (await staff.ListInvoices(pb.ListInvoicesRequest(account_id=payer))).invoices
    await expect_status(
        download(mine, pb.DownloadInvoiceRequest(invoice_id=subject["own_invoice_ids"][0])), NF
    )

    # Who may not read the archive, whatever they ask: the person, coordinators without
    # the archive-access habilitation (the health-data one is not it), administrators,
    # doctors, partners' users, services (even the lifecycle worker).
    refused = [
        mine,
        staff,
        env.billing(env.person(str(uuid.uuid4()), Role.COORDINATOR, {Habilitation.HEALTH_DATA})),
        env.billing(env.person(str(uuid.uuid4()), Role.ADMINISTRATOR, ARCHIVE_ACCESS)),
        env.billing(env.person(str(uuid.uuid4()), Role.REFERENT_DOCTOR)),
        env.billing(env.person(str(uuid.uuid4()), Role.PARTNER_USER)),
        env.billing(env.tokens("worker")),
        env.billing(env.tokens("ops")),
    ]
    for stub in refused:
        await expect_status(stub.ReadArchivedSubject(read(payer)), PD)
    # A habilitated reader still needs a legal reason and the matter's reference.
    archivist = env.billing(env.person(ARCHIVIST, Role.COORDINATOR, ARCHIVE_ACCESS))
    assert "purpose" in await expect_status(
        archivist.ReadArchivedSubject(read(payer, purpose=pb.ARCHIVE_READ_PURPOSE_UNSPECIFIED)), IA
    )
    await expect_status(archivist.ReadArchivedSubject(read(payer, purpose=42)), IA)
    for reference in ("", "   ", "x" * 129, "RG\n26"):
        assert "reference" in await expect_status(
            archivist.ReadArchivedSubject(read(payer, reference=reference)), IA
        )
    await expect_status(archivist.ReadArchivedSubject(read("")), IA)
    # The habilitation counts for coordinators only (identity grants it to no one else).
    patient_with_claim = env.billing(env.person(ARCHIVIST, Role.PATIENT, ARCHIVE_ACCESS))
    await expect_status(patient_with_claim.ReadArchivedSubject(read(payer)), PD)

    # The DPO, for litigation: orders, invoice metadata, refunds, a payments summary.
    got = await dpo.ReadArchivedSubject(read(payer))
    assert [o.order.order_id for o in got.orders] == [paid.order_id, covered.order_id]
    assert got.orders[0].order.status == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    assert got.orders[1].order.funding_source == pb.FUNDING_SOURCE_PARTNER_COVERAGE
    assert sorted(i.invoice.invoice_id for i in got.invoices) == sorted(subject["invoice_ids"])
    assert any(i.invoice.kind == pb.INVOICE_KIND_CREDIT_NOTE for i in got.invoices)
    assert [r.refund.refund_id for r in got.refunds] == [subject["refund"].refund_id]
    (payment,) = got.payments
    assert payment.order_id == paid.order_id and payment.currency == "EUR"
    assert (payment.attempt_count, payment.captured_count) == (1, 1)
    assert payment.captured_amount_cents == paid.total_amount_cents
    assert payment.latest_status == pb.PAYMENT_STATUS_CAPTURED and payment.psp_transaction_id
    assert payment.notification_count >= 1 and payment.HasField("captured_at")
    archived_at = got.archived_at.ToDatetime(tzinfo=UTC)
    assert timedelta(0) <= archived.archived_at.ToDatetime(tzinfo=UTC) - archived_at < timedelta(seconds=5)
    assert not got.restricted and got.access_log_id
    # BIL-09 / RET-05: accounting records kept 10 years, payment data 13 months.
    for kept in [o.retention for o in got.orders] + [i.retention for i in got.invoices]:
        assert kept.retain_until.ToDatetime(tzinfo=UTC) - now() > timedelta(days=3650)
        assert not kept.restricted
    payment_until = payment.retain_until.ToDatetime(tzinfo=UTC) - now()
    assert timedelta(days=360) < payment_until < timedelta(days=400)
    # BIL-06: no card data anywhere (the platform never had any).
    assert SUCCESS_CARD.encode() not in got.SerializeToString()

    # A habilitated coordinator, for a regulator's inquiry.
    again = await archivist.ReadArchivedSubject(
        read(payer, purpose=pb.ARCHIVE_READ_PURPOSE_REGULATOR_INQUIRY, reference="CNIL 2026-117")
    )
    assert len(again.orders) == 2 and again.access_log_id != got.access_log_id

    # Every attempt is logged, in order, refusals included: who, role, why, outcome.
    entries = await log_entries(env, payer)
    outcomes = [e.outcome for e in entries]
    assert outcomes == ["not_found"] + ["denied"] * 8 + ["invalid"] * 6 + ["denied", "granted", "granted"]
    first, granted, regulator = entries[0], entries[-2], entries[-1]
    assert (first.reader_account_id, first.reader_role, first.purpose) == (DPO, "dpo", "litigation")
    assert {e.reader_role for e in entries[1:9]} == {
        "patient",
        "coordinator",
        "administrator",
        "referent_doctor",
        "partner_user",
        "service",
    }
    assert entries[1].reader_account_id == payer  # the person themself was refused
    assert (granted.access_id, granted.reader_account_id, granted.reference) == (
        got.access_log_id,
        DPO,
        "RG 26/01234",
    )
    assert granted.record_count == len(got.orders) + len(got.invoices) + len(got.refunds) + 1
    assert (regulator.access_id, regulator.reader_account_id, regulator.reader_role) == (
        again.access_log_id,
        ARCHIVIST,
        "coordinator",
    )
    assert (regulator.purpose, regulator.reference) == ("regulator_inquiry", "CNIL 2026-117")
    # No reason: logged without one; caller-given references are logged printable and bounded.
    assert [(e.purpose, e.reference) for e in entries[9:15]] == [
        ("", "RG 26/01234"),
        ("", "RG 26/01234"),
        ("litigation", ""),
        ("litigation", ""),
        ("litigation", "x" * 128),
        ("litigation", ""),
    ]

    # The log is append-only (the database refuses) and its hash chain is intact.
    engine = create_engine(env.database_url)
    try:
        for statement in (
            "UPDATE archive_access_log SET outcome = 'granted'",
            "DELETE FROM archive_access_log",
        ):
            with pytest.raises(DBAPIError):
                async with engine.begin() as connection:
                    await connection.execute(text(statement))
        async with session_factory(engine)() as session:
            report = await archive_access.verify_chain(session)
        assert report.intact and report.checked >= len(entries)
    finally:
        await engine.dispose()


@pytest.mark.req("GDPR-04")
@pytest.mark.req("RET-07")
async def test_a_restricted_subject_gets_no_new_order_payment_or_coverage_but_reads_their_invoices(
    env: Env,
) -> None:
    subject = await history(env)
    payer, mine = subject["payer"], subject["mine"]
    worker, gateway = env.billing(env.tokens("worker")), env.billing(env.tokens("gateway"))
    open_order = await new_order(env, payer=payer)
    partner_id, agreement_id = await partner_with_agreement(env)
    (code,) = await issue(env, partner_id, agreement_id)
    first_key = f"order-{open_order.case_id}"

    dpo = env.billing(env.person(DPO, Role.DPO))

    async def restrict(restricted: bool, key: str) -> pb.RestrictSubjectResponse:
        response: pb.RestrictSubjectResponse = await dpo.RestrictSubject(
            pb.RestrictSubjectRequest(
                idempotency_key=key, subject_id=payer, rights_request_id="rr-restrict", restricted=restricted
            )
        )
        return response

    restricted = await restrict(True, f"restrict-{payer}")
    assert {c.category: c.count for c in restricted.affected}["orders"] == 3

    def new_case(key: str) -> pb.CreateOrderRequest:
        return pb.CreateOrderRequest(
            idempotency_key=key,
            case_id=str(uuid.uuid4()),
            payer_account_id=payer,
            purpose=pb.CASE_PURPOSE_SECOND_OPINION,
            therapeutic_area="cardiology",
            doctor_count=1,
        )

    # No new order, by the case workflow or the person; the message says why.
    for stub in (worker, mine):
        details = await expect_status(stub.CreateOrder(new_case(f"restricted-{uuid.uuid4()}")), FP)
        assert "restricted" in details
    # No card payment, no coverage on the order already open; nothing half-written.
    start = pb.StartCardPaymentRequest(idempotency_key=f"pay-{uuid.uuid4()}", order_id=open_order.order_id)
    for stub in (gateway, mine):
        assert "restricted" in await expect_status(stub.StartCardPayment(start), FP)
    assert "restricted" in await expect_status(
        gateway.ValidateCoverageCode(
            pb.ValidateCoverageCodeRequest(
                idempotency_key=f"v-{uuid.uuid4()}", order_id=open_order.order_id, code=code.code
            )
        ),
        FP,
    )
    codes = await env.billing().ListCoverageCodes(pb.ListCoverageCodesRequest(partner_id=partner_id))
    assert codes.codes[0].use_count == 0
    agreements = await env.billing().ListPartnerAgreements(
        pb.ListPartnerAgreementsRequest(partner_id=partner_id)
    )
    assert agreements.agreements[0].used_count == 0
    await expect_status(mine.GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=open_order.order_id)), NF)

    # The case workflow sees a refusal no retry fixes (non-retryable ApplicationError).
    with pytest.raises(grpc.aio.AioRpcError) as refusal:
        await worker.CreateOrder(new_case(f"restricted-{uuid.uuid4()}"))
    error = as_activity_error(refusal.value)
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert error.type == "grpc.FAILED_PRECONDITION"

    # Reading what exists still works: their orders and their own invoices.
    got = await mine.GetOrder(pb.GetOrderRequest(order_id=open_order.order_id))
    assert got.order.status == pb.ORDER_STATUS_AWAITING_PAYMENT
    listed = (await mine.ListInvoices(pb.ListInvoicesRequest())).invoices
    assert sorted(i.invoice_id for i in listed) == sorted(subject["own_invoice_ids"])
    invoice_id = subject["own_invoice_ids"][0]
    assert (
        await mine.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id))
    ).invoice.invoice_id == invoice_id
    _, content = await download(mine, pb.DownloadInvoiceRequest(invoice_id=invoice_id))
    assert content.startswith(b"%PDF")
    # A retried call of an order placed before the restriction answers as the first did.
    replay = await worker.CreateOrder(
        pb.CreateOrderRequest(
            idempotency_key=first_key,
            case_id=open_order.case_id,
            payer_account_id=payer,
            purpose=pb.CASE_PURPOSE_SECOND_OPINION,
            therapeutic_area="cardiology",
            doctor_count=1,
        )
    )
    assert replay.order.order_id == open_order.order_id
    # Other subjects are not affected.
    assert (await new_order(env)).status == pb.ORDER_STATUS_AWAITING_PAYMENT

    # Archived while restricted: still readable for a legal need, and marked restricted.
    await worker.ArchiveSubject(
        pb.ArchiveSubjectRequest(idempotency_key=f"archive-{payer}", subject_id=payer)
    )
    archive = await dpo.ReadArchivedSubject(
        read(payer, purpose=pb.ARCHIVE_READ_PURPOSE_RIGHTS_REQUEST, reference="rr-restrict")
    )
    assert archive.restricted and len(archive.orders) == 3
    assert all(o.retention.restricted for o in archive.orders)

    # Lifting the restriction restores processing.
    await restrict(False, f"lift-{payer}")
    assert (await new_order(env, payer=payer)).status == pb.ORDER_STATUS_AWAITING_PAYMENT
