"""Invoices and credit notes (BIL-04, BIL-08, BIL-09), the collection ledger (BIL-05).

Numbers are sequential without gaps per series (an issuer and a year): the counter row
is locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises writers) and moves in
the same transaction as the invoice row, so a rolled-back issue leaves no hole and two
concurrent issues never share a number. That transaction is short: it writes the invoice
row with a snapshot of everything its document shows (`Invoice.document`), never changed
afterwards. The document is rendered after commit (`archive_invoice`: by the background
renderer, or on demand when someone downloads it first) and archived write-once with its
SHA-256; only then are the row's archive fields filled, once. A process dying between
commit and rendering loses nothing: the renderer's next pass (at start, then every
interval) renders every invoice still without its archived copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import uuid
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.documents import (
    DocumentLine,
    InvoiceDocument,
    Party,
    render_facturx,
    render_invoice_pdf,
)
from services.billing.domain.common import FundingSource, LineKind, OrderStatus, vat_included
from services.billing.domain.mandates import mandate_in_force
from services.billing.domain.orders import order_lines
from services.billing.domain.outbox import enqueue_email
from services.billing.domain.prices import PriceLine
from services.billing.models import BillingMandate, Invoice, InvoiceCounter, LedgerEntry, Order, Partner
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, ServiceError, Unavailable
from services.shared.objectstore import ObjectLockedError, ObjectNotFoundError, ObjectStore, ObjectStoreError

log = logging.getLogger(__name__)
PLATFORM_PREFIX = "P"
CHUNK = 64 * 1024


class DataLoss(ServiceError):
    status = grpc.StatusCode.DATA_LOSS


@dataclass(frozen=True)
class Archive:
    store: ObjectStore
    retention: timedelta
    locks: bool
    platform: Party


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def next_number(session: AsyncSession, series: str) -> int:
    """Reserve the next number of a series inside the caller's transaction."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        await session.execute(
            pg_insert(InvoiceCounter).values(series=series, last_number=0).on_conflict_do_nothing()
        )
        counter = await session.scalar(
            select(InvoiceCounter).where(InvoiceCounter.series == series).with_for_update()
        )
        assert counter is not None
        counter.last_number += 1
        await session.flush()
        return counter.last_number
    await session.execute(
        sqlite_insert(InvoiceCounter).values(series=series, last_number=0).on_conflict_do_nothing()
    )
    number = await session.scalar(
        update(InvoiceCounter)
        .where(InvoiceCounter.series == series)
        .values(last_number=InvoiceCounter.last_number + 1)
        .returning(InvoiceCounter.last_number)
    )
    assert number is not None
    return int(number)


def series_of(prefix: str, at: datetime) -> str:
    return f"{prefix}-{at.year}"


def doc_lines(lines: list[PriceLine]) -> list[DocumentLine]:
    return [
        DocumentLine(
            line.wording_code,
            line.quantity,
            line.unit_amount_cents,
            line.total_amount_cents,
            line.vat_amount_cents,
            line.vat_rate_basis_points,
        )
        for line in lines
    ]


def document_json(document: InvoiceDocument) -> dict[str, Any]:
    data = asdict(document)
    data["issued_at"] = document.issued_at.isoformat()
    return data


def document_from_json(data: dict[str, Any]) -> InvoiceDocument:
    return InvoiceDocument(
        number=str(data["number"]),
        credit_note=bool(data["credit_note"]),
        issued_at=datetime.fromisoformat(str(data["issued_at"])),
        seller=Party(**data["seller"]),
        on_behalf_mention=str(data["on_behalf_mention"]),
        buyer=Party(**data["buyer"]),
        order_reference=str(data["order_reference"]),
        lines=[DocumentLine(**line) for line in data["lines"]],
        total_amount_cents=int(data["total_amount_cents"]),
        currency=str(data["currency"]),
        corrects_number=str(data.get("corrects_number", "")),
        paid=bool(data.get("paid", True)),
    )


@dataclass(frozen=True)
class _Draft:
    series: str
    issuer_kind: str
    mandate: BillingMandate | None
    lines: list[PriceLine]


async def _emit(
    session: AsyncSession,
    archive: Archive,
    order: Order,
    draft: _Draft,
    *,
    kind: str,
    recipient: Party,
    partner_id: str,
    issued_at: datetime,
    corrects: Invoice | None = None,
) -> Invoice:
    sequence = await next_number(session, draft.series)
    number = f"{draft.series}-{sequence:06d}"
    invoice_id = str(uuid.uuid4())
    credit = kind == "credit_note"
    total = sum(line.total_amount_cents for line in draft.lines)
    if draft.mandate is not None:
        seller = Party(
            draft.mandate.doctor_legal_name, [f"Médecin, identifiant plateforme {draft.mandate.doctor_id}"]
        )
        mention = (
            f"Facture émise par {archive.platform.name} au nom et pour le compte de "
            f"{draft.mandate.doctor_legal_name}, en vertu du mandat de facturation "
            f"{draft.mandate.mandate_id}."
        )
    else:
        seller = archive.platform
        mention = ""
    document = InvoiceDocument(
        number=number,
        credit_note=credit,
        issued_at=issued_at,
        seller=seller,
        on_behalf_mention=mention,
        buyer=recipient,
        order_reference=order.order_reference,
        lines=doc_lines(draft.lines),
        total_amount_cents=total,
        currency=order.currency,
        corrects_number=corrects.invoice_number if corrects else "",
        paid=order.funding_source == FundingSource.CARD.value,
    )
    factur_x = bool(partner_id)
    key = f"invoices/{draft.series}/{number}-{invoice_id}.pdf"
    invoice = Invoice(
        invoice_id=invoice_id,
        invoice_number=number,
        series=draft.series,
        sequence=sequence,
        kind=kind,
        issuer_kind=draft.issuer_kind,
        issuer_doctor_id=draft.mandate.doctor_id if draft.mandate else "",
        billing_mandate_id=draft.mandate.mandate_id if draft.mandate else "",
        recipient_kind="partner" if partner_id else "user",
        recipient_account_id="" if partner_id else order.payer_account_id,
        recipient_partner_id=partner_id,
        order_id=order.order_id,
        case_id=order.case_id,
        lines=[line.as_json() for line in draft.lines],
        total_amount_cents=total,
        currency=order.currency,
        format="factur_x" if factur_x else "pdf",
        archive_key=key,
        sha256_hex="",
        archive_locked=False,
        issued_at=issued_at,
        corrects_invoice_id=corrects.invoice_id if corrects else "",
        document=document_json(document),
        archived_at=None,
    )
    session.add(invoice)
    return invoice


async def _recipient(session: AsyncSession, order: Order) -> tuple[Party, str]:
    if order.funding_source == FundingSource.PARTNER_COVERAGE.value and order.partner_id:
        partner = await session.get(Partner, order.partner_id)
        assert partner is not None
        return Party(partner.name), partner.partner_id
    return Party(f"Client, compte {order.payer_account_id}"), ""


async def issue_invoices(
    session: AsyncSession, archive: Archive, order_id: str, doctor_ids: list[str]
) -> list[Invoice]:
    order = await session.get(Order, order_id) if order_id else None
    if order is None:
        raise NotFound("no such order")
    if order.status not in (OrderStatus.PAID.value, OrderStatus.COVERED.value):
        raise FailedPrecondition("only a paid or covered order is invoiced")
    existing = await session.scalar(
        select(func.count()).where(Invoice.order_id == order.order_id, Invoice.kind == "invoice")
    )
    if existing:
        raise FailedPrecondition("the order's invoices were already issued")
    if len(set(doctor_ids)) != len(doctor_ids) or len(doctor_ids) != order.doctor_count:
        raise InvalidArgument(f"doctor_ids must name the order's {order.doctor_count} distinct doctor(s)")
    now = utcnow()
    lines = order_lines(order)
    doctor_line = next(line for line in lines if line.kind == LineKind.DOCTOR_FEE.value)
    platform_line = next(line for line in lines if line.kind == LineKind.PLATFORM_FEE.value)
    drafts: list[_Draft] = []
    for doctor_id in doctor_ids:
        mandate = await mandate_in_force(session, doctor_id, now)
        if not mandate.covers_billing:
            raise FailedPrecondition("a doctor's mandate does not cover billing")
        unit = doctor_line.unit_amount_cents
        one = PriceLine(
            doctor_line.kind,
            doctor_line.wording_code,
            1,
            unit,
            unit,
            vat_included(unit, doctor_line.vat_rate_basis_points),
            doctor_line.vat_rate_basis_points,
            doctor_line.currency,
        )
        drafts.append(
            _Draft(series_of(mandate.invoice_number_prefix, now), "doctor_under_mandate", mandate, [one])
        )
    drafts.append(_Draft(series_of(PLATFORM_PREFIX, now), "platform", None, [platform_line]))
    # One lock order for every transaction: no deadlock between concurrent issues.
    drafts.sort(key=lambda draft: draft.series)
    recipient, partner_id = await _recipient(session, order)
    invoices = []
    source = "partner" if partner_id else "user_card"
    for draft in drafts:
        invoice = await _emit(
            session,
            archive,
            order,
            draft,
            kind="invoice",
            recipient=recipient,
            partner_id=partner_id,
            issued_at=now,
        )
        invoices.append(invoice)
        if draft.mandate is not None and draft.mandate.covers_collection:
            session.add(
                LedgerEntry(
                    entry_id=str(uuid.uuid4()),
                    doctor_id=draft.mandate.doctor_id,
                    order_id=order.order_id,
                    invoice_id=invoice.invoice_id,
                    source=source,
                    kind="collected",
                    amount_cents=invoice.total_amount_cents,
                    currency=invoice.currency,
                    occurred_at=order.settled_at or now,
                )
            )
    if not partner_id:
        platform_invoice = next(i for i in invoices if i.issuer_kind == "platform")
        await enqueue_email(
            session,
            f"invoice-available:{order.order_id}",
            "invoice_available",
            order.payer_account_id,
            order.total_amount_cents,
            order.currency,
            occurred_at=now,
            invoice_number=platform_invoice.invoice_number,
        )
    await session.flush()
    return invoices


async def issue_credit_note(
    session: AsyncSession, archive: Archive, invoice_id: str, amount_cents: int, currency: str
) -> Invoice:
    original = await session.get(Invoice, invoice_id) if invoice_id else None
    if original is None:
        raise NotFound("no such invoice")
    if original.kind != "invoice":
        raise FailedPrecondition("only an invoice can be corrected by a credit note")
    if currency != original.currency:
        raise InvalidArgument(f"currency must be {original.currency}, the invoice's")
    credited = -int(
        await session.scalar(
            select(func.coalesce(func.sum(Invoice.total_amount_cents), 0)).where(
                Invoice.corrects_invoice_id == original.invoice_id
            )
        )
        or 0
    )
    left = original.total_amount_cents - credited
    if amount_cents <= 0 or amount_cents > left:
        raise InvalidArgument(f"amount_cents must be between 1 and {left} (what is left to credit)")
    order = await session.get(Order, original.order_id)
    assert order is not None
    first = PriceLine.from_json(original.lines[0])
    rate = first.vat_rate_basis_points
    line = PriceLine(
        first.kind,
        first.wording_code,
        1,
        -amount_cents,
        -amount_cents,
        -vat_included(amount_cents, rate),
        rate,
        currency,
    )
    mandate = (
        await session.get(BillingMandate, original.billing_mandate_id)
        if original.billing_mandate_id
        else None
    )
    draft = _Draft(original.series, original.issuer_kind, mandate, [line])
    recipient = (
        Party((await session.get(Partner, original.recipient_partner_id)).name)  # type: ignore[union-attr]
        if original.recipient_partner_id
        else Party(f"Client, compte {original.recipient_account_id}")
    )
    now = utcnow()
    note = await _emit(
        session,
        archive,
        order,
        draft,
        kind="credit_note",
        recipient=recipient,
        partner_id=original.recipient_partner_id,
        issued_at=now,
        corrects=original,
    )
    if mandate is not None and mandate.covers_collection:
        session.add(
            LedgerEntry(
                entry_id=str(uuid.uuid4()),
                doctor_id=mandate.doctor_id,
                order_id=order.order_id,
                invoice_id=note.invoice_id,
                source="partner" if original.recipient_partner_id else "user_card",
                kind="refunded",
                amount_cents=-amount_cents,
                currency=currency,
                occurred_at=now,
            )
        )
    await session.flush()
    return note


_RENDER_POOL: list[ProcessPoolExecutor] = []


def _render(document: InvoiceDocument, factur_x: bool) -> bytes:
    return (render_facturx if factur_x else render_invoice_pdf)(document)


async def render_document(document: InvoiceDocument, factur_x: bool) -> bytes:
    """Renders in a worker process: rendering is CPU-bound pure Python, and in the
    service's own process it would hold the interpreter lock against the requests."""
    if not _RENDER_POOL:
        _RENDER_POOL.append(
            ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        )
    try:
        return await asyncio.get_running_loop().run_in_executor(_RENDER_POOL[0], _render, document, factur_x)
    except BrokenProcessPool:
        _RENDER_POOL.clear()  # the worker died: a new one next time
        return await asyncio.to_thread(_render, document, factur_x)


# One renderer at a time per invoice in this process (SQLite has no row locks; on
# PostgreSQL the invoice row's lock also keeps other processes out).
_RENDERING: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()


def _render_lock(invoice_id: str) -> asyncio.Lock:
    lock = _RENDERING.get(invoice_id)
    if lock is None:
        lock = asyncio.Lock()
        _RENDERING[invoice_id] = lock
    return lock


async def stored_or_put(archive: Archive, key: str, issued_at: datetime, content: bytes) -> bytes:
    """Stores the document write-once; when a copy is already there (a renderer died after
    storing it, before recording it), that copy is the archived one and is kept."""
    retain_until = issued_at + archive.retention
    if not await archive.store.exists(key):
        try:
            await archive.store.put(key, _one_chunk(content), retain_until=retain_until)
            return content
        except ObjectLockedError:
            pass  # stored meanwhile: adopt it
    return b"".join([chunk async for chunk in archive.store.get(key)])


async def archive_invoice(
    session: AsyncSession, archive: Archive, invoice_id: str, *, wait: bool = True
) -> Invoice | None:
    """Renders and archives one invoice's document if it is not yet, inside the caller's
    transaction (which should commit right after). The invoice row is locked meanwhile
    (PostgreSQL): `wait=False` skips an invoice another process is rendering (None), and
    `wait=True` waits for it. Returns the invoice with its archive fields filled."""
    async with _render_lock(invoice_id):
        query = (
            select(Invoice).where(Invoice.invoice_id == invoice_id).execution_options(populate_existing=True)
        )
        query = query.with_for_update(skip_locked=not wait)
        invoice = await session.scalar(query)
        if invoice is None or invoice.archived_at is not None:
            return invoice
        if invoice.document is None:
            raise DataLoss("the invoice has neither an archived copy nor its document data")
        content = await render_document(document_from_json(invoice.document), invoice.format == "factur_x")
        try:
            stored = await stored_or_put(archive, invoice.archive_key, invoice.issued_at, content)
        except ObjectStoreError as exc:
            log.warning(
                "invoice not archived yet",
                extra={"fields": {"invoice_id": invoice.invoice_id, "error": type(exc).__name__}},
            )
            raise Unavailable("the invoice is being prepared: retry in a moment") from None
        now = utcnow()
        await session.execute(
            update(Invoice)
            .where(Invoice.invoice_id == invoice.invoice_id, Invoice.archived_at.is_(None))
            .values(
                sha256_hex=hashlib.sha256(stored).hexdigest(), archive_locked=archive.locks, archived_at=now
            )
        )
        await session.flush()
        await session.refresh(invoice)
        log.info("invoice archived", extra={"fields": {"invoice_id": invoice.invoice_id}})
        return invoice


async def unarchived_invoice_ids(session: AsyncSession, limit: int = 50) -> list[str]:
    rows = await session.scalars(
        select(Invoice.invoice_id)
        .where(Invoice.archived_at.is_(None))
        .order_by(Invoice.issued_at, Invoice.invoice_number)
        .limit(limit)
    )
    return list(rows)


async def read_archived(archive: Archive, invoice: Invoice) -> bytes:
    """The archived document, checked against the hash recorded when it was archived."""
    if invoice.archived_at is None:
        raise Unavailable("the invoice is being prepared: retry in a moment")
    try:
        content = b"".join([chunk async for chunk in archive.store.get(invoice.archive_key)])
    except ObjectNotFoundError:
        raise DataLoss("the archived copy is missing") from None
    if hashlib.sha256(content).hexdigest() != invoice.sha256_hex:
        raise DataLoss("the archived copy failed its integrity check")
    return content


async def archived_copy(
    sessions: async_sessionmaker[AsyncSession], archive: Archive, invoice: Invoice
) -> tuple[Invoice, bytes]:
    """The invoice's archived document; one not rendered yet is rendered now (waiting for
    a renderer already at it), so a download never misses an issued invoice."""
    if invoice.archived_at is None:
        async with sessions.begin() as session:
            rendered = await archive_invoice(session, archive, invoice.invoice_id, wait=True)
        if rendered is None:
            raise NotFound("no such invoice")
        invoice = rendered
    return invoice, await read_archived(archive, invoice)


def chunks(content: bytes) -> list[bytes]:
    return [content[i : i + CHUNK] for i in range(0, len(content), CHUNK)]
