"""Notifications tables: the outbox with its delivery status, the development store.

A recipient address and the rendered message stay in `notifications` only while delivery
needs them; once the status is final (sent, failed, bounced) they are erased and only a
masked recipient and a keyed hash remain (rate limits, status, erasure requests).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"


class Notification(Base):
    """One message: the outbox row and, after delivery, its status record."""

    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_due", "status", "next_attempt_at"),
        Index("ix_notifications_rate", "recipient_hash", "template", "created_at"),
    )

    notification_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The service that asked for it (subject of its token): only it may read the status.
    caller: Mapped[str] = mapped_column(String(64))
    template: Mapped[str] = mapped_column(String(48))
    channel: Mapped[str] = mapped_column(String(8))
    locale: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Erased once delivery ended.
    recipient: Mapped[str | None] = mapped_column(String(320), nullable=True)
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    text_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    html_body: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Kept after delivery (until PurgeRecipientData).
    masked_recipient: Mapped[str] = mapped_column(String(64), default="")
    recipient_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Set while a delivery worker holds the message; expired leases are claimed again.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    delivery_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    # A code, never a server's free text (it may quote the address): "smtp_451", "timeout"...
    last_error: Mapped[str | None] = mapped_column(String(64), nullable=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class RateLimitLock(Base):
    """Rows locked to serialise the rate-limit check of one recipient (hash bucket)."""

    __tablename__ = "rate_limit_locks"

    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    touched_at: Mapped[datetime] = mapped_column(UTCDateTime())


class DevelopmentMessage(Base):
    """What the development channels delivered (never written in production)."""

    __tablename__ = "development_messages"

    notification_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    channel: Mapped[str] = mapped_column(String(8))
    template: Mapped[str] = mapped_column(String(48))
    recipient: Mapped[str] = mapped_column(String(320))
    recipient_hash: Mapped[str] = mapped_column(String(64), index=True)
    subject: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
