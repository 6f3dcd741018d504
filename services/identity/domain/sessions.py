"""Sessions: opaque random tokens stored hashed, idle and absolute timeouts, step-up window."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain.events import NO_CLIENT, Client, EventKind, record_event
from services.identity.models import Account, UserSession
from services.shared.db import utcnow
from services.shared.errors import NotFound, Unauthenticated

TOKEN_BYTES = 32  # 256 bits, above the 128-bit floor.
LAST_SEEN_PRECISION = timedelta(seconds=30)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_timeout: timedelta
    absolute_timeout: timedelta


@dataclass(frozen=True, slots=True)
class OpenedSession:
    session_id: str
    token: str
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ValidSession:
    session_id: str
    account: Account
    step_up_valid_until: datetime | None = None


async def open_session(
    session: AsyncSession,
    account_id: str,
    method: str = "",
    client: Client = NO_CLIENT,
) -> OpenedSession:
    """Called once a login has passed every factor."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    record = UserSession(
        session_id=str(uuid.uuid4()),
        account_id=account_id,
        token_hash=hash_token(token),
        created_at=now,
        last_seen_at=now,
        ended_at=None,
        authentication_method=method,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
        step_up_valid_until=None,
        end_reason=None,
    )
    session.add(record)
    await session.flush()
    return OpenedSession(session_id=record.session_id, token=token, created_at=now)


def is_open(record: UserSession, policy: SessionPolicy, now: datetime) -> bool:
    return (
        record.ended_at is None
        and now - record.last_seen_at <= policy.idle_timeout
        and now - record.created_at <= policy.absolute_timeout
    )


async def validate_session(session: AsyncSession, token: str, policy: SessionPolicy) -> ValidSession:
    """One answer for every failure, so a caller learns nothing about why."""
    refused = Unauthenticated("session is not valid")
    if not token or len(token) > 256:
        raise refused
    record = await session.scalar(select(UserSession).where(UserSession.token_hash == hash_token(token)))
    now = utcnow()
    if record is None or not is_open(record, policy, now):
        raise refused
    account = await session.get(Account, record.account_id)
    if account is None or account.status != "active":
        raise refused
    # Touching the row on every request would make each API call a write; the idle clock
    # only needs minute precision.
    if now - record.last_seen_at > LAST_SEEN_PRECISION:
        record.last_seen_at = now
        account.last_activity_at = now
    window = record.step_up_valid_until
    return ValidSession(
        session_id=record.session_id,
        account=account,
        step_up_valid_until=window if window is not None and window > now else None,
    )


async def current_session(
    session: AsyncSession, account_id: str, session_id: str, policy: SessionPolicy
) -> UserSession:
    record = await session.get(UserSession, session_id) if session_id else None
    if record is None or record.account_id != account_id or not is_open(record, policy, utcnow()):
        raise Unauthenticated("the session has ended; log in again")
    return record


async def list_open_sessions(
    session: AsyncSession, account_id: str, policy: SessionPolicy
) -> list[UserSession]:
    now = utcnow()
    rows = await session.scalars(
        select(UserSession)
        .where(UserSession.account_id == account_id, UserSession.ended_at.is_(None))
        .order_by(UserSession.created_at.desc())
    )
    return [row for row in rows if is_open(row, policy, now)]


async def end_session(
    session: AsyncSession, account_id: str, session_id: str, reason: str, client: Client = NO_CLIENT
) -> datetime:
    record = await session.get(UserSession, session_id) if session_id else None
    if record is None or record.account_id != account_id:
        raise NotFound("session not found")
    if record.ended_at is None:
        record.ended_at = utcnow()
        record.end_reason = reason
        record_event(session, EventKind.SESSION_ENDED, account_id, client, session_id)
    return record.ended_at


async def end_all_sessions(
    session: AsyncSession, account_id: str, reason: str, keep_session_id: str | None = None
) -> int:
    """Ends every open session of the account (but one, when given); returns how many."""
    statement = (
        update(UserSession)
        .where(UserSession.account_id == account_id, UserSession.ended_at.is_(None))
        .values(ended_at=utcnow(), end_reason=reason)
    )
    if keep_session_id:
        statement = statement.where(UserSession.session_id != keep_session_id)
    result = await session.execute(statement.execution_options(synchronize_session=False))
    count = int(getattr(result, "rowcount", 0) or 0)
    if count:
        record_event(session, EventKind.SESSION_ENDED, account_id)
    return count
