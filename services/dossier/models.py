"""Dossier tables. Case rows hold ids and codes; clinical content lives in forms and documents."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class Case(Base):
    """An opinion request."""

    __tablename__ = "cases"

    case_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    filer_account_id: Mapped[str] = mapped_column(String(36), index=True)
    filing_capacity: Mapped[str] = mapped_column(String(40))
    # The person the request is for when it is not the filer (minor, ward, mandator).
    beneficiary_id: Mapped[str] = mapped_column(String(36), default="")
    therapeutic_area: Mapped[str] = mapped_column(String(64))
    purpose: Mapped[str] = mapped_column(String(40))
    doctor_choice_mode: Mapped[str] = mapped_column(String(20))
    chosen_doctor_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    assigned_doctor_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    # As reported by the case workflow.
    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"
