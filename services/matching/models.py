"""Matching tables: the referent-doctor registry, absences, offers, assignments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class ReferentDoctor(Base):
    __tablename__ = "referent_doctors"
    __table_args__ = (
        CheckConstraint("max_concurrent_cases >= 1", name="capacity_positive"),
        CheckConstraint("current_load >= 0", name="load_not_negative"),
        CheckConstraint("pending_offer_count >= 0", name="pending_not_negative"),
    )

    doctor_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # The doctor's identity account (strong authentication lives there).
    account_id: Mapped[str] = mapped_column(String(36), unique=True)
    rpps_number: Mapped[str] = mapped_column(String(11), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    max_concurrent_cases: Mapped[int] = mapped_column(Integer)
    # Active assignments; changed only by conditional UPDATEs (accept / release).
    current_load: Mapped[int] = mapped_column(Integer, default=0)
    # Offers waiting for the doctor's answer; counted as load when the platform picks.
    pending_offer_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Median acceptance-to-delivery time of the last 90 days, refreshed at each completion.
    median_turnaround_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    areas: Mapped[list[DoctorArea]] = relationship(
        back_populates="doctor", cascade="all, delete-orphan", lazy="selectin", order_by="DoctorArea.area"
    )
    language_rows: Mapped[list[DoctorLanguage]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="DoctorLanguage.language"
    )
    sub_specialty_rows: Mapped[list[DoctorSubSpecialty]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="DoctorSubSpecialty.code"
    )

    @property
    def area_codes(self) -> list[str]:
        return [row.area for row in self.areas]

    @property
    def languages(self) -> list[str]:
        return [row.language for row in self.language_rows]

    @property
    def sub_specialties(self) -> list[str]:
        return [row.code for row in self.sub_specialty_rows]


class DoctorArea(Base):
    """One row per (doctor, therapeutic area): indexed lookups by area."""

    __tablename__ = "doctor_areas"

    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"), primary_key=True)
    area: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    doctor: Mapped[ReferentDoctor] = relationship(back_populates="areas")


class DoctorLanguage(Base):
    """One row per (doctor, BCP 47 language tag)."""

    __tablename__ = "doctor_languages"

    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(35), primary_key=True, index=True)


class DoctorSubSpecialty(Base):
    """One row per (doctor, sub-specialty code of the catalog)."""

    __tablename__ = "doctor_sub_specialties"

    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"), primary_key=True)
    code: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class Absence(Base):
    """A period a doctor is away: [starts_at, ends_at)."""

    __tablename__ = "absences"
    __table_args__ = (
        CheckConstraint("ends_at > starts_at", name="ends_after_start"),
        Index("ix_absences_doctor_id_ends_at", "doctor_id", "ends_at"),
    )

    absence_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CaseSlots(Base):
    """How many doctors a case needs and how many accepted: the guard against surplus accepts."""

    __tablename__ = "case_slots"
    __table_args__ = (
        CheckConstraint("doctors_needed >= 1", name="needed_positive"),
        CheckConstraint("assigned_count >= 0", name="assigned_not_negative"),
    )

    case_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    doctors_needed: Mapped[int] = mapped_column(Integer)
    assigned_count: Mapped[int] = mapped_column(Integer, default=0)


class Offer(Base):
    """A case offered to a doctor; a doctor is offered a given case at most once."""

    __tablename__ = "offers"
    __table_args__ = (
        UniqueConstraint("case_id", "doctor_id", name="uq_offers_case_id_doctor_id"),
        Index("ix_offers_doctor_id_status", "doctor_id", "status"),
        Index("ix_offers_created_at_offer_id", "created_at", "offer_id"),
    )

    offer_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(64), index=True)
    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"))
    therapeutic_area: Mapped[str] = mapped_column(String(64))
    # pending | accepted | declined | expired | withdrawn
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    respond_by: Mapped[datetime] = mapped_column(UTCDateTime())
    review_deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decline_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Assignment(Base):
    """A doctor assigned to a case, from an accepted offer."""

    __tablename__ = "assignments"
    __table_args__ = (
        Index("ix_assignments_doctor_id_released_at", "doctor_id", "released_at"),
        Index("ix_assignments_deadline_at_assignment_id", "deadline_at", "assignment_id"),
    )

    assignment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(64), index=True)
    doctor_id: Mapped[str] = mapped_column(ForeignKey("referent_doctors.doctor_id"))
    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.offer_id"), unique=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    deadline_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # completed | cancelled | reassigned | opposed_by_patient
    release_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Reassignment(Base):
    """A reassignment step, its outcome kept so a retried call answers the same."""

    __tablename__ = "reassignments"

    reassignment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(64), index=True)
    released_assignment_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    # The proposal or the "no one available" answer (ids, codes and dates only).
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"


class LifecycleOperation(Base):
    """The outcome of a lifecycle step (archive, restriction, purge: counts, dates and legal
    bases only), so a retried call answers exactly as the first one did."""

    __tablename__ = "lifecycle_operations"

    operation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    operation: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON)
