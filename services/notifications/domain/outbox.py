"""The transactional outbox: queue a message (with its rate limits), claim due messages
atomically, record each attempt's outcome, read statuses, erase recipients.

Claiming: one UPDATE sets a lease and a claim token on due rows, chosen by a sub-select
that PostgreSQL runs with FOR UPDATE SKIP LOCKED (concurrent workers take different rows)
and SQLite runs under its single writer lock; the UPDATE re-checks that each row is still
queued and unleased. Only the holder of the claim token can record the outcome.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from google.protobuf.message import Message
from sqlalchemy import (
    ColumnElement,
    Select,
    String,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import (
    Channel,
    DeliveryStatus,
    RateClass,
    TemplateSpec,
)
from services.notifications.domain.channels import DeliveryResult, Outcome, OutgoingMessage
from services.notifications.domain.recipients import Recipient
from services.notifications.domain.rendering import RenderedMessage
from services.notifications.models import (
    DevelopmentMessage,
    IdempotencyRecord,
    Notification,
    RateLimitLock,
)
from services.shared.errors import Aborted, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from services.shared.idempotency import check_key, request_fingerprint

RATE_LOCK_BUCKETS = 4096


class WriteGate:
    """SQLite has a single writer: this process's write transactions wait on an asyncio
    lock instead of spinning in SQLite's busy handler (which sleeps up to 100 ms a try and
    makes concurrent requests time out). On PostgreSQL it lets everything through."""

    def __init__(self, serialise: bool) -> None:
        self._lock = asyncio.Lock() if serialise else None

    async def __aenter__(self) -> None:
        if self._lock is not None:
            await self._lock.acquire()

    async def __aexit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()


NO_GATE = WriteGate(serialise=False)
DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class RateLimit:
    count: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class RatePolicy:
    code: RateLimit
    personal: RateLimit
    staff: RateLimit
    sms_per_day: int

    def for_spec(self, spec: TemplateSpec) -> RateLimit:
        if spec.rate_class is RateClass.CODE:
            return self.code
        if spec.rate_class is RateClass.STAFF:
            return self.staff
        return self.personal


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    base: timedelta
    cap: timedelta

    def delay(self, attempts: int) -> timedelta:
        """Exponential backoff with jitter: base * 2^(n-1), capped, times 0.5..1."""
        exponential = self.base.total_seconds() * 2 ** min(attempts - 1, 32)
        return timedelta(seconds=min(self.cap.total_seconds(), exponential) * random.uniform(0.5, 1.0))


@dataclass(frozen=True, slots=True)
class NewNotification:
    caller: str
    spec: TemplateSpec
    channel: Channel
    locale: str
    recipient: Recipient
    recipient_hash: str
    rendered: RenderedMessage


def _window_text(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    if seconds % 3600 == 0:
        hours = seconds // 3600
        return "hour" if hours == 1 else f"{hours} hours"
    if seconds % 60 == 0:
        return f"{seconds // 60} minutes"
    return f"{seconds} seconds"


def rate_lock_bucket(recipient_hash: str) -> int:
    return int(recipient_hash[:8], 16) % RATE_LOCK_BUCKETS


async def lock_recipients(session: AsyncSession, recipient_hashes: Iterable[str], now: datetime) -> None:
    """Serialise the rate-limit checks of these recipients: an upsert on their bucket rows
    holds row locks on PostgreSQL until commit (taken in bucket order, so two transactions
    locking several buckets cannot deadlock on them), and SQLite's writer lock."""
    buckets = sorted({rate_lock_bucket(recipient_hash) for recipient_hash in recipient_hashes})
    if not buckets:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(RateLimitLock).values([{"bucket": bucket, "touched_at": now} for bucket in buckets])
    await session.execute(
        statement.on_conflict_do_update(
            index_elements=["bucket"], set_={"touched_at": statement.excluded.touched_at}
        )
    )


def rate_error(limit: RateLimit, count: int, oldest: datetime | None, now: datetime, what: str) -> None:
    """Refuse (RESOURCE_EXHAUSTED) once `count` messages already count against `limit`."""
    if count >= limit.count:
        retry_in = max(1, int(((oldest or now) + limit.window - now).total_seconds()) + 1)
        raise ResourceExhausted(
            f"rate limit reached: at most {limit.count} {what} to one recipient per "
            f"{_window_text(limit.window)}; retry in {retry_in} s"
        )


async def _check_rates(session: AsyncSession, new: NewNotification, rates: RatePolicy, now: datetime) -> None:
    """The recipient's per-template limit and, for SMS, its daily SMS limit: one query."""
    template = new.spec.template
    limit = rates.for_spec(new.spec)
    in_window = and_(Notification.template == template.value, Notification.created_at > now - limit.window)
    columns: list[ColumnElement[Any]] = [
        func.count().filter(in_window),
        func.min(Notification.created_at).filter(in_window),
    ]
    since = now - limit.window
    sms_limit = RateLimit(rates.sms_per_day, DAY)
    if new.channel is Channel.SMS:
        sms_today = and_(Notification.channel == Channel.SMS.value, Notification.created_at > now - DAY)
        columns += [func.count().filter(sms_today), func.min(Notification.created_at).filter(sms_today)]
        since = min(since, now - DAY)
    row = (
        await session.execute(
            select(*columns).where(
                Notification.recipient_hash == new.recipient_hash, Notification.created_at > since
            )
        )
    ).one()
    rate_error(limit, int(row[0] or 0), row[1], now, f"{template.name} messages")
    if new.channel is Channel.SMS:
        rate_error(sms_limit, int(row[2] or 0), row[3], now, "SMS")


SEND_OPERATION = "SendNotification"


def notification_row(new: NewNotification, notification_id: str, now: datetime) -> dict[str, object]:
    """The outbox row of a new message, queued for delivery now."""
    return {
        "notification_id": notification_id,
        "caller": new.caller,
        "template": new.spec.template.value,
        "channel": new.channel.value,
        "locale": new.locale,
        "status": DeliveryStatus.QUEUED.value,
        "attempts": 0,
        "recipient": new.recipient.address,
        "subject": new.rendered.subject,
        "text_body": new.rendered.text,
        "html_body": new.rendered.html,
        "masked_recipient": new.recipient.masked,
        "recipient_hash": new.recipient_hash,
        "created_at": now,
        "updated_at": now,
        "next_attempt_at": now,
    }


@dataclass(frozen=True, slots=True)
class Queued:
    notification_id: str
    status: DeliveryStatus
    replayed: bool


def key_record(key: str, fingerprint: str, notification_id: str, now: datetime) -> dict[str, object]:
    """The idempotency record of a new message (committed with its outbox row)."""
    return {
        "idempotency_key": key,
        "operation": SEND_OPERATION,
        "request_hash": fingerprint,
        "result_id": notification_id,
        "created_at": now,
    }


def replay(operation: str, request_hash: str, result_id: str, status: str | None, fingerprint: str) -> Queued:
    """The answer to a key already recorded: its first message, or FAILED_PRECONDITION when
    the key was used with other parameters (or by another operation)."""
    if operation != SEND_OPERATION or request_hash != fingerprint:
        raise FailedPrecondition("idempotency_key was already used with different parameters")
    return Queued(result_id, DeliveryStatus(status or DeliveryStatus.QUEUED.value), True)


def recorded_keys(keys: Iterable[str]) -> Select[str, str, str, str, str]:
    """The records of these keys with the current status of their messages."""
    return (
        select(
            IdempotencyRecord.idempotency_key,
            IdempotencyRecord.operation,
            IdempotencyRecord.request_hash,
            IdempotencyRecord.result_id,
            Notification.status,
        )
        .outerjoin(Notification, Notification.notification_id == IdempotencyRecord.result_id)
        .where(IdempotencyRecord.idempotency_key.in_(list(keys)))
    )


async def _recall(session: AsyncSession, key: str, fingerprint: str) -> Queued | None:
    """The message an earlier request with this key queued (same parameters only)."""
    earlier = (await session.execute(recorded_keys([key]))).one_or_none()
    if earlier is None:
        return None
    return replay(earlier.operation, earlier.request_hash, earlier.result_id, earlier.status, fingerprint)


async def queue_once(
    sessions: async_sessionmaker[AsyncSession],
    request: Message,
    new: NewNotification,
    rates: RatePolicy,
    now: datetime,
) -> Queued:
    """Queue a message once per idempotency key (the outbox row and the key's record in one
    transaction); a replay answers with the first message and its current status. One
    transaction per call: the path taken with NOTIFICATIONS_SEND_GROUP_COMMIT=false (the
    service otherwise queues through `sending.SendGroupCommit`, the same steps per batch).

    Five statements and the commit: the recipient's lock, the key's record (with the
    status of its message), both rate limits in one query, the two inserts. The key is
    read after the lock, so a concurrent request with the same key that committed
    meanwhile is replayed rather than counted against the rate limit; a race the lock
    does not serialise ends in an IntegrityError on the key and the replay of the winner."""
    key = check_key(getattr(request, "idempotency_key", ""))
    fingerprint = request_fingerprint(request)
    try:
        async with sessions.begin() as session:
            await lock_recipients(session, [new.recipient_hash], now)
            earlier = await _recall(session, key, fingerprint)
            if earlier is not None:
                return earlier
            await _check_rates(session, new, rates, now)
            notification_id = str(uuid.uuid4())
            await session.execute(insert(Notification).values(notification_row(new, notification_id, now)))
            await session.execute(
                insert(IdempotencyRecord).values(key_record(key, fingerprint, notification_id, now))
            )
        return Queued(notification_id, DeliveryStatus.QUEUED, False)
    except IntegrityError as exc:
        async with sessions() as session:
            winner = await _recall(session, key, fingerprint)
        if winner is not None:
            return winner
        raise Aborted("a concurrent request changed the same data; retry") from exc


async def get_notification(session: AsyncSession, notification_id: str, caller: str) -> Notification:
    """The caller's own message; anything else is NOT_FOUND."""
    try:
        uuid.UUID(notification_id)
    except ValueError as exc:
        raise NotFound("notification not found") from exc
    notification = await session.get(Notification, notification_id)
    if notification is None or notification.caller != caller:
        raise NotFound("notification not found")
    return notification


# Delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Claimed:
    message: OutgoingMessage
    attempts: int
    masked_recipient: str
    claim_token: str


def _due(now: datetime) -> list[ColumnElement[bool]]:
    return [
        Notification.status == DeliveryStatus.QUEUED.value,
        Notification.next_attempt_at <= now,
        or_(Notification.claimed_until.is_(None), Notification.claimed_until < now),
    ]


async def claim_due(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    limit: int,
    lease: timedelta,
    *,
    skip_locked: bool,
    gate: WriteGate = NO_GATE,
) -> list[Claimed]:
    token = uuid.uuid4().hex
    candidates: Select[str] = (
        select(Notification.notification_id)
        .where(*_due(now))
        .order_by(Notification.next_attempt_at)
        .limit(limit)
    )
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        update(Notification)
        .where(Notification.notification_id.in_(candidates), *_due(now))
        .values(
            claimed_until=now + lease,
            claim_token=token,
            attempts=Notification.attempts + 1,
            updated_at=now,
        )
        .returning(
            Notification.notification_id,
            Notification.channel,
            Notification.template,
            Notification.locale,
            Notification.recipient,
            Notification.recipient_hash,
            Notification.subject,
            Notification.text_body,
            Notification.html_body,
            Notification.created_at,
            Notification.attempts,
            Notification.masked_recipient,
        )
        .execution_options(synchronize_session=False)
    )
    async with gate, sessions.begin() as session:
        rows = (await session.execute(statement)).all()
    return [
        Claimed(
            message=OutgoingMessage(
                notification_id=row.notification_id,
                channel=Channel(row.channel),
                template=row.template,
                locale=row.locale,
                recipient=row.recipient or "",
                recipient_hash=row.recipient_hash or "",
                subject=row.subject or "",
                text=row.text_body or "",
                html=row.html_body or "",
                created_at=row.created_at,
            ),
            attempts=row.attempts,
            masked_recipient=row.masked_recipient,
            claim_token=token,
        )
        for row in rows
    ]


# What a final status erases: the address and the rendered message.
ERASED_ON_END: dict[str, object] = {
    "recipient": None,
    "subject": None,
    "text_body": None,
    "html_body": None,
    "claimed_until": None,
    "claim_token": None,
    "next_attempt_at": None,
}


def outcome_status(result: DeliveryResult, attempts: int, retry: RetryPolicy) -> DeliveryStatus:
    if result.outcome is Outcome.SENT:
        return DeliveryStatus.SENT
    if result.outcome is Outcome.PERMANENT:
        return DeliveryStatus.BOUNCED
    return DeliveryStatus.FAILED if attempts >= retry.max_attempts else DeliveryStatus.QUEUED


@dataclass(frozen=True, slots=True)
class Recorded:
    status: DeliveryStatus
    # False when the claim no longer held the row (lease expired and claimed again, or
    # the recipient erased meanwhile): nothing was written for this attempt.
    held: bool


_NOTIFICATIONS = cast(Table, Notification.__table__)


def _outcome_update(ended: bool) -> object:
    """One UPDATE for many outcomes (executemany): only the holder of the claim writes."""
    values: dict[str, object] = {
        "status": bindparam("o_status"),
        "updated_at": bindparam("o_now"),
        "last_error": bindparam("o_error"),
        "provider_message_id": func.coalesce(
            bindparam("o_provider", type_=String()), _NOTIFICATIONS.c.provider_message_id
        ),
    }
    if ended:
        values |= ERASED_ON_END | {"delivery_ended_at": bindparam("o_now")}
    else:
        values |= {"next_attempt_at": bindparam("o_next"), "claimed_until": None, "claim_token": None}
    return (
        update(_NOTIFICATIONS)
        .where(
            _NOTIFICATIONS.c.notification_id == bindparam("o_id"),
            _NOTIFICATIONS.c.claim_token == bindparam("o_token"),
            _NOTIFICATIONS.c.status == DeliveryStatus.QUEUED.value,
        )
        .values(values)
    )


_RETRY_UPDATE = _outcome_update(ended=False)
_END_UPDATE = _outcome_update(ended=True)


async def record_outcomes(
    session: AsyncSession,
    outcomes: Sequence[tuple[Claimed, DeliveryResult]],
    retry: RetryPolicy,
    now: datetime,
    *,
    lock_rows: bool,
) -> list[Recorded]:
    """Apply many attempts' outcomes in the caller's transaction, in three statements
    whatever their number: read which claims still hold their rows (locked on
    PostgreSQL, in id order), then one executemany UPDATE for the retries and one for
    the messages whose delivery ended. Each result's row is written only by its claim."""
    ids = sorted({claimed.message.notification_id for claimed, _ in outcomes})
    holders: Select[str, str | None] = (
        select(Notification.notification_id, Notification.claim_token)
        .where(Notification.notification_id.in_(ids), Notification.status == DeliveryStatus.QUEUED.value)
        .order_by(Notification.notification_id)
    )
    if lock_rows:
        holders = holders.with_for_update()
    tokens = {row.notification_id: row.claim_token for row in (await session.execute(holders)).all()}
    recorded: list[Recorded] = []
    retries: list[dict[str, object]] = []
    ended: list[dict[str, object]] = []
    for claimed, result in outcomes:
        status = outcome_status(result, claimed.attempts, retry)
        notification_id = claimed.message.notification_id
        held = tokens.get(notification_id) == claimed.claim_token
        if held:
            tokens.pop(notification_id)  # one outcome per claim
        recorded.append(Recorded(status, held))
        if not held:
            continue
        params: dict[str, object] = {
            "o_id": notification_id,
            "o_token": claimed.claim_token,
            "o_status": status.value,
            "o_now": now,
            "o_error": None if result.outcome is Outcome.SENT else result.code[:64],
            "o_provider": result.provider_message_id,
        }
        if status is DeliveryStatus.QUEUED:
            retries.append(params | {"o_next": now + retry.delay(claimed.attempts)})
        else:
            ended.append(params)
    connection = await session.connection()
    for statement, rows in ((_RETRY_UPDATE, retries), (_END_UPDATE, ended)):
        if rows:
            await connection.execute(statement, rows)  # type: ignore[call-overload]
    return recorded


async def release_claims(
    sessions: async_sessionmaker[AsyncSession],
    claims: list[tuple[Claimed, bool]],
    now: datetime,
    gate: WriteGate = NO_GATE,
) -> None:
    """On shutdown: hand unfinished messages back (an attempt that never started is not counted)."""
    async with gate, sessions.begin() as session:
        for claimed, started in claims:
            await session.execute(
                update(Notification)
                .where(
                    Notification.notification_id == claimed.message.notification_id,
                    Notification.claim_token == claimed.claim_token,
                    Notification.status == DeliveryStatus.QUEUED.value,
                )
                .values(
                    claimed_until=None,
                    claim_token=None,
                    updated_at=now,
                    attempts=Notification.attempts - (0 if started else 1),
                )
                .execution_options(synchronize_session=False)
            )


# Erasure ----------------------------------------------------------------------------------


async def purge_recipient(session: AsyncSession, recipient_hash: str, now: datetime) -> int:
    """Erase every trace of one recipient: messages still queued end as FAILED (there is no
    one to deliver them to any more), ended ones lose their masked address and hash."""
    matches = Notification.recipient_hash == recipient_hash
    await session.execute(
        update(Notification)
        .where(matches, Notification.status == DeliveryStatus.QUEUED.value)
        .values(
            status=DeliveryStatus.FAILED.value,
            last_error="recipient_erased",
            delivery_ended_at=now,
            updated_at=now,
            **ERASED_ON_END,
        )
        .execution_options(synchronize_session=False)
    )
    erased = await session.execute(
        update(Notification)
        .where(matches)
        .values(masked_recipient="", recipient_hash=None, **ERASED_ON_END)
        .execution_options(synchronize_session=False)
    )
    await _delete_development_copies(session, DevelopmentMessage.recipient_hash == recipient_hash)
    return int(getattr(erased, "rowcount", 0))


async def purge_ended_before(session: AsyncSession, cutoff: datetime) -> int:
    """The retention sweep: messages whose delivery ended before `cutoff` keep their status
    but lose every trace of the recipient."""
    erased = await session.execute(
        update(Notification)
        .where(
            Notification.delivery_ended_at < cutoff,
            or_(Notification.masked_recipient != "", Notification.recipient_hash.is_not(None)),
        )
        .values(masked_recipient="", recipient_hash=None, **ERASED_ON_END)
        .execution_options(synchronize_session=False)
    )
    await _delete_development_copies(session, DevelopmentMessage.created_at < cutoff)
    return int(getattr(erased, "rowcount", 0))


async def _delete_development_copies(session: AsyncSession, criterion: ColumnElement[bool]) -> None:
    await session.execute(delete(DevelopmentMessage).where(criterion))


# Development outbox -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    message: DevelopmentMessage
    status: DeliveryStatus | None


def _page_token(message: DevelopmentMessage) -> str:
    raw = f"{message.created_at.isoformat()}|{message.notification_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_page_token(token: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        stamp, _, notification_id = raw.partition("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None or not notification_id:
            raise ValueError("incomplete token")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not a token this service issued") from exc
    return created_at, notification_id


async def list_development_messages(
    session: AsyncSession, channel: Channel | None, page_size: int, page_token: str
) -> tuple[list[OutboxEntry], str]:
    query = (
        select(DevelopmentMessage, Notification.status)
        .outerjoin(Notification, Notification.notification_id == DevelopmentMessage.notification_id)
        .order_by(DevelopmentMessage.created_at.desc(), DevelopmentMessage.notification_id.desc())
        .limit(page_size + 1)
    )
    if channel is not None:
        query = query.where(DevelopmentMessage.channel == channel.value)
    if page_token:
        created_at, notification_id = _parse_page_token(page_token)
        query = query.where(
            or_(
                DevelopmentMessage.created_at < created_at,
                and_(
                    DevelopmentMessage.created_at == created_at,
                    DevelopmentMessage.notification_id < notification_id,
                ),
            )
        )
    rows = (await session.execute(query)).all()
    entries = [OutboxEntry(message, DeliveryStatus(status) if status else None) for message, status in rows]
    next_token = _page_token(entries[page_size - 1].message) if len(entries) > page_size else ""
    return entries[:page_size], next_token
