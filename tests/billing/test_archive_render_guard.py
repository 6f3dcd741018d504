"""An invoice is archived (retention, erasure) only with its PDF in the WORM store, even
when its PDF was still to be rendered after the numbering commit (BIL-09, RET-02, RET-05):

- ArchiveSubject and PurgeSubject render the subject's pending invoices first, each in a
  short transaction, and the archive's own transaction renders any issued meanwhile;
- if a PDF cannot be rendered or stored, the archive is refused whole with UNAVAILABLE
  (retryable: the lifecycle worker retries it) and nothing is archived; the retry with
  the same idempotency key then archives everything with its PDF;
- a PDF stored by an attempt that died before its commit is adopted (write-once), and an
  archived invoice record left without its PDF (before this guard) gets it from the
  invoice renderer;
- a refund still being carried out with the PSP holds the archive back (UNAVAILABLE).

On SQLite and PostgreSQL, with a billing process whose background renderer is off (what
a process dying right after the numbering commit leaves behind)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2 as pb
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.app import build_context
from services.billing.background import InvoiceRenderer
from services.billing.domain import invoices as invoice_domain
from services.billing.domain import lifecycle, refunds
from services.billing.models import ArchivedRecord, Invoice
from services.billing.psp.sandbox import SUCCESS_CARD
from services.shared.db import create_engine, session_factory
from services.shared.errors import Unavailable
from services.shared.objectstore import ObjectStore, ObjectStoreError, StoredObject
from tests.billing.conftest import Env, eventually, expect_status, new_order, pay_in_sandbox, record_mandate
from tests.billing.test_deferred_rendering_and_sweep import other_billing, sql
from tests.support.databases import service_database

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclasses.dataclass
class Subject:
    env: Env
    archive_dir: Path
    sessions: async_sessionmaker[AsyncSession]
    payer: str
    order: pb.Order
    attempt_id: str
    invoice_ids: list[str]


@asynccontextmanager
async def unrendered_subject(env: Env, tmp_path: Path) -> AsyncIterator[Subject]:
    """A payer with a paid order whose invoices are numbered but not rendered (a billing
    process without a background renderer, on its own database and archive)."""
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        archive_dir = tmp_path / "archive"
        changes = {
            "database_url": url,
            "archive_dir": archive_dir,
            "payment_sweep_interval_seconds": 0,
            "invoice_render_interval_seconds": 0,
        }
        async with other_billing(env, **changes) as lone:
            lone = dataclasses.replace(lone, database_url=url)
            engine = create_engine(url)
            try:
                payer = await lone.sign_up()
                doctor = await record_mandate(lone)
                order = await new_order(lone, payer=payer)
                attempt_id, _ = await pay_in_sandbox(lone, order, SUCCESS_CARD)
                await eventually(lambda: any(r.order.order_id == order.order_id for r in lone.relay.results))
                issued = (
                    await lone.billing(lone.tokens("worker")).IssueInvoices(
                        pb.IssueInvoicesRequest(
                            idempotency_key=f"inv-{order.order_id}",
                            order_id=order.order_id,
                            doctor_ids=[doctor.doctor_id],
                        )
                    )
                ).invoices
                assert len(issued) == 2 and not any(i.sha256_hex for i in issued)
                yield Subject(
                    lone,
                    archive_dir,
                    session_factory(engine),
                    payer,
                    order,
                    attempt_id,
                    [i.invoice_id for i in issued],
                )
            finally:
                await engine.dispose()


async def archived_invoices(subject: Subject) -> dict[str, dict[str, Any]]:
    async with subject.sessions() as session:
        rows = await session.scalars(
            select(ArchivedRecord).where(
                ArchivedRecord.subject_id == subject.payer, ArchivedRecord.category == "invoices"
            )
        )
        return {row.record_id: dict(row.payload) for row in rows}


async def live_invoices(subject: Subject) -> dict[str, datetime | None]:
    async with subject.sessions() as session:
        rows = await session.scalars(select(Invoice).where(Invoice.order_id == subject.order.order_id))
        return {row.invoice_id: row.archived_at for row in rows}


def stored_file(subject: Subject, key: str) -> Path:
    return subject.archive_dir / key


def assert_archived_with_pdfs(subject: Subject, archived: dict[str, dict[str, Any]]) -> None:
    """Every archived invoice record names a PDF present in the WORM store, with its hash."""
    assert set(archived) == set(subject.invoice_ids)
    for payload in archived.values():
        assert payload["archived_at"] and len(payload["sha256_hex"]) == 64 and payload["archive_locked"]
        path = stored_file(subject, payload["archive_key"])
        content = path.read_bytes()
        assert content.startswith(b"%PDF")
        assert hashlib.sha256(content).hexdigest() == payload["sha256_hex"]
        # Write-once: kept for the accounting retention.
        retention = json.loads(path.with_name(path.name + ".retention.json").read_text())
        assert datetime.fromisoformat(retention["retain_until"]) > datetime.fromisoformat(
            payload["issued_at"]
        )


class DownStore:
    """An archive store that cannot be reached."""

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, retain_until: datetime | None = None
    ) -> Any:
        raise ObjectStoreError("the store is down")

    async def get(self, key: str) -> AsyncIterator[bytes]:
        raise ObjectStoreError("the store is down")
        yield b""  # pragma: no cover - an async generator

    async def delete(self, key: str) -> None:
        raise ObjectStoreError("the store is down")

    async def exists(self, key: str) -> bool:
        raise ObjectStoreError("the store is down")


class DyingStore:
    """Stores the first document, then the process 'dies' (before its transaction commits)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.stored: dict[str, bytes] = {}

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, retain_until: datetime | None = None
    ) -> StoredObject:
        content = b"".join([chunk async for chunk in chunks])
        self.stored[key] = content
        await self._store.put(key, invoice_domain._one_chunk(content), retain_until=retain_until)
        raise RuntimeError("the process died right after storing the PDF")

    def get(self, key: str) -> AsyncIterator[bytes]:
        return self._store.get(key)

    async def delete(self, key: str) -> None:
        await self._store.delete(key)

    async def exists(self, key: str) -> bool:
        return await self._store.exists(key)


@pytest.mark.req("BIL-09")
@pytest.mark.req("RET-02")
@pytest.mark.req("RET-07")
async def test_archiving_a_subject_renders_the_pdfs_still_pending_first(env: Env, tmp_path: Path) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        assert set((await live_invoices(subject)).values()) == {None}
        worker = subject.env.billing(subject.env.tokens("worker"))
        archived = await worker.ArchiveSubject(
            pb.ArchiveSubjectRequest(idempotency_key=f"archive-{subject.payer}", subject_id=subject.payer)
        )
        assert {c.category: c.count for c in archived.archived}["invoices"] == 2
        assert await live_invoices(subject) == {}
        assert_archived_with_pdfs(subject, await archived_invoices(subject))


@pytest.mark.req("BIL-09")
@pytest.mark.req("RET-02")
async def test_an_archive_whose_pdf_cannot_be_rendered_is_refused_whole_and_succeeds_on_retry(
    env: Env, tmp_path: Path
) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        # The store cannot take the PDFs (a file stands where their folder goes).
        blocker = subject.archive_dir / "invoices"
        blocker.write_text("not a folder")
        worker = subject.env.billing(subject.env.tokens("worker"))
        request = pb.ArchiveSubjectRequest(
            idempotency_key=f"archive-{subject.payer}", subject_id=subject.payer
        )
        details = await expect_status(worker.ArchiveSubject(request), UNAVAILABLE)
        assert "nothing was archived" in details and "retry" in details
        # Nothing half-written: every row is still live, none archived, no PDF recorded.
        assert await archived_invoices(subject) == {}
        assert set((await live_invoices(subject)).values()) == {None}
        kept = await worker.GetOrder(pb.GetOrderRequest(order_id=subject.order.order_id))
        assert kept.order.status == pb.ORDER_STATUS_PAID
        # The store is back: the same request (same key) archives everything, with its PDFs.
        blocker.unlink()
        archived = await worker.ArchiveSubject(request)
        assert {c.category: c.count for c in archived.archived}["invoices"] == 2
        assert await live_invoices(subject) == {}
        assert_archived_with_pdfs(subject, await archived_invoices(subject))


@pytest.mark.req("BIL-09")
@pytest.mark.req("RET-02")
async def test_the_archive_transaction_renders_what_is_pending_and_recovers_a_pdf_stored_before_a_crash(
    env: Env, tmp_path: Path
) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        archive = (await build_context(subject.env.settings, lambda: None)).archive
        # No pre-pass here (an invoice issued after it): the archive's own transaction
        # renders. The store is down: refused, nothing archived.
        down = dataclasses.replace(archive, store=DownStore())
        with pytest.raises(Unavailable, match="nothing was archived"):
            async with subject.sessions.begin() as session:
                await lifecycle.archive_subject(session, down, subject.payer)
        assert await archived_invoices(subject) == {}
        assert set((await live_invoices(subject)).values()) == {None}
        # The process dies right after storing a PDF, before its transaction commits.
        dying = DyingStore(archive.store)
        with pytest.raises(Unavailable):
            async with subject.sessions.begin() as session:
                await lifecycle.archive_subject(
                    session, dataclasses.replace(archive, store=dying), subject.payer
                )
        ((key, first_copy),) = dying.stored.items()
        assert stored_file(subject, key).read_bytes() == first_copy
        assert await archived_invoices(subject) == {}
        assert set((await live_invoices(subject)).values()) == {None}
        # The next archive adopts the stored copy (write-once) and renders the other.
        async with subject.sessions.begin() as session:
            counts = await lifecycle.archive_subject(session, archive, subject.payer)
        assert counts["invoices"] == 2
        archived = await archived_invoices(subject)
        assert_archived_with_pdfs(subject, archived)
        (adopted,) = [p for p in archived.values() if p["archive_key"] == key]
        assert adopted["sha256_hex"] == hashlib.sha256(first_copy).hexdigest()


@pytest.mark.req("BIL-09")
@pytest.mark.req("RET-05")
@pytest.mark.req("GDPR-03")
async def test_a_purge_waits_for_a_pending_refund_and_keeps_every_invoice_with_its_pdf(
    env: Env, tmp_path: Path
) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        worker = subject.env.billing(subject.env.tokens("worker"))
        # A refund the PSP has not answered yet: archived, it would never be carried out.
        async with subject.sessions.begin() as session:
            refund_id = await refunds.reserve_duplicate_refund(
                session, subject.order.order_id, subject.attempt_id
            )
        request = pb.PurgeSubjectRequest(
            idempotency_key=f"purge-{subject.payer}",
            subject_id=subject.payer,
            rights_request_id=str(uuid.uuid4()),
        )
        details = await expect_status(worker.PurgeSubject(request), UNAVAILABLE)
        assert "refund" in details
        await expect_status(
            worker.ArchiveSubject(
                pb.ArchiveSubjectRequest(idempotency_key=f"archive-{subject.payer}", subject_id=subject.payer)
            ),
            UNAVAILABLE,
        )
        assert await archived_invoices(subject) == {}
        # Once the PSP answered (here: refused), the purge goes through; the pending
        # invoices were rendered first (the purge's pre-pass), and are retained.
        await sql(subject.env, "UPDATE refunds SET status = 'failed' WHERE refund_id = :id", id=refund_id)
        purged = await worker.PurgeSubject(request)
        retained = {item.category: item for item in purged.retained}
        assert retained["invoices"].count == 2
        assert retained["invoices"].legal_basis == pb.RETENTION_LEGAL_BASIS_ACCOUNTING_OBLIGATION
        assert await live_invoices(subject) == {}
        assert_archived_with_pdfs(subject, await archived_invoices(subject))


@pytest.mark.req("BIL-09")
@pytest.mark.req("GDPR-01")
async def test_an_export_renders_pending_invoices_and_carries_their_hash(env: Env, tmp_path: Path) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        exported = await subject.env.billing(subject.env.tokens("worker")).ExportSubjectData(
            pb.ExportSubjectDataRequest(
                idempotency_key=f"export-{subject.payer}",
                subject_id=subject.payer,
                rights_request_id=str(uuid.uuid4()),
            )
        )
        assert sorted(exported.invoice_ids) == sorted(subject.invoice_ids)
        bundle = json.loads(exported.fhir_bundle_json)
        documents = [
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DocumentReference"
        ]
        assert len(documents) == 2 and all(len(d["identifier"][0]["value"]) == 64 for d in documents)
        assert None not in set((await live_invoices(subject)).values())


@pytest.mark.req("BIL-09")
@pytest.mark.req("RET-02")
async def test_the_renderer_gives_an_archived_invoice_left_without_its_pdf_one(
    env: Env, tmp_path: Path
) -> None:
    async with unrendered_subject(env, tmp_path) as subject:
        worker = subject.env.billing(subject.env.tokens("worker"))
        await worker.ArchiveSubject(
            pb.ArchiveSubjectRequest(idempotency_key=f"archive-{subject.payer}", subject_id=subject.payer)
        )
        # What an archive made before this guard could leave: a record with no PDF.
        damaged = subject.invoice_ids[0]
        async with subject.sessions.begin() as session:
            row = await session.get(ArchivedRecord, damaged)
            assert row is not None
            key = str(row.payload["archive_key"])
            row.payload = {**row.payload, "sha256_hex": "", "archived_at": None, "archive_locked": False}
        path = stored_file(subject, key)
        path.unlink()
        path.with_name(path.name + ".retention.json").unlink()
        async with subject.sessions() as session:
            assert await lifecycle.unrendered_archived_invoice_ids(session) == [damaged]
        archive = (await build_context(subject.env.settings, lambda: None)).archive
        # The store is down at first: nothing changes, the next pass tries again.
        down = InvoiceRenderer(subject.sessions, dataclasses.replace(archive, store=DownStore()), 30)
        assert await down.run_pass() == 0
        assert (await archived_invoices(subject))[damaged]["sha256_hex"] == ""
        renderer = InvoiceRenderer(subject.sessions, archive, 30)
        assert await renderer.run_pass() == 1
        assert_archived_with_pdfs(subject, await archived_invoices(subject))
        async with subject.sessions() as session:
            assert await lifecycle.unrendered_archived_invoice_ids(session) == []
        assert await renderer.run_pass() == 0
        # Asked again, it has nothing left to do.
        async with subject.sessions() as session:
            assert not await lifecycle.render_archived_invoice(session, archive, damaged)
