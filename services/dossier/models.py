"""Dossier tables. Case rows hold ids and codes; clinical text (form answers, notes,
messages, report bodies) is stored sealed (AES-256-GCM under the master key, see
`domain/crypto.py`) and documents live encrypted in the object store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, LargeBinary, String, UniqueConstraint
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
    # CASE-14: staff created it for the patient under the personal-assistant mandate.
    entered_under_mandate: Mapped[bool] = mapped_column(Boolean, default=False)
    entered_by_account_id: Mapped[str] = mapped_column(String(36), default="")
    # Review deadline as the case workflow set or extended it.
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Non-guessable reference shown to people and partners ("SO-7K3M-Q9TX").
    case_reference: Mapped[str] = mapped_column(String(20), unique=True)
    # Referent doctors asked (1, or more for a collegial opinion, CASE-13).
    requested_doctor_count: Mapped[int] = mapped_column(Integer, default=1)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # CASE-16: the treating physician's contact, sealed (name, RPPS, MSSante address).
    treating_physician_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    treating_physician_recorded_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # CNS-08: the patient objected to sending the report to the treating physician.
    report_sharing_opposed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # RET-02 / RET-07: out of day-to-day reach once archived; only the archive-read path sees it.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)
    # GDPR-04: processing restricted (kept, readable by the person, nothing else).
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Assignment(Base):
    """A referent doctor's assignment to a case; grants access while `ended_at` is null (DOC-02)."""

    __tablename__ = "assignments"

    assignment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    doctor_id: Mapped[str] = mapped_column(String(64))
    doctor_account_id: Mapped[str] = mapped_column(String(36), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str] = mapped_column(String(32), default="")


class DoctorOpposition(Base):
    """The patient opposed a doctor's access to a case (DOC-03); never lifted silently."""

    __tablename__ = "doctor_oppositions"
    __table_args__ = (UniqueConstraint("case_id", "doctor_id"),)

    opposition_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    doctor_id: Mapped[str] = mapped_column(String(64))
    opposed_by_account_id: Mapped[str] = mapped_column(String(36))
    opposed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AccessLogEntry(Base):
    """Append-only, hash-chained access log (SEC-01, SEC-02). Triggers refuse UPDATE/DELETE."""

    __tablename__ = "access_log"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor_account_id: Mapped[str] = mapped_column(String(64))
    actor_role: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    object_kind: Mapped[str] = mapped_column(String(16))
    object_id: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    # Whose data: the case's filer, and the beneficiary they act for (when any).
    subject_account_id: Mapped[str] = mapped_column(String(36), index=True)
    beneficiary_id: Mapped[str] = mapped_column(String(36), default="")
    purpose: Mapped[str] = mapped_column(String(32))
    previous_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AccessLogHead(Base):
    """One row: the last sequence and hash. Locking it serialises appends on every backend."""

    __tablename__ = "access_log_head"

    head_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))


class FormAnswers(Base):
    """One version of a case's answers to a form; submitted versions never change."""

    __tablename__ = "form_answers"
    __table_args__ = (UniqueConstraint("case_id", "kind", "version"),)

    form_answers_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    form_definition_id: Mapped[str] = mapped_column(String(80))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    answers_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    entered_by_account_id: Mapped[str] = mapped_column(String(36))
    entered_under_mandate: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Document(Base):
    """A document's metadata; the bytes are an encrypted object (`object_key`)."""

    __tablename__ = "documents"

    document_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    beneficiary_id: Mapped[str] = mapped_column(String(36), default="")
    purpose: Mapped[str] = mapped_column(String(32))
    file_name: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256_hex: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    source: Mapped[str] = mapped_column(String(32))
    uploaded_by_account_id: Mapped[str] = mapped_column(String(36))
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    replaces_document_id: Mapped[str] = mapped_column(String(36), default="")
    flag_reason: Mapped[str] = mapped_column(String(16), default="")
    received_by_post_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Empty once the object is destroyed (malware found).
    object_key: Mapped[str] = mapped_column(String(200), default="")
    # The data key wrapped by the master key (id and version); rotation rewrites only these.
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64))
    master_key_version: Mapped[int] = mapped_column(Integer)
    scan_signature: Mapped[str] = mapped_column(String(200), default="")
    scanned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Subject whose key wraps the data key (crypto-shredding); empty: wrapped by the master key.
    subject_key_id: Mapped[str] = mapped_column(String(36), default="")
    # Account-level proofs (no case) are archived with their owner.
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class CaseNotes(Base):
    """The free-text field (CASE-05); each save is a new version."""

    __tablename__ = "case_notes"
    __table_args__ = (UniqueConstraint("case_id", "version"),)

    notes_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    updated_by_account_id: Mapped[str] = mapped_column(String(36))
    entered_under_mandate: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Message(Base):
    """A message of a case's thread (CASE-06)."""

    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_case_sent", "case_id", "sent_at"),)

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36))
    sender_account_id: Mapped[str] = mapped_column(String(36))
    sender_role: Mapped[str] = mapped_column(String(32))
    kind: Mapped[str] = mapped_column(String(32))
    body_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    attachment_document_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    in_reply_to_message_id: Mapped[str] = mapped_column(String(36), default="")
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    hidden: Mapped[bool] = mapped_column(Boolean, default=False)


class ReadReceipt(Base):
    __tablename__ = "read_receipts"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AbuseReport(Base):
    """An abuse report in the staff queue (CASE-17)."""

    __tablename__ = "abuse_reports"

    abuse_report_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    target_kind: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[str] = mapped_column(String(36), default="")
    category: Mapped[str] = mapped_column(String(24))
    reported_by_account_id: Mapped[str] = mapped_column(String(36))
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(16), index=True)
    resolution: Mapped[str] = mapped_column(String(32), default="")
    resolved_by_account_id: Mapped[str] = mapped_column(String(36), default="")
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Report(Base):
    """An opinion report or addendum (DOC-04); sealed ones never change."""

    __tablename__ = "reports"

    report_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    parent_report_id: Mapped[str] = mapped_column(String(36), default="")
    author_doctor_id: Mapped[str] = mapped_column(String(64))
    author_account_id: Mapped[str] = mapped_column(String(36))
    status: Mapped[str] = mapped_column(String(16))
    body_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    attachment_document_id: Mapped[str] = mapped_column(String(36), default="")
    seal_sha256_hex: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    sealed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SubjectKey(Base):
    """A subject's data key (wrapped by the master key); it wraps the keys of the subject's
    new data. Deleting the row at purge time is the crypto-shredding."""

    __tablename__ = "subject_keys"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    master_key_id: Mapped[str] = mapped_column(String(64))
    master_key_version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SubjectPurge(Base):
    """What a purge removed and kept (the answer given again on a retry); objects still
    to delete when the store was unreachable at purge time."""

    __tablename__ = "subject_purges"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    purged_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rights_request_id: Mapped[str] = mapped_column(String(64), default="")
    report: Mapped[dict[str, object]] = mapped_column(JSON)
    pending_object_keys: Mapped[list[str]] = mapped_column(JSON, default=list)


class ReportShare(Base):
    """A sealed report sent to the treating physician (CASE-16), once per report."""

    __tablename__ = "report_shares"

    report_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    channel: Mapped[str] = mapped_column(String(32))
    channel_message_id: Mapped[str] = mapped_column(String(200))
    package_sha256_hex: Mapped[str] = mapped_column(String(64))
    shared_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SecureMessageOutbox(Base):
    """Development secure health-messaging channel: the package it 'sent', sealed."""

    __tablename__ = "secure_message_outbox"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(36), index=True)
    package_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    sent_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"
