"""Refunds through the sandbox PSP (Paybox Direct, HMAC-SHA512) and cancellation of covered
orders, end to end on SQLite and PostgreSQL: the adapter's real code talks to the sandbox."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy import text

from services.billing.psp.paybox import PayboxSystem, RefundRequest
from services.billing.psp.sandbox import SUCCESS_CARD
from services.shared.auth import Role
from services.shared.db import create_engine
from tests.billing.conftest import (
    HMAC_KEY,
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


async def paid_order(env: Env, payer: str | None = None) -> tuple[pb.Order, pb.PaymentAttempt]:
    order = await new_order(env, payer=payer)
    await pay_in_sandbox(env, order, SUCCESS_CARD)
    status = await env.billing().GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id))
    assert status.order_status == pb.ORDER_STATUS_PAID
    return order, status.payment_attempt


def refund_request(
    order: pb.Order,
    amount: int,
    key: str | None = None,
    reason: int = pb.REFUND_REASON_CASE_CANCELLED_BEFORE_DELIVERY,
    currency: str = "EUR",
) -> pb.RefundPaymentRequest:
    return pb.RefundPaymentRequest(
        idempotency_key=key or f"refund-{uuid.uuid4()}",
        order_id=order.order_id,
        amount_cents=amount,
        currency=currency,
        reason=reason,  # type: ignore[arg-type]
    )


def refunds_at_psp(env: Env, transaction: str) -> list[int]:
    return [amount for trans, amount in env.sandbox.refunds if trans == transaction]


async def order_status(env: Env, order: pb.Order) -> int:
    got = await env.billing().GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    return int(got.order.status)


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
@pytest.mark.req("CASE-11")
async def test_a_cancelled_case_is_refunded_in_full_once_through_the_psp(env: Env) -> None:
    payer = await env.sign_up()
    order, attempt = await paid_order(env, payer)
    worker = env.billing(env.tokens("worker"))
    request = refund_request(order, attempt.amount_cents, key=f"wf-{order.case_id}:refund")
    refund = (await worker.RefundPayment(request)).refund
    assert refund.status == pb.REFUND_STATUS_COMPLETED and refund.HasField("completed_at")
    assert refund.amount_cents == order.total_amount_cents and refund.currency == "EUR"
    assert refund.payment_attempt_id == attempt.payment_attempt_id
    assert refund.reason == pb.REFUND_REASON_CASE_CANCELLED_BEFORE_DELIVERY
    # The PSP refunded the captured transaction, once; the order says so.
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [order.total_amount_cents]
    assert await order_status(env, order) == pb.ORDER_STATUS_REFUNDED
    status = await worker.GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id))
    assert status.order_status == pb.ORDER_STATUS_REFUNDED
    # The workflow's retry (same key) gets the same refund; the PSP is not asked again.
    again = (await worker.RefundPayment(request)).refund
    assert again.refund_id == refund.refund_id and again.status == pb.REFUND_STATUS_COMPLETED
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [order.total_amount_cents]
    # A refunded order is never invoiced (CASE-11: no service without payment).
    mandate = await record_mandate(env)
    await expect_status(
        worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{order.order_id}",
                order_id=order.order_id,
                doctor_ids=[mandate.doctor_id],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The patient is told through the outbox: the cancellation email with the amount.
    await eventually(
        lambda: any(
            m.template == npb.NOTIFICATION_TEMPLATE_CASE_CANCELLED
            and m.variables.amount_cents == order.total_amount_cents
            for m in env.recorder.sent
        )
    )
    email = env.recorder.last(npb.NOTIFICATION_TEMPLATE_CASE_CANCELLED)
    assert email.email.startswith("patient-") and email.variables.currency == "EUR"
    # BIL-06: no card data in the refund records either.
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as connection:
            dump = str((await connection.execute(text("SELECT * FROM refunds"))).fetchall())
    finally:
        await engine.dispose()
    # (ids are random UUIDs: only the whole card number is looked for)
    assert SUCCESS_CARD not in dump and "1111 2222" not in dump


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-09")
async def test_partial_refunds_credit_the_invoices_and_the_doctors_ledger(env: Env) -> None:
    order, attempt = await paid_order(env)
    mandate = await record_mandate(env)
    worker = env.billing(env.tokens("worker"))
    issued = (
        await worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{order.order_id}",
                order_id=order.order_id,
                doctor_ids=[mandate.doctor_id],
            )
        )
    ).invoices
    coordinator = env.billing(env.person(str(uuid.uuid4()), Role.COORDINATOR))
    first = (
        await coordinator.RefundPayment(refund_request(order, 1000, reason=pb.REFUND_REASON_ORDER_ERROR))
    ).refund
    assert first.status == pb.REFUND_STATUS_COMPLETED and first.amount_cents == 1000
    assert await order_status(env, order) == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    # The invoiced amount is corrected by credit notes (never by changing an invoice).
    notes = [
        (await worker.GetInvoice(pb.GetInvoiceRequest(invoice_id=note_id))).invoice
        for note_id in first.credit_note_ids
    ]
    assert notes and all(n.kind == pb.INVOICE_KIND_CREDIT_NOTE for n in notes)
    assert sum(n.total_amount_cents for n in notes) == -1000
    assert {n.corrects_invoice_id for n in notes} <= {i.invoice_id for i in issued}
    left = attempt.amount_cents - 1000
    # More than what is left, or another currency: refused, nothing refunded.
    await expect_status(
        worker.RefundPayment(refund_request(order, left + 1)), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_status(
        worker.RefundPayment(refund_request(order, 100, currency="USD")), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_status(worker.RefundPayment(refund_request(order, 0)), grpc.StatusCode.INVALID_ARGUMENT)
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [1000]
    rest = (await worker.RefundPayment(refund_request(order, left))).refund
    assert rest.status == pb.REFUND_STATUS_COMPLETED
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [1000, left]
    assert await order_status(env, order) == pb.ORDER_STATUS_REFUNDED
    listed = await worker.ListInvoices(
        pb.ListInvoicesRequest(account_id=order.payer_account_id, order_id=order.order_id)
    )
    assert sum(i.total_amount_cents for i in listed.invoices) == 0  # every invoice cancelled
    # The doctor's ledger: collected, then refunded in entries adding up to the doctor's fee.
    ledger = (
        await env.billing().ListCollectionLedger(
            pb.ListCollectionLedgerRequest(
                doctor_id=mandate.doctor_id,
                period_start=ts(now() - timedelta(days=1)),
                period_end=ts(now() + timedelta(days=1)),
            )
        )
    ).entries
    collected = [e for e in ledger if e.kind == pb.LEDGER_ENTRY_KIND_COLLECTED]
    refunded = [e for e in ledger if e.kind == pb.LEDGER_ENTRY_KIND_REFUNDED]
    assert len(collected) == 1 and refunded and all(e.amount_cents < 0 for e in refunded)
    assert sum(e.amount_cents for e in ledger) == 0
    # Nothing left: a further refund is refused.
    await expect_status(worker.RefundPayment(refund_request(order, 1)), grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.req("BIL-02")
async def test_refunds_are_refused_with_clear_statuses(env: Env) -> None:
    worker = env.billing(env.tokens("worker"))
    unpaid = await new_order(env)
    await expect_status(
        worker.RefundPayment(refund_request(unpaid, unpaid.total_amount_cents)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    missing = pb.Order(order_id=str(uuid.uuid4()))
    await expect_status(worker.RefundPayment(refund_request(missing, 100)), grpc.StatusCode.NOT_FOUND)
    await expect_status(
        worker.RefundPayment(refund_request(pb.Order(order_id="not-a-uuid"), 100)), grpc.StatusCode.NOT_FOUND
    )
    order, attempt = await paid_order(env)
    await expect_status(
        worker.RefundPayment(refund_request(order, 100, reason=pb.REFUND_REASON_UNSPECIFIED)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # Only the workflow's worker and staff refund; never the payer, never the gateway.
    payer = env.billing(env.person(order.payer_account_id, Role.PATIENT))
    await expect_status(payer.RefundPayment(refund_request(order, 100)), grpc.StatusCode.PERMISSION_DENIED)
    gateway = env.billing(env.tokens("gateway"))
    await expect_status(gateway.RefundPayment(refund_request(order, 100)), grpc.StatusCode.PERMISSION_DENIED)
    # A key reused with other parameters is refused.
    done = await worker.RefundPayment(refund_request(order, 100, key=f"k-{order.order_id}"))
    assert done.refund.status == pb.REFUND_STATUS_COMPLETED
    await expect_status(
        worker.RefundPayment(refund_request(order, 200, key=f"k-{order.order_id}")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The PSP refuses (it no longer knows the capture): nothing changes, the caller is told.
    capture = env.sandbox.captures.pop(attempt.psp_transaction_id)
    try:
        details = await expect_status(
            worker.RefundPayment(refund_request(order, 300, key=f"refused-{order.order_id}")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert "refused" in details
        # The same key answers the same way; the order keeps its state.
        await expect_status(
            worker.RefundPayment(refund_request(order, 300, key=f"refused-{order.order_id}")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
    finally:
        env.sandbox.captures[attempt.psp_transaction_id] = capture
    assert await order_status(env, order) == pb.ORDER_STATUS_PARTIALLY_REFUNDED
    # The refused amount was freed: the rest can still be refunded.
    rest = await worker.RefundPayment(refund_request(order, attempt.amount_cents - 100))
    assert rest.refund.status == pb.REFUND_STATUS_COMPLETED
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [100, attempt.amount_cents - 100]


@pytest.mark.req("BIL-06")
async def test_the_sandbox_checks_the_refund_signature_and_answers_a_question_once(env: Env) -> None:
    _, attempt = await paid_order(env)
    capture = env.sandbox.captures[attempt.psp_transaction_id]
    refund = RefundRequest(
        question_number=9_000_000_000 + int(uuid.uuid4().int % 1_000_000),
        reference="SO-TEST",
        amount_cents=100,
        currency="EUR",
        call_number=capture[0],
        transaction_id=attempt.psp_transaction_id,
        requested_at=now(),
    )

    def adapter(key: bytes) -> PayboxSystem:
        return PayboxSystem(
            payment_url=f"{env.sandbox_url}/cgi/MYchoix_pagepaiement.cgi",
            site=env.settings.psp_site,
            rang=env.settings.psp_rang,
            identifiant=env.settings.psp_identifiant,
            hmac_key=lambda: key,
            public_key=lambda: env.sandbox.private_key.public_key(),
            return_base_url="http://127.0.0.1/psp",
        )

    forged = await adapter(bytes(64)).refund(refund)
    assert forged.response_code == "00006" and not forged.succeeded
    assert refunds_at_psp(env, attempt.psp_transaction_id) == []
    good = await adapter(HMAC_KEY).refund(refund)
    assert good.succeeded and good.transaction_id
    # The same question again (a resumed request) is answered the same, not refunded twice.
    assert await adapter(HMAC_KEY).refund(refund) == good
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [100]


@pytest.mark.req("BIL-01")
@pytest.mark.req("CASE-11")
async def test_a_cancelled_covered_order_is_not_invoiced_to_the_partner(env: Env) -> None:
    partner_id, agreement_id = await partner_with_agreement(env)
    codes = (
        await env.billing().IssueCoverageCodes(
            pb.IssueCoverageCodesRequest(
                idempotency_key=f"codes-{uuid.uuid4()}",
                partner_id=partner_id,
                agreement_id=agreement_id,
                count=2,
                usage=pb.COVERAGE_CODE_USAGE_SINGLE_USE,
                expires_at=ts(now() + timedelta(days=30)),
            )
        )
    ).codes
    gateway = env.billing(env.tokens("gateway"))
    worker = env.billing(env.tokens("worker"))
    covered = []
    for code in codes:
        order = await new_order(env)
        await gateway.ValidateCoverageCode(
            pb.ValidateCoverageCodeRequest(
                idempotency_key=f"v-{order.order_id}", order_id=order.order_id, code=code.code
            )
        )
        covered.append(order)
    refunds_before = len(env.sandbox.refunds)
    # Before delivery: cancelled, nothing to refund at the PSP, never invoiced afterwards.
    await expect_status(worker.RefundPayment(refund_request(covered[0], 1)), grpc.StatusCode.INVALID_ARGUMENT)
    cancelled = (await worker.RefundPayment(refund_request(covered[0], 0))).refund
    assert cancelled.status == pb.REFUND_STATUS_COMPLETED and cancelled.amount_cents == 0
    assert not cancelled.payment_attempt_id and not cancelled.credit_note_ids
    assert await order_status(env, covered[0]) == pb.ORDER_STATUS_CANCELLED
    mandate = await record_mandate(env)
    await expect_status(
        worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{covered[0].order_id}",
                order_id=covered[0].order_id,
                doctor_ids=[mandate.doctor_id],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_status(
        worker.RefundPayment(refund_request(covered[0], 0)), grpc.StatusCode.FAILED_PRECONDITION
    )
    # Invoices already addressed to the partner are cancelled in full by credit notes.
    issued = (
        await worker.IssueInvoices(
            pb.IssueInvoicesRequest(
                idempotency_key=f"inv-{covered[1].order_id}",
                order_id=covered[1].order_id,
                doctor_ids=[mandate.doctor_id],
            )
        )
    ).invoices
    assert all(i.recipient_partner_id == partner_id for i in issued)
    second = (await worker.RefundPayment(refund_request(covered[1], covered[1].total_amount_cents))).refund
    notes = [
        (await worker.GetInvoice(pb.GetInvoiceRequest(invoice_id=note_id))).invoice
        for note_id in second.credit_note_ids
    ]
    assert len(notes) == len(issued)
    assert sum(n.total_amount_cents for n in notes) == -covered[1].total_amount_cents
    assert all(n.recipient_partner_id == partner_id for n in notes)
    assert len(env.sandbox.refunds) == refunds_before  # no PSP refund for a covered order


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
async def test_concurrent_duplicate_refunds_refund_exactly_once_at_the_psp(env: Env) -> None:
    order, attempt = await paid_order(env)
    worker = env.billing(env.tokens("worker"))
    request = refund_request(order, attempt.amount_cents, key=f"wf-{order.case_id}:refund")
    results = await asyncio.gather(*(worker.RefundPayment(request) for _ in range(12)))
    assert len({r.refund.refund_id for r in results}) == 1
    assert all(r.refund.status == pb.REFUND_STATUS_COMPLETED for r in results)
    assert refunds_at_psp(env, attempt.psp_transaction_id) == [attempt.amount_cents]
    # Exactly one request reached the PSP: the duplicates waited for its outcome.
    assert env.sandbox.direct_requests.count(attempt.psp_transaction_id) == 1
    # Different keys racing for the whole amount: one refund, the others refused.
    other, other_attempt = await paid_order(env)
    outcomes = await asyncio.gather(
        *(worker.RefundPayment(refund_request(other, other_attempt.amount_cents)) for _ in range(6)),
        return_exceptions=True,
    )
    won = [o for o in outcomes if isinstance(o, pb.RefundPaymentResponse)]
    lost = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 5
    assert {e.code() for e in lost} <= {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
    assert refunds_at_psp(env, other_attempt.psp_transaction_id) == [other_attempt.amount_cents]
    assert env.sandbox.direct_requests.count(other_attempt.psp_transaction_id) == 1
    assert await order_status(env, other) == pb.ORDER_STATUS_REFUNDED
