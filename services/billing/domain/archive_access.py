"""RET-07: the only path to a subject's archived billing records, and its log.

Archived records (`archived_records`, moved there by ArchiveSubject) are out of every
day-to-day path. They are read here only:

- by the DPO, or by a coordinator holding the archive-access habilitation (the verified
  token's habilitation claim: identity grants it, SEC-05);
- for a legal reason (`ArchivePurpose`) and the reference of the legal matter.

Every attempt is appended to `archive_access_log` (append-only: the database refuses
UPDATE and DELETE; hash-chained: each entry carries the previous entry's hash). A granted
read is logged in the read's own transaction: if the log cannot be written, nothing is
returned (UNAVAILABLE). A refusal (not habilitated, no reason, nothing archived) is logged
once the refused transaction is over, then the refusal is raised.

What is returned: orders, invoice and credit-note metadata, refunds, and a summary per
order of the payment data still held (13 months, RET-05). No card data: there is none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import grpc
from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.domain.common import PaymentStatus
from services.billing.domain.lifecycle import archived_rows, check_subject
from services.billing.domain.restriction import is_restricted
from services.billing.models import (
    ArchiveAccessLogEntry,
    ArchiveAccessLogHead,
    ArchivedRecord,
    Base,
    Invoice,
    Order,
    Refund,
)
from services.shared.auth import Habilitation, Principal, Role
from services.shared.db import UTCDateTime, utcnow
from services.shared.errors import InvalidArgument, NotFound, PermissionDenied, ServiceError

log = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
HEAD_ID = 1
MAX_REFERENCE = 128
M = TypeVar("M", bound=Base)


class ArchivePurpose(StrEnum):
    LITIGATION = "litigation"
    REGULATOR_INQUIRY = "regulator_inquiry"
    RIGHTS_REQUEST = "rights_request"


class Outcome(StrEnum):
    GRANTED = "granted"
    DENIED = "denied"  # the caller may not read archives
    INVALID = "invalid"  # no legal reason, no reference, no subject
    NOT_FOUND = "not_found"  # nothing of the subject is archived


REFUSALS: tuple[tuple[type[ServiceError], Outcome], ...] = (
    (PermissionDenied, Outcome.DENIED),
    (InvalidArgument, Outcome.INVALID),
    (NotFound, Outcome.NOT_FOUND),
)


class ArchiveLogUnavailable(ServiceError):
    """The archive access log could not be written: nothing is read."""

    status = grpc.StatusCode.UNAVAILABLE


def may_read(principal: Principal) -> bool:
    """The DPO, or a coordinator holding the archive-access habilitation (token claim)."""
    if principal.role is Role.DPO:
        return True
    return principal.role is Role.COORDINATOR and principal.holds(Habilitation.ARCHIVE_ACCESS)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One call at the archive, as asked (validated by `check`)."""

    principal: Principal
    subject_id: str
    purpose: ArchivePurpose | None
    reference: str


def check(attempt: Attempt) -> None:
    """Who first (PERMISSION_DENIED whatever the arguments), then the legal reason."""
    if not may_read(attempt.principal):
        raise PermissionDenied("archived billing records are read by the DPO or habilitated staff only")
    check_subject(attempt.subject_id)
    if attempt.purpose is None:
        raise InvalidArgument("purpose (the legal reason for reading the archive) is required")
    reference = attempt.reference.strip()
    if not reference or len(reference) > MAX_REFERENCE or not reference.isprintable():
        raise InvalidArgument(f"reference (1 to {MAX_REFERENCE} printable characters) names the legal matter")


# ---------------------------------------------------------------- the log


def _bounded(value: str, size: int) -> str:
    """Caller-given text as it may be logged: printable, bounded."""
    value = value.strip()
    return value[:size] if value.isprintable() else ""


def entry_hash(entry: ArchiveAccessLogEntry) -> str:
    payload = json.dumps(
        [
            entry.sequence,
            entry.access_id,
            entry.occurred_at.isoformat(timespec="microseconds"),
            entry.subject_id,
            entry.reader_account_id,
            entry.reader_role,
            entry.purpose,
            entry.reference,
            entry.outcome,
            entry.record_count,
            entry.previous_hash,
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


async def append(
    session: AsyncSession, attempt: Attempt, outcome: Outcome, record_count: int = 0
) -> ArchiveAccessLogEntry:
    """Append one entry in the caller's transaction; the head row's lock orders appends."""
    try:
        # The write comes first so the lock is taken before the head is read (both backends).
        await session.execute(
            update(ArchiveAccessLogHead)
            .where(ArchiveAccessLogHead.head_id == HEAD_ID)
            .values(sequence=ArchiveAccessLogHead.sequence + 1)
        )
        head = (
            await session.execute(
                select(ArchiveAccessLogHead.sequence, ArchiveAccessLogHead.entry_hash).where(
                    ArchiveAccessLogHead.head_id == HEAD_ID
                )
            )
        ).one()
        entry = ArchiveAccessLogEntry(
            sequence=int(head.sequence),
            access_id=str(uuid.uuid4()),
            occurred_at=utcnow(),
            subject_id=_bounded(attempt.subject_id, 36),
            reader_account_id=_bounded(attempt.principal.subject, 64),
            reader_role=attempt.principal.role.value,
            purpose=attempt.purpose.value if attempt.purpose is not None else "",
            reference=_bounded(attempt.reference, MAX_REFERENCE),
            outcome=outcome.value,
            record_count=record_count,
            previous_hash=str(head.entry_hash),
        )
        entry.entry_hash = entry_hash(entry)
        session.add(entry)
        await session.execute(
            update(ArchiveAccessLogHead)
            .where(ArchiveAccessLogHead.head_id == HEAD_ID)
            .values(entry_hash=entry.entry_hash)
        )
        await session.flush()
    except SQLAlchemyError as exc:
        raise ArchiveLogUnavailable("the archive access log cannot be written; nothing is read") from exc
    log.info(
        "archive access",
        extra={
            "fields": {
                "subject_id": entry.subject_id,
                "reader_role": entry.reader_role,
                "purpose": entry.purpose,
                "outcome": entry.outcome,
            }
        },
    )
    return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    checked: int
    first_bad_sequence: int = 0


async def verify_chain(session: AsyncSession) -> ChainReport:
    """Walk the log in order; report the first altered, missing or relinked entry."""
    previous, expected, checked = GENESIS_HASH, 1, 0
    for entry in await session.scalars(
        select(ArchiveAccessLogEntry).order_by(ArchiveAccessLogEntry.sequence)
    ):
        if (
            entry.sequence != expected
            or entry.previous_hash != previous
            or entry_hash(entry) != entry.entry_hash
        ):
            return ChainReport(False, checked, expected)
        previous, expected, checked = entry.entry_hash, expected + 1, checked + 1
    head = await session.get(ArchiveAccessLogHead, HEAD_ID)
    if head is None or head.sequence != expected - 1 or head.entry_hash != previous:
        return ChainReport(False, checked, expected)
    return ChainReport(True, checked)


async def entries_about(session: AsyncSession, subject_id: str) -> list[ArchiveAccessLogEntry]:
    """The log entries about a subject, oldest first."""
    return list(
        (
            await session.scalars(
                select(ArchiveAccessLogEntry)
                .where(ArchiveAccessLogEntry.subject_id == subject_id)
                .order_by(ArchiveAccessLogEntry.sequence)
            )
        ).all()
    )


# ---------------------------------------------------------------- the archive's content


@dataclass(frozen=True, slots=True)
class Retention:
    archived_at: datetime
    retain_until: datetime
    restricted: bool


@dataclass(slots=True)
class PaymentSummary:
    """What the archive holds of an order's card payments (no card data: there is none)."""

    order_id: str
    currency: str = ""
    attempt_count: int = 0
    captured_count: int = 0
    captured_amount_cents: int = 0
    latest_status: str = ""
    latest_attempt_at: datetime | None = None
    captured_at: datetime | None = None
    psp_transaction_id: str = ""
    notification_count: int = 0
    retain_until: datetime | None = None

    def keep_until(self, until: datetime) -> None:
        self.retain_until = until if self.retain_until is None else max(self.retain_until, until)


@dataclass(slots=True)
class ArchiveView:
    archived_at: datetime
    restricted: bool
    orders: list[tuple[Order, Retention]] = field(default_factory=list)
    invoices: list[tuple[Invoice, Retention]] = field(default_factory=list)
    refunds: list[tuple[Refund, Retention]] = field(default_factory=list)
    payments: list[PaymentSummary] = field(default_factory=list)

    @property
    def record_count(self) -> int:
        return len(self.orders) + len(self.invoices) + len(self.refunds) + len(self.payments)


def _rebuild(model: type[M], payload: dict[str, Any]) -> M:
    """A detached (never added) row rebuilt from its archived JSON, for the converters."""
    values: dict[str, Any] = {}
    for column in model.__table__.columns:
        if column.key not in payload:
            continue
        value = payload[column.key]
        if isinstance(column.type, UTCDateTime) and isinstance(value, str):
            value = datetime.fromisoformat(value)
        values[column.key] = value
    return model(**values)


def _cents(value: object) -> int:
    return value if isinstance(value, int) else 0


def _unknown_time() -> datetime:
    return datetime.max.replace(tzinfo=UTC)


def _retention(row: ArchivedRecord) -> Retention:
    return Retention(row.archived_at, row.retain_until, row.restricted_at is not None)


def _payments(rows: list[ArchivedRecord]) -> list[PaymentSummary]:
    summaries: dict[str, PaymentSummary] = {}
    order_of_attempt: dict[str, str] = {}
    latest: dict[str, datetime] = {}
    for row in rows:
        if row.category != "payment_attempts":
            continue
        payload = row.payload
        order_id, attempt_id = str(payload["order_id"]), str(payload["payment_attempt_id"])
        order_of_attempt[attempt_id] = order_id
        summary = summaries.setdefault(order_id, PaymentSummary(order_id))
        summary.currency = str(payload["currency"])
        summary.attempt_count += 1
        summary.keep_until(row.retain_until)
        if order_id not in latest or row.record_at >= latest[order_id]:
            latest[order_id] = row.record_at
            summary.latest_status = str(payload["status"])
            summary.latest_attempt_at = row.record_at
        if payload["status"] == PaymentStatus.CAPTURED.value:
            summary.captured_count += 1
            summary.captured_amount_cents += _cents(payload.get("captured_amount_cents"))
            captured_at = payload.get("captured_at")
            if isinstance(captured_at, str) and (
                summary.captured_at is None or datetime.fromisoformat(captured_at) < summary.captured_at
            ):
                summary.captured_at = datetime.fromisoformat(captured_at)
                summary.psp_transaction_id = str(payload.get("psp_transaction_id") or "")
    notifications: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.category == "psp_notifications":
            order_id = order_of_attempt.get(str(row.payload["payment_attempt_id"]), "")
            if order_id:
                notifications[order_id] += 1
                summaries[order_id].keep_until(row.retain_until)
    for order_id, count in notifications.items():
        summaries[order_id].notification_count = count
    return sorted(summaries.values(), key=lambda s: (s.latest_attempt_at or _unknown_time(), s.order_id))


async def archive_view(session: AsyncSession, subject_id: str) -> ArchiveView:
    rows = await archived_rows(session, subject_id)
    if not rows:
        raise NotFound("nothing of this subject is archived")
    view = ArchiveView(
        archived_at=min(row.archived_at for row in rows),
        restricted=await is_restricted(session, subject_id) or all(r.restricted_at is not None for r in rows),
    )
    for row in rows:
        if row.category == "orders":
            view.orders.append((_rebuild(Order, row.payload), _retention(row)))
        elif row.category == "invoices":
            view.invoices.append((_rebuild(Invoice, row.payload), _retention(row)))
        elif row.category == "refunds":
            view.refunds.append((_rebuild(Refund, row.payload), _retention(row)))
    view.payments = _payments(rows)
    return view


# ---------------------------------------------------------------- the read path


async def read_archive(
    sessions: async_sessionmaker[AsyncSession], attempt: Attempt
) -> tuple[ArchiveView, str]:
    """The subject's archived records and the id of the log entry of this read; a refusal
    is logged, then raised."""
    try:
        check(attempt)
        async with sessions.begin() as session:
            view = await archive_view(session, attempt.subject_id)
            entry = await append(session, attempt, Outcome.GRANTED, view.record_count)
            return view, entry.access_id
    except (PermissionDenied, InvalidArgument, NotFound) as refusal:
        async with sessions.begin() as session:
            await append(session, attempt, next(o for kind, o in REFUSALS if isinstance(refusal, kind)))
        raise
