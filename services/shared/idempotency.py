"""Idempotency keys for side-effecting RPCs: the first result is stored and returned again
for a retry; the same key with other parameters is refused. Each service keeps the records
in its own database through a model built on `IdempotencyRecordMixin`."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy import String
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from services.shared.db import UTCDateTime, utcnow
from services.shared.errors import Aborted, FailedPrecondition, InvalidArgument

MAX_KEY_LENGTH = 200


class IdempotencyRecordMixin:
    idempotency_key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), primary_key=True)
    operation: Mapped[str] = mapped_column(String(64))
    # SHA-256 of the request without its key: detects a key reused with other parameters.
    request_hash: Mapped[str] = mapped_column(String(64))
    result_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


def request_fingerprint(request: Message) -> str:
    copy = type(request)()
    copy.CopyFrom(request)
    if "idempotency_key" in copy.DESCRIPTOR.fields_by_name:
        copy.ClearField("idempotency_key")
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


def check_key(key: str) -> str:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidArgument(f"idempotency_key is required (1 to {MAX_KEY_LENGTH} printable characters)")
    return key


async def _recall(
    session: AsyncSession, model: type[IdempotencyRecordMixin], key: str, operation: str, fingerprint: str
) -> str | None:
    record = await session.get(model, key)
    if record is None:
        return None
    if record.operation != operation or record.request_hash != fingerprint:
        raise FailedPrecondition("idempotency_key was already used with different parameters")
    return record.result_id


async def run_once(
    sessions: async_sessionmaker[AsyncSession],
    model: type[IdempotencyRecordMixin],
    request: Message,
    operation: str,
    action: Callable[[AsyncSession], Awaitable[str]],
) -> tuple[str, bool]:
    """Run `action` in one transaction with the key's record; return (result id, replayed)."""
    key = check_key(getattr(request, "idempotency_key", ""))
    fingerprint = request_fingerprint(request)
    try:
        async with sessions.begin() as session:
            previous = await _recall(session, model, key, operation, fingerprint)
            if previous is not None:
                return previous, True
            result_id = await action(session)
            session.add(
                model(  # type: ignore[call-arg]
                    idempotency_key=key,
                    operation=operation,
                    request_hash=fingerprint,
                    result_id=result_id,
                    created_at=utcnow(),
                )
            )
        return result_id, False
    except IntegrityError as exc:
        # A concurrent request won the race; its result is the answer (or the action's own
        # unique constraint fired: the caller may retry and get the precise error).
        async with sessions() as session:
            previous = await _recall(session, model, key, operation, fingerprint)
        if previous is not None:
            return previous, True
        raise Aborted("a concurrent request changed the same data; retry") from exc
