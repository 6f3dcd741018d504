"""Card payment attempts and PSP answers (BIL-02, BIL-06, BIL-07).

A notification is verified (RSA signature), matched to its attempt by reference, and
its amount checked against the attempt and the order before anything is written. The
capture is one conditional UPDATE (pending -> captured), so duplicates and replays,
concurrent or not, capture once; each payload is recorded once by its hash.

An attempt with no answer by its expiry is marked abandoned by the sweep
(`abandon_expired`, one conditional UPDATE per batch: idempotent, and safe with several
billing processes sweeping at once), so the records say what happened; the order stays
awaiting payment and can be paid by a new attempt. A capture the PSP confirms late is
still a real payment and is honoured: the abandoned attempt moves to captured, and the
order to paid if it still awaits payment; if another attempt (or a code) settled the
order meanwhile, the late capture is a duplicate payment and a refund of it is reserved
in the same transaction (reason duplicate_payment), which the sweep then carries out
with the PSP; once the PSP accepted it, the payer is emailed (once: see refunds.finish)
and operations get a warning with ids and amount.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.common import FundingSource, OrderStatus, PaymentStatus
from services.billing.domain.outbox import enqueue_email
from services.billing.domain.refunds import reserve_duplicate_refund
from services.billing.domain.restriction import ensure_processing_allowed
from services.billing.models import Order, PaymentAttempt, PspNotification
from services.billing.psp.paybox import (
    HostedForm,
    HostedPaymentRequest,
    InvalidPspMessage,
    PaymentServiceProvider,
)
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)
MAX_ATTEMPTS_PER_ORDER = 20


@dataclass(frozen=True)
class HandledNotification:
    attempt_id: str
    captured_now: bool


def payload_sha256(raw_payload: str) -> str:
    return hashlib.sha256(raw_payload.encode()).hexdigest()


async def start_attempt(session: AsyncSession, order: Order, locale: str, ttl_seconds: int) -> PaymentAttempt:
    await ensure_processing_allowed(session, order.payer_account_id)  # GDPR-04
    if order.status != OrderStatus.AWAITING_PAYMENT:
        raise FailedPrecondition("the order is not awaiting payment")
    if locale not in ("", "fr", "en"):
        raise InvalidArgument("locale must be fr or en")
    count = int(
        await session.scalar(select(func.count()).where(PaymentAttempt.order_id == order.order_id)) or 0
    )
    if count >= MAX_ATTEMPTS_PER_ORDER:
        raise FailedPrecondition("too many payment attempts for this order")
    now = utcnow()
    attempt = PaymentAttempt(
        payment_attempt_id=str(uuid.uuid4()),
        order_id=order.order_id,
        psp_reference=f"{order.order_reference}-{count + 1}",
        attempt_number=count + 1,
        status=PaymentStatus.PENDING.value,
        amount_cents=order.total_amount_cents,
        currency=order.currency,
        locale=locale or "fr",
        psp_authorization="",
        psp_error_code="",
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_seconds),
        captured_amount_cents=0,
    )
    session.add(attempt)
    await session.flush()
    return attempt


def attempt_form(psp: PaymentServiceProvider, attempt: PaymentAttempt) -> HostedForm:
    """The signed form; rebuilt identically from the attempt on a retried request."""
    return psp.hosted_form(
        HostedPaymentRequest(
            reference=attempt.psp_reference,
            amount_cents=attempt.amount_cents,
            currency=attempt.currency,
            locale=attempt.locale,
            created_at=attempt.created_at,
        )
    )


async def handle_notification(
    session: AsyncSession, psp: PaymentServiceProvider, kind: str, raw_payload: str
) -> HandledNotification:
    try:
        message = psp.verify(raw_payload)
    except InvalidPspMessage as exc:
        log.warning("psp message rejected", extra={"fields": {"reason": str(exc)}})
        raise InvalidArgument(f"PSP message refused: {exc}") from None
    attempt = await session.scalar(
        select(PaymentAttempt).where(PaymentAttempt.psp_reference == message.reference)
    )
    if attempt is None:
        raise InvalidArgument("PSP message refused: the reference matches no payment attempt")
    order = await session.get(Order, attempt.order_id)
    assert order is not None
    if message.amount_cents != attempt.amount_cents or attempt.amount_cents != order.total_amount_cents:
        log.warning(
            "psp amount mismatch", extra={"fields": {"payment_attempt_id": attempt.payment_attempt_id}}
        )
        raise InvalidArgument("PSP message refused: the amount does not match the order")
    digest = payload_sha256(f"{kind}:{raw_payload}")
    if await session.scalar(
        select(PspNotification.notification_id).where(PspNotification.payload_sha256 == digest)
    ):
        return HandledNotification(attempt.payment_attempt_id, False)
    now = utcnow()
    session.add(
        PspNotification(
            notification_id=str(uuid.uuid4()),
            payload_sha256=digest,
            kind=kind,
            payment_attempt_id=attempt.payment_attempt_id,
            psp_transaction_id=message.transaction_id,
            error_code=message.error_code,
            amount_cents=message.amount_cents,
            received_at=now,
        )
    )
    captured_now = False
    open_statuses = (PaymentStatus.PENDING.value, PaymentStatus.ABANDONED.value)
    if message.succeeded:
        if not message.transaction_id:
            raise InvalidArgument("PSP message refused: a capture needs a transaction number")
        result = await session.execute(
            update(PaymentAttempt)
            .where(
                PaymentAttempt.payment_attempt_id == attempt.payment_attempt_id,
                PaymentAttempt.status.in_(open_statuses),
            )
            .values(
                status=PaymentStatus.CAPTURED.value,
                psp_transaction_id=message.transaction_id,
                psp_call_number=message.call_number,
                psp_authorization=message.authorization,
                psp_error_code=message.error_code,
                captured_at=now,
                captured_amount_cents=message.amount_cents,
            )
        )
        captured_now = result.rowcount == 1  # type: ignore[attr-defined]
        if captured_now:
            settled = await session.execute(
                update(Order)
                .where(Order.order_id == order.order_id, Order.status == OrderStatus.AWAITING_PAYMENT.value)
                .values(
                    status=OrderStatus.PAID.value, funding_source=FundingSource.CARD.value, settled_at=now
                )
            )
            if settled.rowcount != 1:  # type: ignore[attr-defined]
                # Paid twice (another attempt or a code won): a real payment to give back.
                refund_id = await reserve_duplicate_refund(
                    session, order.order_id, attempt.payment_attempt_id
                )
                log.warning(
                    "duplicate payment",
                    extra={
                        "fields": {
                            "order_id": order.order_id,
                            "payment_attempt_id": attempt.payment_attempt_id,
                            "refund_id": refund_id,
                            "amount_cents": message.amount_cents,
                            "currency": attempt.currency,
                        }
                    },
                )
            else:
                await enqueue_email(
                    session,
                    f"payment-summary:{attempt.payment_attempt_id}",
                    "payment_summary",
                    order.payer_account_id,
                    message.amount_cents,
                    order.currency,
                    occurred_at=now,
                )
            log.info(
                "payment captured",
                extra={
                    "fields": {"payment_attempt_id": attempt.payment_attempt_id, "order_id": order.order_id}
                },
            )
    else:
        status = PaymentStatus.ABANDONED if message.abandoned else PaymentStatus.REFUSED
        await session.execute(
            update(PaymentAttempt)
            .where(
                PaymentAttempt.payment_attempt_id == attempt.payment_attempt_id,
                PaymentAttempt.status == PaymentStatus.PENDING.value,
            )
            .values(
                status=status.value,
                psp_error_code=message.error_code,
                abandoned_at=now if status is PaymentStatus.ABANDONED else None,
            )
        )
    await session.flush()
    return HandledNotification(attempt.payment_attempt_id, captured_now)


async def get_attempt(session: AsyncSession, attempt_id: str = "", order_id: str = "") -> PaymentAttempt:
    attempt: PaymentAttempt | None = None
    if attempt_id:
        attempt = await session.get(PaymentAttempt, attempt_id)
    elif order_id:
        attempt = await session.scalar(
            select(PaymentAttempt)
            .where(PaymentAttempt.order_id == order_id)
            .order_by(PaymentAttempt.attempt_number.desc())
            .limit(1)
        )
    else:
        raise InvalidArgument("payment_attempt_id or order_id is required")
    if attempt is None:
        raise NotFound("no such payment attempt")
    if attempt.status == PaymentStatus.PENDING and attempt.expires_at <= utcnow():
        attempt.status = PaymentStatus.ABANDONED.value
    return attempt


async def abandon_expired(session: AsyncSession, now: datetime, limit: int = 500) -> list[str]:
    """Marks pending attempts past their expiry abandoned; the ids this call changed.
    Conditional on the status, so a concurrent sweep or a notification that got there
    first wins and nothing is marked twice."""
    due = list(
        await session.scalars(
            select(PaymentAttempt.payment_attempt_id)
            .where(PaymentAttempt.status == PaymentStatus.PENDING.value, PaymentAttempt.expires_at <= now)
            .order_by(PaymentAttempt.expires_at)
            .limit(limit)
        )
    )
    if not due:
        return []
    changed = await session.scalars(
        update(PaymentAttempt)
        .where(
            PaymentAttempt.payment_attempt_id.in_(due),
            PaymentAttempt.status == PaymentStatus.PENDING.value,
            PaymentAttempt.expires_at <= now,
        )
        .values(status=PaymentStatus.ABANDONED.value, abandoned_at=now)
        .returning(PaymentAttempt.payment_attempt_id)
    )
    return list(changed)
