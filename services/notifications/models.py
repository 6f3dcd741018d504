"""Notifications tables (the outbox and delivery statuses arrive with issue 4)."""

from __future__ import annotations

from sqlalchemy.orm import DeclarativeBase

from services.shared.db import new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"
