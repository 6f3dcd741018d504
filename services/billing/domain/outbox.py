"""Emails the billing service owes (BIL-07 payment summary, BIL-08 invoice available,
the refund of a cancelled case, the refund of a duplicate payment).

They are written in the same transaction as what they announce and sent afterwards by
the dispatcher through the notifications service, so a crash or an unreachable service
delays an email but never loses it nor sends it twice (the outbox id is the key).
Only the account id is kept; the address is read from the identity service when sending.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.models import OutboxEmail
from services.shared.db import utcnow

MAX_ATTEMPTS = 12


async def enqueue_email(
    session: AsyncSession,
    key: str,
    template: str,
    account_id: str,
    amount_cents: int,
    currency: str,
    *,
    occurred_at: datetime,
    invoice_number: str = "",
) -> None:
    if await session.scalar(select(OutboxEmail.outbox_id).where(OutboxEmail.idempotency_key == key)):
        return
    now = utcnow()
    session.add(
        OutboxEmail(
            outbox_id=str(uuid.uuid4()),
            idempotency_key=key,
            template=template,
            account_id=account_id,
            amount_cents=amount_cents,
            currency=currency,
            invoice_number=invoice_number,
            occurred_at=occurred_at,
            created_at=now,
            attempts=0,
            next_attempt_at=now,
        )
    )


async def due_emails(session: AsyncSession, limit: int = 20) -> list[OutboxEmail]:
    rows = await session.scalars(
        select(OutboxEmail)
        .where(
            OutboxEmail.sent_at.is_(None),
            OutboxEmail.attempts < MAX_ATTEMPTS,
            OutboxEmail.next_attempt_at <= utcnow(),
        )
        .order_by(OutboxEmail.next_attempt_at)
        .limit(limit)
    )
    return list(rows)


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(2**attempts, 3600))
