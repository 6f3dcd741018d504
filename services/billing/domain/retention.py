"""Retention of payment data (RET-05): 13 months (L.133-24 CMF). Orders and invoices,
the accounting records and proof of the order (BIL-09), stay archived."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.models import ArchivedRecord, PaymentAttempt, PspNotification, SatisfactionAnswer
from services.shared.db import utcnow
from services.shared.errors import InvalidArgument

PAYMENT_DATA_RETENTION = timedelta(days=396)  # 13 months, rounded up
SATISFACTION_RETENTION = timedelta(days=3 * 365 + 1)


def months_ago_13(now: datetime) -> datetime:
    year, month = divmod(now.month - 1 - 13, 12)
    return now.replace(year=now.year + year, month=month + 1, day=min(now.day, 28))


async def purge_payment_data(session: AsyncSession, older_than: datetime | None) -> tuple[int, int]:
    if older_than is None:
        raise InvalidArgument("older_than is required")
    if older_than > months_ago_13(utcnow()):
        raise InvalidArgument("payment data is kept 13 months: older_than must be at least 13 months ago")
    notifications = await session.execute(
        delete(PspNotification).where(PspNotification.received_at < older_than)
    )
    attempts = await session.execute(delete(PaymentAttempt).where(PaymentAttempt.created_at < older_than))
    # Archived subjects' payment data (issue 10) goes at the same age.
    archived: dict[str, int] = {}
    for category in ("payment_attempts", "psp_notifications"):
        result = await session.execute(
            delete(ArchivedRecord).where(
                ArchivedRecord.category == category, ArchivedRecord.record_at < older_than
            )
        )
        archived[category] = int(result.rowcount)  # type: ignore[attr-defined]
    return (
        int(attempts.rowcount) + archived["payment_attempts"],  # type: ignore[attr-defined]
        int(notifications.rowcount) + archived["psp_notifications"],  # type: ignore[attr-defined]
    )


async def purge_satisfaction(session: AsyncSession, older_than: datetime | None) -> int:
    if older_than is None:
        raise InvalidArgument("older_than is required")
    if older_than > utcnow() - SATISFACTION_RETENTION:
        raise InvalidArgument(
            "satisfaction answers are kept 3 years: older_than must be at least 3 years ago"
        )
    result = await session.execute(
        delete(SatisfactionAnswer).where(SatisfactionAnswer.recorded_at < older_than)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
