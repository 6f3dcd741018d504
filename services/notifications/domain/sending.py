"""Group commit of SendNotification: one write transaction for many queued messages.

Each call used to run a write transaction of its own (the recipient's rate-limit lock, the
key's record, the rate counts, two inserts): on SQLite every call held the single writer
lock for several milliseconds, one call after another. Now a call checks and renders its
message, hands it to `SendGroupCommit` and waits; one writer task (started when something
is queued and none runs, ended when the queue is empty) decides and writes everything
queued meanwhile in one transaction: five statements and the commit, whatever its size:

1. lock the rate-limit buckets of every recipient in the batch (one upsert, bucket order);
2. read the records of every key in the batch, with the status of their messages;
3. count every recipient's recent messages: per template in its rate window, and SMS per
   day (one grouped query);
4. decide in arrival order, in Python, exactly as calls one after another would: a key
   already recorded, or taken by an earlier call of the same batch, is replayed (same
   parameters) or refused (FAILED_PRECONDITION); a rate limit counts the database's rows
   plus the rows the batch has already accepted for that recipient;
5. insert the accepted messages (outbox rows) and their keys' records (two executemany).

Nothing is answered before the commit: a caller hears that its message is queued only once
its outbox row and its key's record are committed, and a refusal only once the decision it
rests on holds. A transient race (deadlock, serialization failure, a busy SQLite, a key
inserted meanwhile by another replica) decides the whole batch again from scratch, a few
times at most; any other failure answers every caller of the batch UNAVAILABLE (retryable:
the key makes the retry safe). A caller that gives up (cancelled) leaves its message to be
written anyway; its retry is replayed.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from google.protobuf.message import Message
from sqlalchemy import ColumnElement, func, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import Channel, DeliveryStatus
from services.notifications.domain.outbox import (
    DAY,
    NO_GATE,
    SEND_OPERATION,
    NewNotification,
    Queued,
    RateLimit,
    RatePolicy,
    WriteGate,
    key_record,
    lock_recipients,
    notification_row,
    rate_error,
    recorded_keys,
    replay,
)
from services.notifications.models import IdempotencyRecord, Notification
from services.shared.db import utcnow
from services.shared.errors import ServiceError
from services.shared.idempotency import check_key, request_fingerprint

log = logging.getLogger(__name__)

# PostgreSQL: serialization failure, deadlock, lock not available.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "55P03"})


class SendUnavailable(ServiceError):
    """The message could not be queued (database failure, shutdown): the caller retries."""

    status = grpc.StatusCode.UNAVAILABLE


def retryable(exc: BaseException) -> bool:
    """A race that deciding the batch again resolves: lock conflicts, and a key that another
    replica recorded between our read and our insert (replayed on the next attempt)."""
    if isinstance(exc, IntegrityError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    text = str(exc.orig).lower()
    return "database is locked" in text or "database is busy" in text


@dataclass(frozen=True, slots=True)
class _Waiting:
    key: str
    fingerprint: str
    new: NewNotification
    answer: asyncio.Future[Queued]


# What the batch decided for one caller: its answer, or the refusal it gets.
Decision = Queued | ServiceError


@dataclass(slots=True)
class _Tally:
    count: int = 0
    oldest: datetime | None = None

    def add(self, count: int, oldest: datetime | None) -> None:
        if not count:
            return
        self.count += count
        if oldest is not None and (self.oldest is None or oldest < self.oldest):
            self.oldest = oldest


@dataclass(slots=True)
class RecentCounts:
    """The database's recent messages per recipient: per (recipient, template) in each rate
    window the batch needs, and SMS in the last day."""

    per_template: dict[tuple[str, str, timedelta], _Tally]
    sms_today: dict[str, _Tally]

    def template(self, recipient_hash: str, template: str, window: timedelta) -> _Tally:
        return self.per_template.get((recipient_hash, template, window), _Tally())

    def sms(self, recipient_hash: str) -> _Tally:
        return self.sms_today.get(recipient_hash, _Tally())


async def recent_counts(
    session: AsyncSession, batch: Sequence[NewNotification], rates: RatePolicy, now: datetime
) -> RecentCounts:
    """One grouped query for every recipient of the batch: for each (recipient, template,
    channel), the count and oldest creation time in each window the batch's limits use."""
    needed = {rates.for_spec(new.spec).window for new in batch}
    if any(new.channel is Channel.SMS for new in batch):
        needed.add(DAY)
    windows = sorted(needed)
    group = (Notification.recipient_hash, Notification.template, Notification.channel)
    columns: list[ColumnElement[Any]] = []
    for window in windows:
        inside = Notification.created_at > now - window
        columns += [func.count().filter(inside), func.min(Notification.created_at).filter(inside)]
    rows = (
        await session.execute(
            select(*group, *columns)
            .where(
                Notification.recipient_hash.in_(sorted({new.recipient_hash for new in batch})),
                Notification.created_at > now - windows[-1],
            )
            .group_by(*group)
        )
    ).all()
    counts = RecentCounts({}, {})
    for row in rows:
        recipient_hash, template, channel = str(row[0]), str(row[1]), str(row[2])
        for index, window in enumerate(windows):
            count, oldest = int(row[3 + 2 * index] or 0), row[4 + 2 * index]
            counts.per_template.setdefault((recipient_hash, template, window), _Tally()).add(count, oldest)
            if window == DAY and channel == Channel.SMS.value:
                counts.sms_today.setdefault(recipient_hash, _Tally()).add(count, oldest)
    return counts


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's record in the database, with the current status of its message."""

    operation: str
    request_hash: str
    result_id: str
    status: str | None


@dataclass(slots=True)
class Decided:
    decisions: list[Decision]
    notifications: list[dict[str, object]]
    records: list[dict[str, object]]


def decide(
    batch: Sequence[tuple[str, str, NewNotification]],
    recorded: Mapping[str, KeyRecord],
    counts: RecentCounts,
    rates: RatePolicy,
    now: datetime,
) -> Decided:
    """Answer each (key, fingerprint, message) in order as if each had its own transaction
    after the previous ones: `recorded` holds the database's rows of the batch's keys (see
    `recorded_keys`), the rows accepted here count against the limits of the later ones."""
    taken: dict[str, tuple[str, str]] = {}  # key -> (fingerprint, notification id), this batch
    per_template: Counter[tuple[str, str]] = Counter()
    sms_today: Counter[str] = Counter()
    decided = Decided([], [], [])
    sms_limit = RateLimit(rates.sms_per_day, DAY)
    for key, fingerprint, new in batch:
        try:
            earlier = recorded.get(key)
            if earlier is not None:
                decided.decisions.append(
                    replay(
                        earlier.operation,
                        earlier.request_hash,
                        earlier.result_id,
                        earlier.status,
                        fingerprint,
                    )
                )
                continue
            if key in taken:
                first_fingerprint, first_id = taken[key]
                decided.decisions.append(
                    replay(SEND_OPERATION, first_fingerprint, first_id, None, fingerprint)
                )
                continue
            template = new.spec.template.value
            limit = rates.for_spec(new.spec)
            pending = per_template[(new.recipient_hash, template)]
            tally = counts.template(new.recipient_hash, template, limit.window)
            rate_error(
                limit,
                tally.count + pending,
                _oldest(tally, pending, now),
                now,
                f"{new.spec.template.name} messages",
            )
            if new.channel is Channel.SMS:
                pending_sms = sms_today[new.recipient_hash]
                tally = counts.sms(new.recipient_hash)
                rate_error(sms_limit, tally.count + pending_sms, _oldest(tally, pending_sms, now), now, "SMS")
        except ServiceError as refusal:
            decided.decisions.append(refusal)
            continue
        notification_id = str(uuid.uuid4())
        taken[key] = (fingerprint, notification_id)
        per_template[(new.recipient_hash, template)] += 1
        if new.channel is Channel.SMS:
            sms_today[new.recipient_hash] += 1
        decided.notifications.append(notification_row(new, notification_id, now))
        decided.records.append(key_record(key, fingerprint, notification_id, now))
        decided.decisions.append(Queued(notification_id, DeliveryStatus.QUEUED, False))
    return decided


def _oldest(tally: _Tally, pending: int, now: datetime) -> datetime | None:
    """The oldest message counted: the database's, else one of the batch's (created now)."""
    return tally.oldest if tally.count else (now if pending else None)


class SendGroupCommit:
    """Group commit of new messages; see the module's docstring. `aclose` (the service's
    lifespan) lets the writer finish what is queued within a grace period, then answers
    whatever is left UNAVAILABLE; calls after it are refused UNAVAILABLE."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        rates: RatePolicy,
        *,
        gate: WriteGate = NO_GATE,
        max_batch: int = 256,
        attempts: int = 3,
        retry_pause_seconds: float = 0.02,
    ) -> None:
        self._sessions = sessions
        self._rates = rates
        self._gate = gate
        self._max_batch = max_batch
        self._attempts = attempts
        self._pause = retry_pause_seconds
        self._queue: deque[_Waiting] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # transactions committed (tests, metrics)
        self.largest_batch = 0

    async def submit(self, request: Message, new: NewNotification) -> Queued:
        """Queue `new` once per idempotency key; return once its outbox row and the key's
        record are committed (or the replay of the key's first message). Refusals:
        FAILED_PRECONDITION (key reused with other parameters), RESOURCE_EXHAUSTED (rate
        limit), UNAVAILABLE (not written: the database failed or the service is stopping)."""
        key = check_key(getattr(request, "idempotency_key", ""))
        fingerprint = request_fingerprint(request)
        if self._closed:
            raise SendUnavailable("the notifications service is stopping; retry")
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Queued] = loop.create_future()
        # A caller that gives up (cancelled) leaves its message to be written anyway.
        answer.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(_Waiting(key, fingerprint, new, answer))
        if self._writer is None or self._writer.done():
            # Its own context: the writer serves every caller, not the first one's trace.
            self._writer = loop.create_task(
                self._write(), name="notifications-send", context=contextvars.Context()
            )
        return await asyncio.shield(answer)

    async def aclose(self, grace_seconds: float) -> None:
        """Refuse new calls; let the writer commit what is queued for at most
        `grace_seconds`, then cancel it (its callers are answered UNAVAILABLE)."""
        self._closed = True
        writer = self._writer
        if writer is not None and not writer.done():
            await asyncio.wait({writer}, timeout=grace_seconds)
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        self._fail_queued(None)

    async def _write(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
            try:
                decisions = await self._commit(batch)
            except BaseException as exc:
                log.warning(
                    "notifications not queued",
                    extra={"fields": {"count": len(batch), "error_type": type(exc).__name__}},
                )
                for waiting in batch:
                    _fail(waiting.answer, exc)
                if not isinstance(exc, Exception):  # cancelled (shutdown): the queue too
                    self._fail_queued(exc)
                    raise
            else:
                for waiting, decision in zip(batch, decisions, strict=True):
                    if waiting.answer.done():
                        continue
                    if isinstance(decision, ServiceError):
                        waiting.answer.set_exception(decision)
                    else:
                        waiting.answer.set_result(decision)

    def _fail_queued(self, cause: BaseException | None) -> None:
        while self._queue:
            _fail(self._queue.popleft().answer, cause)

    async def _commit(self, batch: list[_Waiting]) -> list[Decision]:
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._gate, self._sessions.begin() as session:
                    decisions = await self._decide_and_write(session, batch)
                self.batches += 1
                self.largest_batch = max(self.largest_batch, len(batch))
                return decisions
            except DBAPIError as exc:
                if attempt == self._attempts or not retryable(exc):
                    raise
                log.info(
                    "notifications batch retried",
                    extra={"fields": {"attempt": attempt, "error_type": type(exc).__name__}},
                )
                await asyncio.sleep(self._pause * attempt)
        raise AssertionError("unreachable")

    async def _decide_and_write(self, session: AsyncSession, batch: list[_Waiting]) -> list[Decision]:
        now = utcnow()
        news = [waiting.new for waiting in batch]
        await lock_recipients(session, [new.recipient_hash for new in news], now)
        rows = (await session.execute(recorded_keys({w.key for w in batch}))).all()
        recorded = {
            key: KeyRecord(operation, request_hash, result_id, status)
            for key, operation, request_hash, result_id, status in rows
        }
        counts = await recent_counts(session, news, self._rates, now)
        decided = decide([(w.key, w.fingerprint, w.new) for w in batch], recorded, counts, self._rates, now)
        if decided.notifications:
            await session.execute(insert(Notification), decided.notifications)
            # In key order: two replicas' batches inserting the same keys wait on each other
            # in the same order (one fails on the key and is decided again) and never deadlock.
            records = sorted(decided.records, key=lambda record: str(record["idempotency_key"]))
            await session.execute(insert(IdempotencyRecord), records)
        return decided.decisions


def _fail(answer: asyncio.Future[Queued], cause: BaseException | None) -> None:
    if answer.done():
        return
    failure = SendUnavailable("the message could not be queued; retry")
    failure.__cause__ = cause
    answer.set_exception(failure)
