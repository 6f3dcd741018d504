"""Sessions: opaque random tokens stored hashed, idle and absolute timeouts."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.models import Account, UserSession
from services.shared.db import utcnow
from services.shared.errors import Unauthenticated

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


@dataclass(frozen=True, slots=True)
class ValidSession:
    session_id: str
    account: Account


async def open_session(session: AsyncSession, account_id: str) -> OpenedSession:
    """Called once a login has passed every factor (login flow: issue 3)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    now = utcnow()
    record = UserSession(
        session_id=str(uuid.uuid4()),
        account_id=account_id,
        token_hash=hash_token(token),
        created_at=now,
        last_seen_at=now,
        ended_at=None,
    )
    session.add(record)
    await session.flush()
    return OpenedSession(session_id=record.session_id, token=token)


async def validate_session(session: AsyncSession, token: str, policy: SessionPolicy) -> ValidSession:
    """One answer for every failure, so a caller learns nothing about why."""
    refused = Unauthenticated("session is not valid")
    if not token or len(token) > 256:
        raise refused
    record = await session.scalar(select(UserSession).where(UserSession.token_hash == hash_token(token)))
    now = utcnow()
    if record is None or record.ended_at is not None:
        raise refused
    if now - record.last_seen_at > policy.idle_timeout or now - record.created_at > policy.absolute_timeout:
        raise refused
    account = await session.get(Account, record.account_id)
    if account is None or account.status != "active":
        raise refused
    # Touching the row on every request would make each API call a write; the idle clock
    # only needs minute precision.
    if now - record.last_seen_at > LAST_SEEN_PRECISION:
        record.last_seen_at = now
    return ValidSession(session_id=record.session_id, account=account)
