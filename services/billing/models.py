"""Billing tables. Partners never receive health data (BIL-10): nothing clinical is stored here.

No card data either (BIL-06): the PSP's hosted page takes the card; we keep its
transaction id, authorisation number and error code, purged after 13 months (RET-05).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.shared.db import UTCDateTime, new_metadata
from services.shared.idempotency import IdempotencyRecordMixin


class Base(DeclarativeBase):
    metadata = new_metadata()


class Partner(Base):
    """An insurer, mutuelle, provident institution, professional branch or employer."""

    __tablename__ = "partners"

    partner_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class IdempotencyRecord(IdempotencyRecordMixin, Base):
    __tablename__ = "idempotency_records"


class PriceCatalog(Base):
    """A version of the price catalog; entries as JSON (immutable once published)."""

    __tablename__ = "price_catalogs"

    catalog_version: Mapped[str] = mapped_column(String(40), primary_key=True)
    effective_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime())
    entries: Mapped[list[dict[str, object]]] = mapped_column(JSON)


class PartnerAgreement(Base):
    __tablename__ = "partner_agreements"

    agreement_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.partner_id"), index=True)
    covered_purposes: Mapped[list[str]] = mapped_column(JSON)
    covered_therapeutic_areas: Mapped[list[str]] = mapped_column(JSON)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    quota: Mapped[int] = mapped_column(Integer)
    used_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CoverageCode(Base):
    """Only the code's SHA-256 is stored; the code is derived from a server secret."""

    __tablename__ = "coverage_codes"

    code_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    batch_id: Mapped[str] = mapped_column(String(36), index=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.partner_id"), index=True)
    agreement_id: Mapped[str] = mapped_column(ForeignKey("partner_agreements.agreement_id"))
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    usage: Mapped[str] = mapped_column(String(16))
    max_uses: Mapped[int] = mapped_column(Integer)
    use_count: Mapped[int] = mapped_column(Integer, default=0)
    issuer: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Order(Base):
    __tablename__ = "orders"

    order_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_reference: Mapped[str] = mapped_column(String(20), unique=True)
    # Opaque reference the partner sees instead of the case id (BIL-10).
    case_reference: Mapped[str] = mapped_column(String(20), unique=True)
    case_id: Mapped[str] = mapped_column(String(36), unique=True)
    payer_account_id: Mapped[str] = mapped_column(String(36), index=True)
    purpose: Mapped[str] = mapped_column(String(48))
    therapeutic_area: Mapped[str] = mapped_column(String(64))
    doctor_count: Mapped[int] = mapped_column(Integer)
    catalog_version: Mapped[str] = mapped_column(String(40))
    lines: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    total_amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(24))
    funding_source: Mapped[str] = mapped_column(String(24), default="")
    partner_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    agreement_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    coverage_code_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    refunded_amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PaymentAttempt(Base):
    """A hosted-payment attempt. Payment data: purged after 13 months (RET-05)."""

    __tablename__ = "payment_attempts"
    # The abandoned-attempt sweep finds pending attempts past their expiry by this index.
    __table_args__ = (Index("ix_payment_attempts_status_expires_at", "status", "expires_at"),)

    payment_attempt_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.order_id"), index=True)
    # PBX_CMD: the order reference and the attempt number, unique.
    psp_reference: Mapped[str] = mapped_column(String(40), unique=True)
    attempt_number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    locale: Mapped[str] = mapped_column(String(8))
    psp_transaction_id: Mapped[str | None] = mapped_column(String(40), nullable=True, unique=True)
    # NUMAPPEL: with the transaction id, names the capture in a refund (Paybox Direct).
    psp_call_number: Mapped[str] = mapped_column(String(40), default="")
    psp_authorization: Mapped[str] = mapped_column(String(20), default="")
    psp_error_code: Mapped[str] = mapped_column(String(10), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    captured_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    captured_amount_cents: Mapped[int] = mapped_column(BigInteger, default=0)
    # When the attempt was marked abandoned (no PSP answer before `expires_at`, or the PSP
    # said so); a late capture still moves it to captured.
    abandoned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class PspNotification(Base):
    """Every verified PSP message, once (by payload hash). Payment data (RET-05)."""

    __tablename__ = "psp_notifications"

    notification_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    payload_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    payment_attempt_id: Mapped[str] = mapped_column(String(36), index=True)
    psp_transaction_id: Mapped[str] = mapped_column(String(40), default="")
    error_code: Mapped[str] = mapped_column(String(10))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class BillingMandate(Base):
    __tablename__ = "billing_mandates"

    mandate_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[str] = mapped_column(String(36), index=True)
    doctor_account_id: Mapped[str] = mapped_column(String(36), index=True)
    # The name the doctor's invoices are issued in (a professional's name, not health data).
    doctor_legal_name: Mapped[str] = mapped_column(String(200), default="")
    covers_billing: Mapped[bool] = mapped_column(Boolean)
    covers_collection: Mapped[bool] = mapped_column(Boolean)
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    mandate_text_version: Mapped[str] = mapped_column(String(40))
    mandate_text_sha256_hex: Mapped[str] = mapped_column(String(64))
    signed_document_id: Mapped[str] = mapped_column(String(36))
    accepted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    invoice_number_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class InvoiceCounter(Base):
    """The last number issued in a series (issuer prefix and year); locked to number."""

    __tablename__ = "invoice_counters"

    series: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_number: Mapped[int] = mapped_column(Integer, default=0)


class Invoice(Base):
    """An issued invoice or credit note. Its content (number, parties, lines, amounts, and
    `document`, everything the PDF shows) never changes: a credit note corrects it. Only
    the archive reference is filled, once, when the document is rendered after the
    numbering transaction: `sha256_hex`, `archive_locked` and `archived_at` (NULL until then)."""

    __tablename__ = "invoices"
    __table_args__ = (
        UniqueConstraint("invoice_number", name="uq_invoices_invoice_number"),
        Index("ix_invoices_order_issuer", "order_id", "issuer_kind", "issuer_doctor_id", "kind"),
    )

    invoice_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    invoice_number: Mapped[str] = mapped_column(String(40))
    series: Mapped[str] = mapped_column(String(40))
    sequence: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    issuer_kind: Mapped[str] = mapped_column(String(32))
    issuer_doctor_id: Mapped[str] = mapped_column(String(36), default="")
    billing_mandate_id: Mapped[str] = mapped_column(String(36), default="")
    recipient_kind: Mapped[str] = mapped_column(String(16))
    recipient_account_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    recipient_partner_id: Mapped[str] = mapped_column(String(36), default="", index=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.order_id"), index=True)
    case_id: Mapped[str] = mapped_column(String(36))
    lines: Mapped[list[dict[str, object]]] = mapped_column(JSON)
    total_amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    format: Mapped[str] = mapped_column(String(16))
    archive_key: Mapped[str] = mapped_column(String(200))
    sha256_hex: Mapped[str] = mapped_column(String(64))
    archive_locked: Mapped[bool] = mapped_column(Boolean)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    corrects_invoice_id: Mapped[str] = mapped_column(String(36), default="")
    # Everything the rendered document shows, fixed at issue (documents.InvoiceDocument as
    # JSON); NULL for invoices rendered at issue before revision 0006.
    document: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)


class LedgerEntry(Base):
    """Append-only ledger of what was collected on a doctor's behalf (BIL-05)."""

    __tablename__ = "ledger_entries"

    entry_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[str] = mapped_column(String(36), index=True)
    order_id: Mapped[str] = mapped_column(String(36))
    invoice_id: Mapped[str] = mapped_column(String(36))
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class PayoutStatement(Base):
    __tablename__ = "payout_statements"
    __table_args__ = (UniqueConstraint("doctor_id", "period_start", "period_end", name="uq_payout_period"),)

    statement_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    doctor_id: Mapped[str] = mapped_column(String(36), index=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    collected_amount_cents: Mapped[int] = mapped_column(BigInteger)
    refunded_amount_cents: Mapped[int] = mapped_column(BigInteger)
    payout_amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    entry_count: Mapped[int] = mapped_column(Integer)
    generated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    archive_key: Mapped[str] = mapped_column(String(200))
    sha256_hex: Mapped[str] = mapped_column(String(64))


class PartnerCredential(Base):
    """A credential of the partner API: an API key (only its SHA-256 is stored, the key is
    256-bit random) or a client certificate for mutual TLS (the SHA-256 fingerprint of its
    DER encoding). A certificate is active for one partner at most; revoking it (setting
    `revoked_at`) removes it from the partner's allowed certificates."""

    __tablename__ = "partner_credentials"
    __table_args__ = (
        Index(
            "uq_partner_credentials_active_certificate",
            "certificate_sha256_fingerprint",
            unique=True,
            sqlite_where=text("kind = 'client_certificate' AND revoked_at IS NULL"),
            postgresql_where=text("kind = 'client_certificate' AND revoked_at IS NULL"),
        ),
    )

    credential_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    partner_id: Mapped[str] = mapped_column(ForeignKey("partners.partner_id"), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    api_key_prefix: Mapped[str] = mapped_column(String(16), default="")
    secret_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    certificate_sha256_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class SatisfactionAnswer(Base):
    """One answer per case; only aggregates ever leave (CASE-15). Purged after 3 years."""

    __tablename__ = "satisfaction_answers"

    case_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    partner_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    score: Mapped[int] = mapped_column(Integer)
    would_recommend: Mapped[bool] = mapped_column(Boolean)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class OutboxEmail(Base):
    """An email to send through the notifications service (ids and amounts only)."""

    __tablename__ = "email_outbox"

    outbox_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    template: Mapped[str] = mapped_column(String(32))
    account_id: Mapped[str] = mapped_column(String(36))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    invoice_number: Mapped[str] = mapped_column(String(40), default="")
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    notification_id: Mapped[str] = mapped_column(String(36), default="")


class Refund(Base):
    """A refund of (part of) a captured payment, or the cancellation of a covered order
    (amount 0, no PSP). Reserved (pending) before the PSP is asked, so a crash or a
    duplicate request never refunds twice; PSP fields are payment data (RET-05)."""

    __tablename__ = "refunds"

    refund_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    order_id: Mapped[str] = mapped_column(ForeignKey("orders.order_id"), index=True)
    # The caller's idempotency key: one refund per key, even under concurrent requests.
    request_key: Mapped[str] = mapped_column(String(200), unique=True)
    payment_attempt_id: Mapped[str] = mapped_column(String(36), default="")
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(48))
    status: Mapped[str] = mapped_column(String(16))
    # Paybox Direct NUMQUESTION and DATEQ: a re-sent request is the same question.
    psp_question_number: Mapped[int] = mapped_column(Integer, default=0)
    psp_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    psp_transaction_id: Mapped[str] = mapped_column(String(40), default="")
    psp_call_number: Mapped[str] = mapped_column(String(40), default="")
    psp_authorization: Mapped[str] = mapped_column(String(20), default="")
    psp_error_code: Mapped[str] = mapped_column(String(10), default="")
    # Whoever holds the claim until then talks to the PSP; others wait or resume after.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    credit_note_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ArchivedRecord(Base):
    """A subject's billing record moved out of day-to-day reach (issue 10, RET-02/RET-07).

    Orders, invoices and refunds are accounting records kept 10 years (BIL-09); payment
    data (attempts, PSP notifications) 13 months from its own date (RET-05). After an
    erasure request the rows stay here, restricted (`restricted_at`), until `retain_until`.
    """

    __tablename__ = "archived_records"
    __table_args__ = (Index("ix_archived_records_category_record_at", "category", "record_at"),)

    record_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    # orders | invoices | refunds | payment_attempts | psp_notifications
    category: Mapped[str] = mapped_column(String(32))
    # The record's own date (order creation, invoice issue, payment attempt, ...).
    record_at: Mapped[datetime] = mapped_column(UTCDateTime())
    retain_until: Mapped[datetime] = mapped_column(UTCDateTime())
    archived_at: Mapped[datetime] = mapped_column(UTCDateTime())
    restricted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    payload: Mapped[dict[str, object]] = mapped_column(JSON)


class SubjectRestriction(Base):
    """GDPR-04: a subject whose billing data is restricted (kept, not otherwise processed)."""

    __tablename__ = "subject_restrictions"

    subject_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    restricted_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rights_request_id: Mapped[str] = mapped_column(String(36), default="")


class LifecycleOperation(Base):
    """The outcome of a lifecycle step (archive, restriction, purge: counts, dates and legal
    bases only), so a retried call answers exactly as the first one did."""

    __tablename__ = "lifecycle_operations"

    operation_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    operation: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    done_at: Mapped[datetime] = mapped_column(UTCDateTime())
    outcome: Mapped[dict[str, Any]] = mapped_column(JSON)


class ArchiveAccessLogEntry(Base):
    """RET-07: every attempt at a subject's archived billing records (reads and refusals):
    who, in which role, for which legal reason and matter, with what outcome. Append-only
    (the database refuses UPDATE and DELETE) and hash-chained (each entry carries the
    previous entry's hash; `archive_access_log_head` orders the appends)."""

    __tablename__ = "archive_access_log"

    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    access_id: Mapped[str] = mapped_column(String(36), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    subject_id: Mapped[str] = mapped_column(String(36), index=True)
    reader_account_id: Mapped[str] = mapped_column(String(64))
    reader_role: Mapped[str] = mapped_column(String(32))
    # litigation | regulator_inquiry | rights_request | "" (none given)
    purpose: Mapped[str] = mapped_column(String(32))
    reference: Mapped[str] = mapped_column(String(128))
    # granted | denied | invalid | not_found
    outcome: Mapped[str] = mapped_column(String(16))
    # Archived records returned (0 unless granted).
    record_count: Mapped[int] = mapped_column(Integer)
    previous_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class ArchiveAccessLogHead(Base):
    """One row: the archive access log's last sequence and hash (locked by each append)."""

    __tablename__ = "archive_access_log_head"

    head_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sequence: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(64))
