"""Identity tables. Emails and phone numbers are personal data: they stay in this database."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class Account(Base):
    __tablename__ = "accounts"

    account_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    role: Mapped[str] = mapped_column(String(32))
    # Normalised login (NFKC + casefold): the uniqueness key against look-alike addresses.
    email_normalized: Mapped[str] = mapped_column(String(320), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    # E.164, for one-time codes.
    phone_number: Mapped[str] = mapped_column(String(20))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    # Argon2id; NULL while none is set (staff before enrolment, deactivated credentials).
    password_hash: Mapped[str | None] = mapped_column(String(256), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    declared_age: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rpps_number: Mapped[str | None] = mapped_column(String(11), nullable=True, unique=True)
    locale: Mapped[str] = mapped_column(String(8), default="fr")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    partner_id: Mapped[str] = mapped_column(String(64), default="")
    # ACC-07 counters, on the server, per account; only a completed login resets them.
    failed_login_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_code_count: Mapped[int] = mapped_column(Integer, default=0)
    # ACC-10: set by a breach flag or provisional credentials.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closure_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    closed_by_account_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    last_activity_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


# The retention sweep's keyset order (RET-02): clock, then id; pages stay index scans.
Index(
    "ix_accounts_retention_clock",
    func.coalesce(Account.last_activity_at, Account.created_at),
    Account.account_id,
)


class UserSession(Base):
    __tablename__ = "sessions"

    session_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    # SHA-256 of the opaque token: a database leak yields no usable session.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    authentication_method: Mapped[str] = mapped_column(String(40), default="")
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    step_up_valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)


class Challenge(Base):
    """A login attempt, a step-up or a password reset: the one-time code is bound to it."""

    __tablename__ = "challenges"

    challenge_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # login | step_up | reset | contact | email_change
    # NULL for the decoy attempts of unknown emails (never answerable).
    account_id: Mapped[str | None] = mapped_column(
        ForeignKey("accounts.account_id"), nullable=True, index=True
    )
    session_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    step_up_purpose: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # HMAC-SHA256(server key, challenge id + code): never the code itself.
    code_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    codes_sent: Mapped[int] = mapped_column(Integer, default=0)
    last_code_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Comma-separated SecondFactorKind names still due, in order.
    remaining_factors: Mapped[str] = mapped_column(String(200), default="")
    failed_codes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    # A pending phone change (purpose "contact"): the new E.164 number the code went to,
    # in force only once the code is confirmed. Purged with the account's challenges.
    pending_phone_number: Mapped[str | None] = mapped_column(String(20), nullable=True)
    # A pending email change (purpose "email_change"): the new address the code went to,
    # as typed, in force only once the code is confirmed. Purged likewise.
    pending_email: Mapped[str | None] = mapped_column(String(320), nullable=True)


class ResetLink(Base):
    """An emailed reset (or provisional-credentials) link; only its hash is kept."""

    __tablename__ = "reset_links"

    link_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # reset | provisional
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    redeemed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    challenge_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class TotpFactor(Base):
    __tablename__ = "totp_factors"

    factor_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    # AES-256-GCM of the base32 secret under a key derived from the server secret.
    secret_encrypted: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16))  # pending | active | removed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Last accepted time step: a TOTP code is accepted once.
    last_used_step: Mapped[int] = mapped_column(BigInteger, default=0)


class RecoveryCode(Base):
    __tablename__ = "recovery_codes"

    code_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Beneficiary(Base):
    __tablename__ = "beneficiaries"

    beneficiary_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    representative_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # minor | ward | mandator
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    birth_date: Mapped[str] = mapped_column(String(10))
    proof_document_id: Mapped[str] = mapped_column(String(64))
    minor_consent_mode: Mapped[str | None] = mapped_column(String(40), nullable=True)
    minor_consent_document_id: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    beneficiary_account_id: Mapped[str] = mapped_column(String(36), default="")


class Prospect(Base):
    __tablename__ = "prospects"

    prospect_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    referring_account_id: Mapped[str] = mapped_column(ForeignKey("accounts.account_id"), index=True)
    first_name: Mapped[str] = mapped_column(String(100))
    last_name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(320), default="")
    phone_number: Mapped[str] = mapped_column(String(20), default="")
    locale: Mapped[str] = mapped_column(String(8), default="fr")
    status: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # RET-01: the retention clock runs from the last invitation.
    last_invitation_sent_at: Mapped[datetime] = mapped_column(UTCDateTime())
    invitations_sent: Mapped[int] = mapped_column(Integer, default=1)
    # SHA-256 of the invitation token carried by the link.
    invitation_token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    account_id: Mapped[str | None] = mapped_column(String(36), nullable=True)


class LegalText(Base):
    __tablename__ = "legal_texts"
    __table_args__ = (
        UniqueConstraint("kind", "version", "locale", name="uq_legal_texts_kind_version_locale"),
    )

    text_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))
    version: Mapped[str] = mapped_column(String(40))
    locale: Mapped[str] = mapped_column(String(8))
    body: Mapped[str] = mapped_column(Text)
    sha256_hex: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime())


class EvidenceRecord(Base):
    """Append-only, hash-chained (CNS-05): never updated, never deleted by the service."""

    __tablename__ = "evidence_records"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    record_id: Mapped[str] = mapped_column(String(36), unique=True)
    account_id: Mapped[str] = mapped_column(String(36), index=True)
    beneficiary_id: Mapped[str] = mapped_column(String(36), default="")
    kind: Mapped[str] = mapped_column(String(40))
    text_id: Mapped[str] = mapped_column(String(36), default="")
    text_kind: Mapped[str] = mapped_column(String(40), default="")
    text_version: Mapped[str] = mapped_column(String(40), default="")
    text_sha256_hex: Mapped[str] = mapped_column(String(64), default="")
    consent_kind: Mapped[str] = mapped_column(String(40), default="")
    objection_kind: Mapped[str] = mapped_column(String(40), default="")
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    authentication_method: Mapped[str] = mapped_column(String(40))
    session_id: Mapped[str] = mapped_column(String(36), default="")
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")
    recorded_by_account_id: Mapped[str] = mapped_column(String(36), default="")
    # Habilitation records (SEC-05): the kind granted or revoked.
    habilitation: Mapped[str] = mapped_column(String(32), default="")
    previous_hash_hex: Mapped[str] = mapped_column(String(64))
    record_hash_hex: Mapped[str] = mapped_column(String(64))


class EvidenceChainHead(Base):
    """One row: the last sequence and hash. Updating it first serialises appends."""

    __tablename__ = "evidence_chain_head"

    head_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    last_hash_hex: Mapped[str] = mapped_column(String(64))


class HabilitationGrant(Base):
    """A habilitation granted to a staff account (SEC-05, CASE-14). Never deleted: a
    revocation closes the row, so the table is the history; at most one open row per
    account and kind. The evidence chain records each grant and revocation too."""

    __tablename__ = "habilitations"
    __table_args__ = (
        Index(
            "uq_habilitations_active",
            "account_id",
            "kind",
            unique=True,
            sqlite_where=text("revoked_at IS NULL"),
            postgresql_where=text("revoked_at IS NULL"),
        ),
    )

    habilitation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # No foreign key: the record outlives a purged account, like the evidence chain.
    account_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(String(500))
    granted_by: Mapped[str] = mapped_column(String(36))
    granted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(36), default="")
    revocation_reason: Mapped[str] = mapped_column(String(500), default="")


class AuthenticationEvent(Base):
    """SEC-01 authentication log. Never holds a secret, a code, an email or a phone."""

    __tablename__ = "authentication_events"
    __table_args__ = (Index("ix_authentication_events_account_time", "account_id", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(36), default="")
    kind: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    session_id: Mapped[str] = mapped_column(String(36), default="")
    ip_address: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(512), default="")


class RightsRequestRecord(Base):
    """A data-subject rights request or complaint (GDPR-01 to GDPR-08). Free text and the
    named doctor are sealed with the subject's data key (gone with it at purge)."""

    __tablename__ = "rights_requests"
    __table_args__ = (Index("ix_rights_requests_received", "received_at"),)

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    kind: Mapped[str] = mapped_column(String(48))
    channel: Mapped[str] = mapped_column(String(32))
    identity_verification: Mapped[str] = mapped_column(String(40))
    identity_proof_document_id: Mapped[str] = mapped_column(String(64), default="")
    recorded_by_account_id: Mapped[str] = mapped_column(String(36), default="")
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    due_at: Mapped[datetime] = mapped_column(UTCDateTime())
    extended_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    extension_months: Mapped[int] = mapped_column(Integer, default=0)
    extension_reason: Mapped[str] = mapped_column(String(32), default="")
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    outcome: Mapped[str] = mapped_column(String(40), default="")
    answer_document_id: Mapped[str] = mapped_column(String(64), default="")
    sealed_details: Mapped[str] = mapped_column(Text, default="")
    # RET-06: archived 5 years after the request (then out of day-to-day reach).
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LegalHoldRecord(Base):
    """While a hold is active (released_at NULL) every retention clock of the subject stops."""

    __tablename__ = "legal_holds"

    legal_hold_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    reason: Mapped[str] = mapped_column(String(32))
    external_reference: Mapped[str] = mapped_column(String(128), default="")
    placed_by_account_id: Mapped[str] = mapped_column(String(36))
    placed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    released_by_account_id: Mapped[str] = mapped_column(String(36), default="")
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SubjectKey(Base):
    """A subject's data key, wrapped by the service key. Deleting the row shreds every
    ciphertext sealed with it (archives, rights-request details)."""

    __tablename__ = "subject_keys"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    wrapped_key: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SubjectLifecycle(Base):
    """Archive and purge state of a subject. The archive holds the subject's personal data
    sealed with its data key; the purge report lists counts only (no personal data)."""

    __tablename__ = "subject_lifecycle"
    __table_args__ = (Index("ix_subject_lifecycle_stage_archived", "stage", "archived_at"),)

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_kind: Mapped[str] = mapped_column(String(16))
    stage: Mapped[str] = mapped_column(String(16))
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    archive_reason: Mapped[str] = mapped_column(String(32), default="")
    sealed_archive: Mapped[str] = mapped_column(Text, default="")
    # What the archive step moved (counts only, JSON).
    archive_report: Mapped[str] = mapped_column(Text, default="")
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    purge_report: Mapped[str] = mapped_column(Text, default="")


class ArchiveAccess(Base):
    """RET-07: every read of archived data, by whom, why."""

    __tablename__ = "archive_access_log"

    access_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    reader_account_id: Mapped[str] = mapped_column(String(36))
    purpose: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(128), default="")
    read_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"
