"""Matching tables: the referent-doctor registry."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class ReferentDoctor(Base):
    __tablename__ = "referent_doctors"

    doctor_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The doctor's identity account (strong authentication lives there).
    account_id: Mapped[str] = mapped_column(String(36), unique=True)
    rpps_number: Mapped[str] = mapped_column(String(11), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    languages: Mapped[list[str]] = mapped_column(JSON, default=list)
    max_concurrent_cases: Mapped[int] = mapped_column(Integer)
    current_load: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    areas: Mapped[list[DoctorArea]] = relationship(
        back_populates="doctor", cascade="all, delete-orphan", lazy="selectin", order_by="DoctorArea.area"
    )


class DoctorArea(Base):
    """One row per (doctor, therapeutic area): indexed lookups by area."""

    __tablename__ = "doctor_areas"

    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"), primary_key=True)
    area: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    doctor: Mapped[ReferentDoctor] = relationship(back_populates="areas")


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"
