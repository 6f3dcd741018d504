"""A data subject's billing records through their lifecycle (issue 10).

The subject is the payer account of orders (the filer of the cases). What billing holds
about them: orders, invoices and credit notes (issued to them or to the partner covering
their case), refunds, payment attempts and PSP notifications. No name and no card data
is stored here (BIL-06, invoices name the account id).

- Export (GDPR-01, GDPR-05): FHIR R4 ChargeItem (orders), Invoice (invoices and credit
  notes) and DocumentReference (the archived PDF, fetched with DownloadInvoice), live and
  archived records alike, validated with fhir.resources R4B.
- Archive (RET-02, RET-07): the rows move to `archived_records` (JSON) and leave the live
  tables, so every day-to-day path (GetOrder, ListInvoices, DownloadInvoice...) answers
  NOT_FOUND or nothing. The invoice PDFs stay in the WORM archive store: an invoice is
  archived only with its PDF rendered and stored (the renderer never sees archived rows).
  Invoices still unrendered are rendered first, each in its own short transaction
  (`render_pending_invoices`), and any issued meanwhile inside the archive's own
  transaction; if one cannot be rendered (store down, renderer failure) the archive is
  refused whole with UNAVAILABLE (retry: nothing was archived) and never written half.
  A crash in between loses nothing: a PDF stored by a transaction that then rolled back
  is adopted by the next rendering (write-once, same key), and archived invoice records
  left without their PDF (before this guard) are rendered by the invoice renderer.
  The archive also waits (UNAVAILABLE) for a refund still being carried out with the PSP.
- Restriction (GDPR-04): recorded; the archive rows of a restricted subject are marked.
- Purge / erasure (GDPR-03, BIL-09, RET-05): orders, invoices and refunds are accounting
  records kept 10 years (Code de commerce L123-22): archived if still live, RESTRICTED
  and reported as retained (ACCOUNTING_OBLIGATION); payment data older than 13 months is
  deleted, younger payment data is retained until its 13 months are over
  (PAYMENT_DISPUTE_PERIOD, L.133-24 CMF) and then goes with the daily age purge. Emails
  waiting in billing's outbox for the subject and satisfaction answers of their cases go.
  Billing holds no per-subject key: nothing is crypto-shredded here.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.domain.common import OrderStatus
from services.billing.domain.invoices import (
    Archive,
    DataLoss,
    archive_invoice,
    document_from_json,
    render_document,
    stored_or_put,
)
from services.billing.domain.retention import months_ago_13
from services.billing.models import (
    ArchivedRecord,
    Base,
    Invoice,
    LifecycleOperation,
    Order,
    OutboxEmail,
    PaymentAttempt,
    PspNotification,
    Refund,
    SatisfactionAnswer,
    SubjectRestriction,
)
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, Unavailable
from services.shared.objectstore import ObjectStoreError

log = logging.getLogger(__name__)
ACCOUNTING = ("orders", "invoices", "refunds")
PAYMENT_DATA = ("payment_attempts", "psp_notifications")
PAYMENT_DATA_MONTHS = 13
REFUND_PSP_FIELDS = ("psp_transaction_id", "psp_call_number", "psp_authorization", "psp_error_code")
OPEN_ORDER = (OrderStatus.AWAITING_PAYMENT.value,)
PENDING = "pending"  # a payment attempt or a refund waiting for the PSP


class LegalBasis(StrEnum):
    ACCOUNTING_OBLIGATION = "accounting_obligation"
    PAYMENT_DISPUTE_PERIOD = "payment_dispute_period"


def check_subject(subject_id: str) -> str:
    if not subject_id or len(subject_id) > 36 or not subject_id.isprintable():
        raise InvalidArgument("subject_id is required (an account id)")
    return subject_id


def _plus_13_months(at: datetime) -> datetime:
    year, month = divmod(at.month - 1 + PAYMENT_DATA_MONTHS, 12)
    return at.replace(year=at.year + year, month=month + 1, day=min(at.day, 28))


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _row_json(row: Base) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        data[column.key] = _aware(value).isoformat() if isinstance(value, datetime) else value
    return data


@dataclass
class Holdings:
    """The subject's live billing rows."""

    orders: list[Order]
    invoices: list[Invoice]
    refunds: list[Refund]
    attempts: list[PaymentAttempt]
    notifications: list[PspNotification]

    @property
    def order_ids(self) -> list[str]:
        return [o.order_id for o in self.orders]


async def live_holdings(session: AsyncSession, subject_id: str) -> Holdings:
    order_list = list(
        (
            await session.scalars(
                select(Order).where(Order.payer_account_id == subject_id).order_by(Order.created_at)
            )
        ).all()
    )
    ids = [o.order_id for o in order_list]
    invoice_list = list(
        (
            await session.scalars(
                select(Invoice)
                .where(or_(Invoice.order_id.in_(ids), Invoice.recipient_account_id == subject_id))
                .order_by(Invoice.issued_at, Invoice.invoice_number)
            )
        ).all()
    )
    refund_list = list((await session.scalars(select(Refund).where(Refund.order_id.in_(ids)))).all())
    attempt_list = list(
        (await session.scalars(select(PaymentAttempt).where(PaymentAttempt.order_id.in_(ids)))).all()
    )
    attempt_ids = [a.payment_attempt_id for a in attempt_list]
    notification_list = list(
        (
            await session.scalars(
                select(PspNotification).where(PspNotification.payment_attempt_id.in_(attempt_ids))
            )
        ).all()
    )
    return Holdings(order_list, invoice_list, refund_list, attempt_list, notification_list)


async def archived_rows(session: AsyncSession, subject_id: str) -> list[ArchivedRecord]:
    return list(
        (
            await session.scalars(
                select(ArchivedRecord)
                .where(ArchivedRecord.subject_id == subject_id)
                .order_by(ArchivedRecord.record_at, ArchivedRecord.record_id)
            )
        ).all()
    )


async def subject_case_ids(session: AsyncSession, subject_id: str) -> list[str]:
    """The case ids of the subject's orders, live or archived (the lifecycle worker hands
    them to services that know cases by id only, such as matching)."""
    live = set(
        (await session.scalars(select(Order.case_id).where(Order.payer_account_id == subject_id))).all()
    )
    for row in await archived_rows(session, subject_id):
        if row.category == "orders":
            live.add(str(row.payload["case_id"]))
    return sorted(live)


def _counts(rows: Sequence[ArchivedRecord]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for row in rows:
        counts[row.category] += 1
    return dict(counts)


# ---------------------------------------------------------------- export (FHIR R4)


def _money(cents: Any, currency: Any) -> dict[str, Any]:
    return {"value": int(cents) / 100, "currency": str(currency)}


def _charge_item(order: dict[str, Any], subject_id: str) -> dict[str, Any]:
    status = {
        OrderStatus.AWAITING_PAYMENT.value: "billable",
        OrderStatus.CANCELLED.value: "aborted",
    }.get(str(order["status"]), "billed")
    return {
        "resourceType": "ChargeItem",
        "id": order["order_id"],
        "identifier": [{"system": "urn:secondopinion:order-reference", "value": order["order_reference"]}],
        "status": status,
        "code": {
            "coding": [{"system": "urn:secondopinion:purpose", "code": order["purpose"]}],
            "text": "Second medical opinion",
        },
        "subject": {"reference": f"Patient/{subject_id}"},
        "enteredDate": order["created_at"],
        "priceOverride": _money(order["total_amount_cents"], order["currency"]),
        "quantity": {"value": int(order["doctor_count"])},
        "note": [{"text": f"order status: {order['status']}; funding: {order['funding_source'] or 'none'}"}],
    }


def _invoice(invoice: dict[str, Any], subject_id: str) -> dict[str, Any]:
    recipient = (
        {"reference": f"Patient/{subject_id}"}
        if invoice["recipient_account_id"] == subject_id
        else {"reference": f"Organization/{invoice['recipient_partner_id']}"}
        if invoice["recipient_partner_id"]
        else {"display": "platform"}
    )
    lines = [
        {
            "sequence": n,
            "chargeItemCodeableConcept": {
                "coding": [{"system": "urn:secondopinion:billing-line", "code": str(line["wording_code"])}]
            },
            "priceComponent": [
                {"type": "base", "amount": _money(line["total_amount_cents"], invoice["currency"])},
                {"type": "tax", "amount": _money(line["vat_amount_cents"], invoice["currency"])},
            ],
        }
        for n, line in enumerate(invoice["lines"], start=1)
    ]
    resource: dict[str, Any] = {
        "resourceType": "Invoice",
        "id": invoice["invoice_id"],
        "identifier": [{"system": "urn:secondopinion:invoice-number", "value": invoice["invoice_number"]}],
        "status": "issued",
        "type": {"coding": [{"system": "urn:secondopinion:invoice-kind", "code": invoice["kind"]}]},
        "subject": {"reference": f"Patient/{subject_id}"},
        "recipient": recipient,
        "date": invoice["issued_at"],
        "totalGross": _money(invoice["total_amount_cents"], invoice["currency"]),
    }
    if lines:
        resource["lineItem"] = lines
    return resource


def _invoice_document(invoice: dict[str, Any], subject_id: str) -> dict[str, Any]:
    # The PDF's hash exists once it is rendered (the export renders live invoices first).
    sha256 = invoice.get("sha256_hex") or ""
    identifier = [{"system": "urn:secondopinion:sha256", "value": sha256}] if sha256 else []
    return {
        "resourceType": "DocumentReference",
        "id": f"invoice-pdf-{invoice['invoice_id']}",
        **({"identifier": identifier} if identifier else {}),
        "status": "current",
        "type": {"coding": [{"system": "urn:secondopinion:document-purpose", "code": "invoice"}]},
        "subject": {"reference": f"Patient/{subject_id}"},
        "date": invoice["issued_at"],
        "context": {"related": [{"reference": f"Invoice/{invoice['invoice_id']}"}]},
        "content": [
            {
                "attachment": {
                    "contentType": "application/pdf",
                    "title": f"{invoice['invoice_number']}.pdf",
                    "url": f"urn:secondopinion:invoice:{invoice['invoice_id']}",
                }
            }
        ],
    }


async def unrendered_invoice_ids(session: AsyncSession, subject_id: str) -> list[str]:
    """The subject's live invoices whose PDF is not rendered yet (an export renders them
    first, so it carries every document and its hash)."""
    held = await live_holdings(session, subject_id)
    return [i.invoice_id for i in held.invoices if i.archived_at is None]


async def export_subject(
    session: AsyncSession, subject_id: str, at: datetime
) -> tuple[dict[str, Any], list[str]]:
    """The bundle and the invoice ids whose documents the export carries."""
    held = await live_holdings(session, subject_id)
    orders = [_row_json(o) for o in held.orders]
    invoices = [_row_json(i) for i in held.invoices]
    for row in await archived_rows(session, subject_id):
        if row.category == "orders":
            orders.append(dict(row.payload))
        elif row.category == "invoices":
            invoices.append(dict(row.payload))
    resources: list[dict[str, Any]] = []
    for order in orders:
        resources.append(_charge_item(order, subject_id))
    for invoice in invoices:
        resources.append(_invoice(invoice, subject_id))
        resources.append(_invoice_document(invoice, subject_id))
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": "urn:secondopinion:export:billing", "value": subject_id},
        "timestamp": _aware(at).isoformat(),
    }
    if resources:
        bundle["entry"] = [
            {"fullUrl": f"urn:secondopinion:{r['resourceType']}:{r['id']}", "resource": r} for r in resources
        ]
    validate_bundle(bundle)
    return bundle, [str(i["invoice_id"]) for i in invoices]


def validate_bundle(bundle: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)


# ---------------------------------------------------------------- archive and restriction


async def render_for_archive(
    session: AsyncSession, archive: Archive, invoice_id: str, outcome: str = "nothing was archived"
) -> None:
    """Renders and stores one invoice's PDF (write-once) in the caller's transaction, so
    that the invoice can be archived (or exported). Any failure is UNAVAILABLE (retry
    later; `outcome` tells the caller what was not done), except an invoice with no
    document data at all (DATA_LOSS, which no retry fixes)."""
    try:
        rendered = await archive_invoice(session, archive, invoice_id, wait=True)
    except DataLoss:
        log.error("invoice cannot be rendered for archiving", extra={"fields": {"invoice_id": invoice_id}})
        raise
    except Unavailable:
        raise Unavailable(
            f"the PDF of invoice {invoice_id} could not be stored in the archive yet; {outcome}: retry later"
        ) from None
    except Exception as exc:  # a renderer failure: nothing is archived without its PDF
        log.error(
            "invoice not rendered for archiving", exc_info=exc, extra={"fields": {"invoice_id": invoice_id}}
        )
        raise Unavailable(
            f"the PDF of invoice {invoice_id} could not be rendered; {outcome}: retry later"
        ) from None
    if rendered is not None and rendered.archived_at is None:
        raise Unavailable(f"the PDF of invoice {invoice_id} is not archived yet; {outcome}: retry later")


async def render_pending_invoices(
    sessions: async_sessionmaker[AsyncSession],
    archive: Archive,
    subject_id: str,
    outcome: str = "nothing was archived",
) -> int:
    """Before an export, an archive or a purge: each live invoice of the subject still
    without its PDF is rendered and stored now, one short transaction each (the archive's
    own transaction then only checks, and renders what was issued meanwhile)."""
    async with sessions() as session:
        pending = await unrendered_invoice_ids(session, subject_id)
    for invoice_id in pending:
        async with sessions.begin() as session:
            await render_for_archive(session, archive, invoice_id, outcome)
    return len(pending)


async def archive_subject(session: AsyncSession, archive: Archive, subject_id: str) -> dict[str, int]:
    """RET-02 / RET-07: the subject's rows move to the archive table, out of every
    day-to-day path; what the archive holds for the subject is returned. Every invoice
    moved has its PDF in the WORM store: one still unrendered is rendered here, and if
    that fails the whole archive is refused (UNAVAILABLE) with nothing written."""
    accounting_retention = archive.retention
    held = await live_holdings(session, subject_id)
    if any(o.status in OPEN_ORDER for o in held.orders) and any(a.status == PENDING for a in held.attempts):
        raise FailedPrecondition("a payment is in progress: it must end before the records are archived")
    if any(r.status == PENDING for r in held.refunds):
        # Archived, it would never be carried out (nor its payer told): it ends first.
        raise Unavailable("a refund is being carried out with the PSP: retry once it is done")
    unrendered = [i.invoice_id for i in held.invoices if i.archived_at is None]
    if unrendered:
        for invoice_id in unrendered:
            await render_for_archive(session, archive, invoice_id)
        held = await live_holdings(session, subject_id)
        if any(i.archived_at is None for i in held.invoices):
            raise Unavailable("an invoice of the subject is not rendered yet; nothing was archived: retry")
    now = utcnow()
    restriction = await session.get(SubjectRestriction, subject_id)
    restricted_at = restriction.restricted_at if restriction is not None else None

    def keep(category: str, record_id: str, record_at: datetime, row: Base) -> None:
        record_at = _aware(record_at)
        until = record_at + accounting_retention if category in ACCOUNTING else _plus_13_months(record_at)
        session.add(
            ArchivedRecord(
                record_id=record_id,
                subject_id=subject_id,
                category=category,
                record_at=record_at,
                retain_until=until,
                archived_at=now,
                restricted_at=restricted_at,
                payload=_row_json(row),
            )
        )

    for order in held.orders:
        keep("orders", order.order_id, order.created_at, order)
    for invoice in held.invoices:
        keep("invoices", invoice.invoice_id, invoice.issued_at, invoice)
    for refund in held.refunds:
        keep("refunds", refund.refund_id, refund.created_at, refund)
    for attempt in held.attempts:
        keep("payment_attempts", attempt.payment_attempt_id, attempt.created_at, attempt)
    for notification in held.notifications:
        keep("psp_notifications", notification.notification_id, notification.received_at, notification)
    await session.flush()
    # Children first (foreign keys to orders).
    for model, column, ids in (
        (PspNotification, PspNotification.notification_id, [n.notification_id for n in held.notifications]),
        (Refund, Refund.refund_id, [r.refund_id for r in held.refunds]),
        (PaymentAttempt, PaymentAttempt.payment_attempt_id, [a.payment_attempt_id for a in held.attempts]),
        (Invoice, Invoice.invoice_id, [i.invoice_id for i in held.invoices]),
        (Order, Order.order_id, held.order_ids),
    ):
        if ids:
            await session.execute(delete(model).where(column.in_(ids)))
    # Sent emails of the outbox are a delivery log: they go (the amounts stay on the invoices).
    await session.execute(
        delete(OutboxEmail).where(OutboxEmail.account_id == subject_id, OutboxEmail.sent_at.is_not(None))
    )
    return _counts(await archived_rows(session, subject_id))


async def unrendered_archived_invoice_ids(session: AsyncSession, limit: int = 50) -> list[str]:
    """Archived invoice records without their PDF's hash: archived, before the archive
    rendered pending invoices first, while their PDF was still to be rendered."""
    sha256 = ArchivedRecord.payload["sha256_hex"].as_string()
    rows = await session.scalars(
        select(ArchivedRecord.record_id)
        .where(ArchivedRecord.category == "invoices", or_(sha256.is_(None), sha256 == ""))
        .order_by(ArchivedRecord.record_at, ArchivedRecord.record_id)
        .limit(limit)
    )
    return list(rows)


async def render_archived_invoice(session: AsyncSession, archive: Archive, record_id: str) -> bool:
    """Renders and stores (write-once, adopting a copy already stored) the PDF of an
    archived invoice record that has none, and records its hash in the record; True when
    this call did it. The record is locked meanwhile (PostgreSQL): another process skips it."""
    row = await session.scalar(
        select(ArchivedRecord)
        .where(ArchivedRecord.record_id == record_id, ArchivedRecord.category == "invoices")
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    if row is None or row.payload.get("sha256_hex"):
        return False
    payload = dict(row.payload)
    document = payload.get("document")
    if not isinstance(document, dict):
        raise DataLoss("the archived invoice has neither its PDF nor its document data")
    content = await render_document(document_from_json(document), payload.get("format") == "factur_x")
    issued_at = _aware(datetime.fromisoformat(str(payload["issued_at"])))
    try:
        stored = await stored_or_put(archive, str(payload["archive_key"]), issued_at, content)
    except ObjectStoreError as exc:
        log.warning(
            "archived invoice not rendered yet",
            extra={"fields": {"invoice_id": record_id, "error": type(exc).__name__}},
        )
        raise Unavailable("the archive store is unavailable: retry in a moment") from None
    payload.update(
        sha256_hex=hashlib.sha256(stored).hexdigest(),
        archive_locked=archive.locks,
        archived_at=utcnow().isoformat(),
    )
    row.payload = payload
    await session.flush()
    log.warning("archived invoice rendered late", extra={"fields": {"invoice_id": record_id}})
    return True


async def restrict_subject(
    session: AsyncSession, subject_id: str, rights_request_id: str, restricted: bool
) -> dict[str, int]:
    """GDPR-04: kept, not otherwise processed (or released)."""
    now = utcnow()
    current = await session.get(SubjectRestriction, subject_id, with_for_update=True)
    if restricted and current is None:
        session.add(
            SubjectRestriction(subject_id=subject_id, restricted_at=now, rights_request_id=rights_request_id)
        )
    elif not restricted and current is not None:
        await session.delete(current)
    await session.execute(
        update(ArchivedRecord)
        .where(ArchivedRecord.subject_id == subject_id)
        .values(restricted_at=now if restricted else None)
    )
    await session.flush()
    held = await live_holdings(session, subject_id)
    counts = {
        "orders": len(held.orders),
        "invoices": len(held.invoices),
        "refunds": len(held.refunds),
        "payment_attempts": len(held.attempts),
        "psp_notifications": len(held.notifications),
    }
    for category, count in _counts(await archived_rows(session, subject_id)).items():
        counts[category] = counts.get(category, 0) + count
    return {name: count for name, count in counts.items() if count}


# ---------------------------------------------------------------- purge


@dataclass(frozen=True, slots=True)
class RetainedItem:
    category: str
    count: int
    legal_basis: LegalBasis
    retained_until: datetime


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    purged: dict[str, int]
    retained: list[RetainedItem]


async def purge_subject(session: AsyncSession, archive: Archive, subject_id: str) -> PurgeOutcome:
    """GDPR-03 / BIL-09 / RET-05: what the law lets go, goes; the rest is archived (with
    every invoice's PDF, as `archive_subject`), restricted and listed with its legal basis."""
    case_ids = await subject_case_ids(session, subject_id)
    await archive_subject(session, archive, subject_id)
    now = utcnow()
    cutoff = months_ago_13(now)
    purged: dict[str, int] = defaultdict(int)
    rows = await archived_rows(session, subject_id)
    gone: list[str] = []
    for row in rows:
        if row.category in PAYMENT_DATA and _aware(row.record_at) < cutoff:
            gone.append(row.record_id)
            purged[row.category] += 1
        elif row.category == "refunds" and _aware(row.record_at) < cutoff:
            payload = dict(row.payload)
            if any(payload.get(name) for name in REFUND_PSP_FIELDS):
                for name in REFUND_PSP_FIELDS:
                    payload[name] = ""
                row.payload = payload
                purged["refund_psp_references"] += 1
    if gone:
        await session.execute(delete(ArchivedRecord).where(ArchivedRecord.record_id.in_(gone)))
    await session.execute(
        update(ArchivedRecord)
        .where(ArchivedRecord.subject_id == subject_id, ArchivedRecord.restricted_at.is_(None))
        .values(restricted_at=now)
    )
    outbox = await session.execute(delete(OutboxEmail).where(OutboxEmail.account_id == subject_id))
    if int(outbox.rowcount):  # type: ignore[attr-defined]
        purged["outbox_emails"] += int(outbox.rowcount)  # type: ignore[attr-defined]
    if case_ids:
        answers = await session.execute(
            delete(SatisfactionAnswer).where(SatisfactionAnswer.case_id.in_(case_ids))
        )
        if int(answers.rowcount):  # type: ignore[attr-defined]
            purged["satisfaction_answers"] += int(answers.rowcount)  # type: ignore[attr-defined]
    await session.flush()
    kept: dict[tuple[str, LegalBasis], list[datetime]] = defaultdict(list)
    for row in await archived_rows(session, subject_id):
        basis = (
            LegalBasis.ACCOUNTING_OBLIGATION
            if row.category in ACCOUNTING
            else LegalBasis.PAYMENT_DISPUTE_PERIOD
        )
        kept[(row.category, basis)].append(_aware(row.retain_until))
    retained = [
        RetainedItem(category, len(untils), basis, max(untils))
        for (category, basis), untils in sorted(kept.items())
    ]
    return PurgeOutcome(dict(purged), retained)


async def record_operation(
    session: AsyncSession, operation: str, subject_id: str, outcome: dict[str, Any]
) -> str:
    """Keeps a step's outcome (counts, dates, legal bases) for the idempotent replay."""
    now = utcnow()
    row = LifecycleOperation(
        operation_id=str(uuid.uuid4()),
        operation=operation,
        subject_id=subject_id,
        done_at=now,
        outcome={**outcome, "at": now.isoformat()},
    )
    session.add(row)
    await session.flush()
    return row.operation_id


async def operation_outcome(session: AsyncSession, operation_id: str) -> dict[str, Any]:
    row = await session.get(LifecycleOperation, operation_id)
    assert row is not None, "a recorded lifecycle step has its outcome"
    return dict(row.outcome)
