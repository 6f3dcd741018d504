"""Refunds of captured card payments and cancellation of covered orders (BIL-02, BIL-06,
BIL-09, CASE-11).

A refund is first *reserved*: in one transaction holding the order's lock (SELECT ...
FOR UPDATE on PostgreSQL; on SQLite a first write takes the database's write lock), the
amount is checked against what was captured minus every refund pending or done, and a
pending refund row is written under the caller's idempotency key (unique) with a Paybox
Direct question number. Only then is the PSP asked, by the one request holding the
row's claim; a duplicate request waits for the outcome instead of asking again, and a
request resumed after a crash re-sends the *same* question, which the PSP answers once.
The outcome is applied in one transaction: the refund row, the order's status and
refunded amount, credit notes for the invoiced part (with their ledger entries per
doctor) and the patient's email in the outbox: the cancellation's, or for a duplicate
payment (reserved automatically on a late capture, `reserve_duplicate_refund`) the
duplicate-payment notice, keyed by the refund so that it exists once whoever applies the
answer and however often (the dispatcher sends it under the outbox row's key).

A covered order is not refunded (the partner paid nothing yet): it is cancelled, so the
partner is never invoiced for it, and any invoice already addressed to the partner is
cancelled by a credit note.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.common import FundingSource, OrderStatus, PaymentStatus
from services.billing.domain.invoices import Archive, issue_credit_note, next_number
from services.billing.domain.outbox import enqueue_email
from services.billing.models import Invoice, Order, PaymentAttempt, Refund
from services.billing.psp.paybox import (
    InvalidPspMessage,
    PaymentServiceProvider,
    RefundAnswer,
    RefundRequest,
)
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)

# Longer than the PSP call's timeout: a claim outlives the request that holds it.
CLAIM_SECONDS = 30
# A caller's pending refund left this long is completed by the billing sweep: long past
# the case workflow's retries, and a pending refund holds back its subject's archive.
ABANDONED_AFTER = timedelta(minutes=15)
CANCELLATION_TEMPLATE = "case_cancelled"
DUPLICATE_REFUND_TEMPLATE = "duplicate_payment_refunded"


class RefundStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"


class RefundReason(StrEnum):
    CASE_CANCELLED_BEFORE_DELIVERY = "case_cancelled_before_delivery"
    DUPLICATE_PAYMENT = "duplicate_payment"
    ORDER_ERROR = "order_error"


@dataclass(frozen=True)
class RefundCommand:
    key: str
    order_id: str
    amount_cents: int
    currency: str
    reason: RefundReason


async def _lock_order(session: AsyncSession, order_id: str) -> Order | None:
    try:
        order_id = str(uuid.UUID(order_id))
    except ValueError:
        return None
    if session.get_bind().dialect.name == "sqlite":
        # The first write of the transaction takes SQLite's write lock: the reads below
        # then see every refund committed before, and nobody else writes meanwhile.
        await session.execute(update(Order).where(Order.order_id == order_id).values(order_id=Order.order_id))
    order: Order | None = await session.scalar(
        select(Order)
        .where(Order.order_id == order_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return order


async def _reserved_by_attempt(session: AsyncSession, order_id: str) -> dict[str, int]:
    rows = await session.execute(
        select(Refund.payment_attempt_id, func.sum(Refund.amount_cents))
        .where(
            Refund.order_id == order_id,
            Refund.status.in_((RefundStatus.PENDING.value, RefundStatus.COMPLETED.value)),
        )
        .group_by(Refund.payment_attempt_id)
    )
    return {attempt_id: int(total or 0) for attempt_id, total in rows.all()}


async def reserve(session: AsyncSession, archive: Archive, command: RefundCommand) -> str:
    """Checks the request and writes the pending refund (or cancels a covered order)."""
    order = await _lock_order(session, command.order_id)
    if order is None:
        raise NotFound("no such order")
    existing = await session.scalar(select(Refund.refund_id).where(Refund.request_key == command.key))
    if existing is not None:
        return str(existing)  # a concurrent duplicate: the idempotency record answers it
    if command.currency != order.currency:
        raise InvalidArgument(f"currency must be {order.currency}, the order's")
    if order.funding_source == FundingSource.PARTNER_COVERAGE.value:
        return await _cancel_covered(session, archive, order, command)
    captured = list(
        await session.scalars(
            select(PaymentAttempt)
            .where(
                PaymentAttempt.order_id == order.order_id,
                PaymentAttempt.status == PaymentStatus.CAPTURED.value,
            )
            .order_by(PaymentAttempt.captured_at.desc(), PaymentAttempt.payment_attempt_id)
        )
    )
    if not captured:
        raise FailedPrecondition("nothing was captured on this order: there is nothing to refund")
    reserved = await _reserved_by_attempt(session, order.order_id)
    left = {
        a.payment_attempt_id: a.captured_amount_cents - reserved.get(a.payment_attempt_id, 0)
        for a in captured
    }
    total_left = sum(left.values())
    if total_left <= 0:
        raise FailedPrecondition("the order was already refunded in full")
    if command.amount_cents <= 0 or command.amount_cents > total_left:
        raise InvalidArgument(
            f"amount_cents must be between 1 and {total_left} (captured and not yet refunded)"
        )
    attempt = next((a for a in captured if left[a.payment_attempt_id] >= command.amount_cents), None)
    if attempt is None:
        raise InvalidArgument(
            f"the amount spans several captured payments: refund each separately "
            f"(at most {max(left.values())} at once)"
        )
    now = utcnow()
    refund_id = await _write_pending(
        session, order.order_id, command.key, attempt.payment_attempt_id, command.amount_cents,
        order.currency, command.reason, claimed_until=now + timedelta(seconds=CLAIM_SECONDS),
    )  # fmt: skip
    log.info("refund reserved", extra={"fields": {"refund_id": refund_id, "order_id": order.order_id}})
    return refund_id


async def _write_pending(
    session: AsyncSession,
    order_id: str,
    key: str,
    payment_attempt_id: str,
    amount_cents: int,
    currency: str,
    reason: RefundReason,
    claimed_until: datetime | None,
) -> str:
    """A pending refund row with its own PSP question number (the one every retry asks)."""
    now = utcnow()
    refund = Refund(
        refund_id=str(uuid.uuid4()),
        order_id=order_id,
        request_key=key,
        payment_attempt_id=payment_attempt_id,
        amount_cents=amount_cents,
        currency=currency,
        reason=reason.value,
        status=RefundStatus.PENDING.value,
        psp_question_number=await next_number(session, f"psp-question-{now:%Y%m%d}"),
        psp_requested_at=now,
        psp_transaction_id="",
        psp_call_number="",
        psp_authorization="",
        psp_error_code="",
        claimed_until=claimed_until,
        credit_note_ids=[],
        created_at=now,
    )
    session.add(refund)
    await session.flush()
    return refund.refund_id


async def _cancel_covered(
    session: AsyncSession, archive: Archive, order: Order, command: RefundCommand
) -> str:
    if order.status == OrderStatus.CANCELLED.value:
        raise FailedPrecondition("the covered order is already cancelled")
    if order.status != OrderStatus.COVERED.value:
        raise FailedPrecondition("the order is not covered")
    if command.amount_cents not in (0, order.total_amount_cents):
        raise InvalidArgument(
            "a covered order was not paid by card: amount_cents must be 0 "
            f"(or {order.total_amount_cents}, the covered total) to cancel it"
        )
    now = utcnow()
    # The partner is invoiced for nothing: any invoice already addressed to it is
    # cancelled in full by a credit note.
    notes = await _credit_invoices(session, archive, order, None)
    order.status = OrderStatus.CANCELLED.value
    refund = Refund(
        refund_id=str(uuid.uuid4()),
        order_id=order.order_id,
        request_key=command.key,
        payment_attempt_id="",
        amount_cents=0,
        currency=order.currency,
        reason=command.reason.value,
        status=RefundStatus.COMPLETED.value,
        psp_question_number=0,
        psp_transaction_id="",
        psp_call_number="",
        psp_authorization="",
        psp_error_code="",
        credit_note_ids=notes,
        created_at=now,
        completed_at=now,
    )
    session.add(refund)
    await session.flush()
    log.info(
        "covered order cancelled",
        extra={"fields": {"refund_id": refund.refund_id, "order_id": order.order_id}},
    )
    return refund.refund_id


async def _credit_invoices(
    session: AsyncSession, archive: Archive, order: Order, amount: int | None
) -> list[str]:
    """Credit notes for `amount` (everything left when None), spread over the order's
    invoices in proportion to what is left on each; ids of the notes issued."""
    invoices = list(
        await session.scalars(
            select(Invoice)
            .where(Invoice.order_id == order.order_id, Invoice.kind == "invoice")
            .order_by(Invoice.series, Invoice.invoice_number)
        )
    )
    if not invoices:
        return []
    credited = dict(
        (
            await session.execute(
                select(Invoice.corrects_invoice_id, func.sum(Invoice.total_amount_cents))
                .where(Invoice.order_id == order.order_id, Invoice.kind == "credit_note")
                .group_by(Invoice.corrects_invoice_id)
            )
        ).all()
    )
    left = {i.invoice_id: i.total_amount_cents + int(credited.get(i.invoice_id) or 0) for i in invoices}
    available = sum(left.values())
    wanted = available if amount is None else min(amount, available)
    if wanted <= 0:
        return []
    shares = {key: wanted * value // available for key, value in left.items()}
    rest = wanted - sum(shares.values())
    for key in left:  # the cents lost to rounding go to the first invoices with room
        if rest == 0:
            break
        if shares[key] < left[key]:
            shares[key] += 1
            rest -= 1
    notes = []
    for invoice in invoices:  # series order: one lock order for the counters
        share = shares[invoice.invoice_id]
        if share > 0:
            note = await issue_credit_note(session, archive, invoice.invoice_id, share, invoice.currency)
            notes.append(note.invoice_id)
    return notes


def duplicate_refund_key(payment_attempt_id: str) -> str:
    return f"duplicate-payment:{payment_attempt_id}"


def duplicate_refund_notice_key(refund_id: str) -> str:
    """The outbox key of the payer's email once a duplicate payment is refunded."""
    return f"duplicate-refund-notice:{refund_id}"


async def reserve_duplicate_refund(session: AsyncSession, order_id: str, payment_attempt_id: str) -> str:
    """Reserves the refund of a capture that paid an order already settled (a late
    capture of an abandoned attempt, a second payment): the whole captured amount, reason
    duplicate_payment, unclaimed so the sweep carries it out. Once per attempt."""
    key = duplicate_refund_key(payment_attempt_id)
    existing = await session.scalar(select(Refund.refund_id).where(Refund.request_key == key))
    if existing is not None:
        return str(existing)
    order = await _lock_order(session, order_id)
    attempt = await session.get(PaymentAttempt, payment_attempt_id, populate_existing=True)
    assert order is not None
    assert attempt is not None
    refund_id = await _write_pending(
        session, order.order_id, key, attempt.payment_attempt_id, attempt.captured_amount_cents,
        attempt.currency, RefundReason.DUPLICATE_PAYMENT, claimed_until=None,
    )  # fmt: skip
    log.info(
        "duplicate payment refund reserved",
        extra={"fields": {"refund_id": refund_id, "order_id": order.order_id}},
    )
    return refund_id


async def refunds_to_resume(session: AsyncSession, limit: int = 50) -> list[str]:
    """Pending refunds nobody is carrying out (never claimed, or the holder's claim ran
    out): duplicate-payment refunds at once (nobody else will), a caller's refund once it
    has been left ABANDONED_AFTER (its caller died or gave up; retrying later with the
    same key then finds it done). Asking the PSP the same question again is safe."""
    now = utcnow()
    rows = await session.scalars(
        select(Refund.refund_id)
        .where(
            Refund.status == RefundStatus.PENDING.value,
            (Refund.reason == RefundReason.DUPLICATE_PAYMENT.value)
            | (Refund.created_at < now - ABANDONED_AFTER),
            (Refund.claimed_until.is_(None)) | (Refund.claimed_until < now),
        )
        .order_by(Refund.created_at)
        .limit(limit)
    )
    return list(rows)


def psp_request(refund: Refund, attempt: PaymentAttempt) -> RefundRequest:
    assert refund.psp_requested_at is not None
    return RefundRequest(
        question_number=refund.psp_question_number,
        reference=attempt.psp_reference,
        amount_cents=refund.amount_cents,
        currency=refund.currency,
        call_number=attempt.psp_call_number,
        transaction_id=attempt.psp_transaction_id or "",
        requested_at=refund.psp_requested_at,
    )


async def claim(session: AsyncSession, refund_id: str) -> bool:
    """Takes the right to ask the PSP when nobody holds it (the holder died or gave up)."""
    now = utcnow()
    result = await session.execute(
        update(Refund)
        .where(
            Refund.refund_id == refund_id,
            Refund.status == RefundStatus.PENDING.value,
            (Refund.claimed_until.is_(None)) | (Refund.claimed_until < now),
        )
        .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def release(session: AsyncSession, refund_id: str) -> None:
    await session.execute(
        update(Refund)
        .where(Refund.refund_id == refund_id, Refund.status == RefundStatus.PENDING.value)
        .values(claimed_until=None)
    )


async def ask_psp(psp: PaymentServiceProvider, request: RefundRequest) -> RefundAnswer:
    try:
        return await psp.refund(request)
    except InvalidPspMessage as exc:
        # Whether the refund happened is unknown: the same question is asked again later.
        log.warning("psp refund answer rejected", extra={"fields": {"reason": str(exc)}})
        return RefundAnswer("", unreachable=True)


async def finish(session: AsyncSession, archive: Archive, refund_id: str, answer: RefundAnswer) -> bool:
    """Applies the PSP's answer once; True when this call completed the refund."""
    now = utcnow()
    status = RefundStatus.COMPLETED if answer.succeeded else RefundStatus.FAILED
    result = await session.execute(
        update(Refund)
        .where(Refund.refund_id == refund_id, Refund.status == RefundStatus.PENDING.value)
        .values(
            status=status.value,
            psp_transaction_id=answer.transaction_id,
            psp_call_number=answer.call_number,
            psp_authorization=answer.authorization,
            psp_error_code=answer.response_code,
            claimed_until=None,
            completed_at=now if answer.succeeded else None,
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False  # somebody else applied it
    refund = await session.get(Refund, refund_id, populate_existing=True)
    assert refund is not None
    if status is RefundStatus.FAILED:
        log.warning(
            "psp refused the refund",
            extra={
                "fields": {
                    "refund_id": refund_id,
                    "order_id": refund.order_id,
                    "reason": refund.reason,
                    "amount_cents": refund.amount_cents,
                    "error": answer.response_code,
                }
            },
        )
        await session.flush()
        return False
    order = await _lock_order(session, refund.order_id)
    assert order is not None
    captured = int(
        await session.scalar(
            select(func.coalesce(func.sum(PaymentAttempt.captured_amount_cents), 0)).where(
                PaymentAttempt.order_id == order.order_id,
                PaymentAttempt.status == PaymentStatus.CAPTURED.value,
            )
        )
        or 0
    )
    refunded = int(
        await session.scalar(
            select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
                Refund.order_id == order.order_id, Refund.status == RefundStatus.COMPLETED.value
            )
        )
        or 0
    )
    net_after = captured - refunded
    net_before = net_after + refund.amount_cents
    order.refunded_amount_cents = refunded
    if order.status in (
        OrderStatus.PAID.value,
        OrderStatus.PARTIALLY_REFUNDED.value,
        OrderStatus.REFUNDED.value,
    ):
        if net_after <= 0:
            order.status = OrderStatus.REFUNDED.value
        elif net_after < order.total_amount_cents:
            order.status = OrderStatus.PARTIALLY_REFUNDED.value
    # Only what the order's price loses is credited on its invoices: refunding a
    # duplicate capture corrects no invoice.
    invoiced_part = max(0, order.total_amount_cents - net_after) - max(
        0, order.total_amount_cents - net_before
    )
    if invoiced_part > 0 and order.funding_source == FundingSource.CARD.value:
        refund.credit_note_ids = await _credit_invoices(session, archive, order, invoiced_part)
    if refund.reason == RefundReason.CASE_CANCELLED_BEFORE_DELIVERY.value:
        await enqueue_email(
            session,
            f"refund:{refund.refund_id}",
            CANCELLATION_TEMPLATE,
            order.payer_account_id,
            refund.amount_cents,
            refund.currency,
            occurred_at=now,
        )
    elif refund.reason == RefundReason.DUPLICATE_PAYMENT.value:
        await enqueue_email(
            session,
            duplicate_refund_notice_key(refund.refund_id),
            DUPLICATE_REFUND_TEMPLATE,
            order.payer_account_id,
            refund.amount_cents,
            refund.currency,
            occurred_at=now,
        )
        # For operations (a coordinator may be asked about it): ids and amount only.
        log.warning(
            "duplicate payment refunded",
            extra={
                "fields": {
                    "refund_id": refund.refund_id,
                    "order_id": order.order_id,
                    "payment_attempt_id": refund.payment_attempt_id,
                    "amount_cents": refund.amount_cents,
                    "currency": refund.currency,
                }
            },
        )
    await session.flush()
    log.info("refund completed", extra={"fields": {"refund_id": refund_id, "order_id": order.order_id}})
    return True
