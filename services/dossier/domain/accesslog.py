"""The access log (SEC-01, SEC-02): every read or write of a case, form, document,
message or report appends who, role, what, when and why. Entries form a hash chain (each
carries the previous entry's hash) and the database refuses UPDATE and DELETE on the
table. An append that fails makes the whole access fail (UNAVAILABLE): no log, no data.

Writes append their entry in the write's own transaction (`append`). Reads hand theirs to
`ReadLog`, a group commit: one writer task appends every queued read entry in one
transaction and each reader waits for its entries' commit before it returns any data.
Appends are ordered by the single head row's lock, so every read used to be a write
transaction of its own, queued behind the others on that lock.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import grpc
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.models import AccessLogEntry, AccessLogHead, Case
from services.shared.auth import Principal
from services.shared.db import utcnow
from services.shared.errors import ServiceError

GENESIS_HASH = "0" * 64
HEAD_ID = 1
log = logging.getLogger(__name__)


class AccessLogUnavailable(ServiceError):
    """The log could not be written: the access is refused."""

    status = grpc.StatusCode.UNAVAILABLE


class Action(StrEnum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DOWNLOAD = "download"
    EXPORT = "export"
    LIFECYCLE = "lifecycle"
    REFUSED = "refused"
    SHARE = "share"


class ObjectKind(StrEnum):
    CASE = "case"
    FORM_ANSWERS = "form_answers"
    DOCUMENT = "document"
    MESSAGE = "message"
    REPORT = "report"
    CASE_NOTES = "case_notes"


class Purpose(StrEnum):
    OWN_SPACE = "own_space"
    CASE_REVIEW = "case_review"
    COORDINATION = "coordination"
    PERSONAL_ASSISTANT = "personal_assistant"
    PLATFORM_PROCESSING = "platform_processing"
    RIGHTS_REQUEST = "rights_request"
    LEGAL_ARCHIVE = "legal_archive"
    NONE_ESTABLISHED = "none_established"  # refused attempts


def entry_hash(entry: AccessLogEntry) -> str:
    payload = json.dumps(
        [
            entry.sequence,
            entry.occurred_at.isoformat(timespec="microseconds"),
            entry.actor_account_id,
            entry.actor_role,
            entry.action,
            entry.object_kind,
            entry.object_id,
            entry.case_id,
            entry.subject_account_id,
            entry.beneficiary_id,
            entry.purpose,
            entry.previous_hash,
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class PendingEntry:
    """An entry before it takes its place in the chain (sequence, time, hashes)."""

    actor_account_id: str
    actor_role: str
    action: Action
    object_kind: ObjectKind
    object_id: str
    case_id: str
    subject_account_id: str
    beneficiary_id: str
    purpose: Purpose


def pending(
    *,
    actor: Principal,
    action: Action,
    object_kind: ObjectKind,
    object_id: str,
    case: Case | None,
    purpose: Purpose,
    subject_account_id: str = "",
) -> PendingEntry:
    """Account-level objects (proof documents) have no case: pass the subject instead."""
    return PendingEntry(
        actor_account_id=actor.subject,
        actor_role=actor.role.value,
        action=action,
        object_kind=object_kind,
        object_id=object_id,
        case_id=case.case_id if case else "",
        subject_account_id=case.filer_account_id if case else subject_account_id,
        beneficiary_id=case.beneficiary_id if case else "",
        purpose=purpose,
    )


async def _chain(session: AsyncSession, entries: Sequence[PendingEntry]) -> list[AccessLogEntry]:
    """Link entries at the head of the chain in the session's transaction."""
    # The write comes first so the lock is taken before the head is read (both backends).
    await session.execute(
        update(AccessLogHead)
        .where(AccessLogHead.head_id == HEAD_ID)
        .values(sequence=AccessLogHead.sequence + len(entries))
    )
    row = (
        await session.execute(
            select(AccessLogHead.sequence, AccessLogHead.entry_hash).where(AccessLogHead.head_id == HEAD_ID)
        )
    ).one()
    previous = str(row.entry_hash)
    first = int(row.sequence) - len(entries) + 1
    now = utcnow()
    chained: list[AccessLogEntry] = []
    for offset, item in enumerate(entries):
        entry = AccessLogEntry(
            sequence=first + offset,
            occurred_at=now,
            actor_account_id=item.actor_account_id,
            actor_role=item.actor_role,
            action=item.action.value,
            object_kind=item.object_kind.value,
            object_id=item.object_id,
            case_id=item.case_id,
            subject_account_id=item.subject_account_id,
            beneficiary_id=item.beneficiary_id,
            purpose=item.purpose.value,
            previous_hash=previous,
        )
        entry.entry_hash = previous = entry_hash(entry)
        chained.append(entry)
    session.add_all(chained)
    await session.execute(
        update(AccessLogHead).where(AccessLogHead.head_id == HEAD_ID).values(entry_hash=previous)
    )
    await session.flush()
    return chained


async def append(
    session: AsyncSession,
    *,
    actor: Principal,
    action: Action,
    object_kind: ObjectKind,
    object_id: str,
    case: Case | None,
    purpose: Purpose,
    subject_account_id: str = "",
) -> AccessLogEntry:
    """Append one entry in the caller's transaction; the head row's lock orders appends.
    Account-level objects (proof documents) have no case: pass the subject instead."""
    entry = pending(
        actor=actor, action=action, object_kind=object_kind, object_id=object_id, case=case,
        purpose=purpose, subject_account_id=subject_account_id,
    )  # fmt: skip
    try:
        return (await _chain(session, [entry]))[0]
    except SQLAlchemyError as exc:
        raise AccessLogUnavailable("the access log cannot be written; the access is refused") from exc


# PostgreSQL: serialization failure, deadlock, lock not available. SQLite: busy or locked.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


def _retryable(exc: BaseException) -> bool:
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


class ReadLog:
    """Group commit of read entries. Readers queue their entries and wait; one writer task
    (started when entries are queued and none runs, ended when the queue is empty) links
    everything queued in one transaction and tells each reader once it is committed, or
    that it failed (AccessLogUnavailable: the reader returns nothing). A transient race on
    the head row (deadlock, serialization failure, busy database) is retried a bounded
    number of times: the batch holds log entries only, so a retry is safe."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        max_batch: int = 500,
        attempts: int = 3,
        retry_pause_seconds: float = 0.02,
    ) -> None:
        self._sessions = sessions
        self._max_batch = max_batch
        self._attempts = attempts
        self._pause = retry_pause_seconds
        self._queue: deque[tuple[Sequence[PendingEntry], asyncio.Future[None]]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self.batches = 0  # transactions committed (tests, metrics)

    async def append(self, entries: Sequence[PendingEntry]) -> None:
        """Return once the entries are committed to the chain; raise AccessLogUnavailable
        when they cannot be."""
        if not entries:
            return
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        # A reader that gives up (cancelled) leaves its entries to be written anyway.
        committed.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append((tuple(entries), committed))
        if self._writer is None or self._writer.done():
            # Its own context: the writer serves every reader, not the first one's trace.
            self._writer = loop.create_task(self._write(), context=contextvars.Context())
        await asyncio.shield(committed)

    async def _write(self) -> None:
        while self._queue:
            batch: list[tuple[Sequence[PendingEntry], asyncio.Future[None]]] = []
            size = 0
            while self._queue and (not batch or size + len(self._queue[0][0]) <= self._max_batch):
                group = self._queue.popleft()
                batch.append(group)
                size += len(group[0])
            try:
                await self._commit([entry for entries, _ in batch for entry in entries])
            except BaseException as exc:
                log.warning("read entries not logged", extra={"fields": {"entries": size}})
                for _, committed in batch:
                    if not committed.done():
                        failure = AccessLogUnavailable(
                            "the access log cannot be written; the access is refused"
                        )
                        failure.__cause__ = exc
                        committed.set_exception(failure)
                if not isinstance(exc, Exception):  # cancelled (shutdown): the queue too
                    self._fail_queued(exc)
                    raise
            else:
                for _, committed in batch:
                    if not committed.done():
                        committed.set_result(None)

    def _fail_queued(self, cause: BaseException) -> None:
        while self._queue:
            _, committed = self._queue.popleft()
            if not committed.done():
                failure = AccessLogUnavailable("the access log cannot be written; the access is refused")
                failure.__cause__ = cause
                committed.set_exception(failure)

    async def _commit(self, entries: list[PendingEntry]) -> None:
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._sessions.begin() as session:
                    await _chain(session, entries)
                self.batches += 1
                return
            except DBAPIError as exc:
                if attempt == self._attempts or not _retryable(exc):
                    raise
                log.info("access log append retried", extra={"fields": {"attempt": attempt}})
                await asyncio.sleep(self._pause * attempt)


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    checked: int
    first_bad_sequence: int = 0
    problem: str = ""  # "altered" | "missing" | "broken_link"


async def verify_chain(session: AsyncSession, batch: int = 1000) -> ChainReport:
    """Walk the chain in order; report the first altered, missing or relinked entry."""
    expected_sequence = 1
    previous = GENESIS_HASH
    checked = 0
    while True:
        entries = (
            await session.scalars(
                select(AccessLogEntry)
                .where(AccessLogEntry.sequence >= expected_sequence)
                .order_by(AccessLogEntry.sequence)
                .limit(batch)
            )
        ).all()
        for entry in entries:
            if entry.sequence != expected_sequence:
                return ChainReport(False, checked, expected_sequence, "missing")
            if entry_hash(entry) != entry.entry_hash:
                return ChainReport(False, checked, entry.sequence, "altered")
            if entry.previous_hash != previous:
                return ChainReport(False, checked, entry.sequence, "broken_link")
            previous = entry.entry_hash
            expected_sequence += 1
            checked += 1
        if len(entries) < batch:
            break
    head = (
        await session.execute(
            select(AccessLogHead.sequence, AccessLogHead.entry_hash).where(AccessLogHead.head_id == HEAD_ID)
        )
    ).one()
    if int(head.sequence) >= expected_sequence:  # entries removed from the end
        return ChainReport(False, checked, expected_sequence, "missing")
    if head.entry_hash != previous:
        return ChainReport(False, checked, max(expected_sequence - 1, 1), "broken_link")
    return ChainReport(True, checked)


async def entries_about(
    session: AsyncSession,
    *,
    subject_account_id: str | None,
    beneficiary_id: str | None,
    case_id: str,
    before_sequence: int | None,
    limit: int,
) -> list[AccessLogEntry]:
    """Entries about a person's data, newest first. `subject_account_id` alone: every case
    they filed; with `beneficiary_id`: only the cases for that beneficiary; staff may pass
    `beneficiary_id` alone (or an id matching either column through both arguments)."""
    query = select(AccessLogEntry)
    if subject_account_id is not None and beneficiary_id is not None and subject_account_id == beneficiary_id:
        query = query.where(
            or_(
                AccessLogEntry.subject_account_id == subject_account_id,
                AccessLogEntry.beneficiary_id == beneficiary_id,
            )
        )
    else:
        if subject_account_id is not None:
            query = query.where(AccessLogEntry.subject_account_id == subject_account_id)
        if beneficiary_id is not None:
            query = query.where(AccessLogEntry.beneficiary_id == beneficiary_id)
    if case_id:
        query = query.where(AccessLogEntry.case_id == case_id)
    if before_sequence is not None:
        query = query.where(AccessLogEntry.sequence < before_sequence)
    return list((await session.scalars(query.order_by(AccessLogEntry.sequence.desc()).limit(limit))).all())


async def count_entries(session: AsyncSession) -> int:
    return int((await session.scalar(select(func.count()).select_from(AccessLogEntry))) or 0)
