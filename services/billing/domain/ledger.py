"""Collection under mandate (BIL-05): the ledger and payout statements per period."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.documents import StatementDocument, render_statement_pdf
from services.billing.domain.common import CURRENCY, next_token, offset_from_token, page_size
from services.billing.models import LedgerEntry, PayoutStatement
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, InvalidArgument, NotFound
from services.shared.objectstore import ObjectStore


def check_period(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    if start is None or end is None or end <= start:
        raise InvalidArgument("period_start and period_end are required, start before end")
    return start, end


async def list_ledger(
    session: AsyncSession, doctor_id: str, start: datetime | None, end: datetime | None, size: int, token: str
) -> tuple[list[LedgerEntry], str]:
    size = page_size(size)
    offset = offset_from_token(token)
    query = select(LedgerEntry).where(LedgerEntry.doctor_id == doctor_id)
    if start is not None:
        query = query.where(LedgerEntry.occurred_at >= start)
    if end is not None:
        query = query.where(LedgerEntry.occurred_at < end)
    rows = list(
        await session.scalars(
            query.order_by(LedgerEntry.occurred_at, LedgerEntry.entry_id).offset(offset).limit(size + 1)
        )
    )
    return rows[:size], next_token(offset, size, len(rows))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def generate_statement(
    session: AsyncSession, store: ObjectStore, doctor_id: str, start: datetime | None, end: datetime | None
) -> PayoutStatement:
    start, end = check_period(start, end)
    now = utcnow()
    if end > now:
        raise InvalidArgument("period_end must be in the past")
    duplicate = await session.scalar(
        select(PayoutStatement.statement_id).where(
            PayoutStatement.doctor_id == doctor_id,
            PayoutStatement.period_start == start,
            PayoutStatement.period_end == end,
        )
    )
    if duplicate:
        raise AlreadyExists("a statement exists for this doctor and period")
    entries = list(
        await session.scalars(
            select(LedgerEntry).where(
                LedgerEntry.doctor_id == doctor_id,
                LedgerEntry.occurred_at >= start,
                LedgerEntry.occurred_at < end,
            )
        )
    )
    collected = sum(e.amount_cents for e in entries if e.kind == "collected")
    refunded = -sum(e.amount_cents for e in entries if e.kind == "refunded")
    statement_id = str(uuid.uuid4())
    document = StatementDocument(
        doctor_id, start, end, collected, refunded, collected - refunded, len(entries), CURRENCY, now
    )
    content = render_statement_pdf(document)
    key = f"payouts/{doctor_id}/{statement_id}.pdf"
    await store.put(key, _one(content))
    statement = PayoutStatement(
        statement_id=statement_id,
        doctor_id=doctor_id,
        period_start=start,
        period_end=end,
        collected_amount_cents=collected,
        refunded_amount_cents=refunded,
        payout_amount_cents=collected - refunded,
        currency=CURRENCY,
        entry_count=len(entries),
        generated_at=now,
        archive_key=key,
        sha256_hex=hashlib.sha256(content).hexdigest(),
    )
    session.add(statement)
    await session.flush()
    return statement


async def get_statement(session: AsyncSession, statement_id: str) -> PayoutStatement:
    statement = await session.get(PayoutStatement, statement_id) if statement_id else None
    if statement is None:
        raise NotFound("no such payout statement")
    return statement


async def list_statements(
    session: AsyncSession, doctor_id: str, size: int, token: str
) -> tuple[list[PayoutStatement], str]:
    size = page_size(size)
    offset = offset_from_token(token)
    rows = list(
        await session.scalars(
            select(PayoutStatement)
            .where(PayoutStatement.doctor_id == doctor_id)
            .order_by(PayoutStatement.period_start.desc())
            .offset(offset)
            .limit(size + 1)
        )
    )
    return rows[:size], next_token(offset, size, len(rows))
