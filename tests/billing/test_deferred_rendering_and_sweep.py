"""Invoices numbered in a short transaction and rendered after commit (recovery of a
process that died in between), and the sweep of abandoned payment attempts with late
PSP answers honoured (a late capture pays the order, or is refunded as a duplicate)."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from secondopinion.billing.v1 import billing_pb2 as pb
from sqlalchemy import text

from services.billing.app import running
from services.billing.documents import render_invoice_pdf
from services.billing.domain import invoices as invoice_domain
from services.billing.domain import payments
from services.billing.models import Invoice
from services.billing.psp.sandbox import SUCCESS_CARD
from services.shared.db import create_engine, session_factory, utcnow
from services.shared.objectstore import LocalDirectoryStore
from tests.billing.conftest import (
    Env,
    eventually,
    new_order,
    pay_in_sandbox,
    pay_started,
    record_mandate,
)
from tests.billing.test_invoices_and_partners import archived_invoice, download
from tests.support.databases import service_database


async def sql(env: Env, statement: str, **params: Any) -> list[Any]:
    engine = create_engine(env.database_url)
    try:
        async with engine.begin() as connection:
            result = await connection.execute(text(statement), params)
            return list(result.fetchall()) if result.returns_rows else []
    finally:
        await engine.dispose()


@asynccontextmanager
async def other_billing(env: Env, **changes: Any) -> AsyncIterator[Env]:
    """Another billing process on the same database and archive as `env`'s copy of it."""
    settings = env.settings.model_copy(update=changes)
    async with running(settings, env.auth) as server:
        previous = env.relay.billing_target
        env.relay.billing_target = server.target  # the PSP's notifications reach this one
        try:
            yield dataclasses.replace(env, billing_target=server.target, settings=settings)
        finally:
            env.relay.billing_target = previous


@pytest.mark.req("BIL-08")
@pytest.mark.req("BIL-09")
async def test_invoices_numbered_by_a_process_that_died_before_rendering_are_rendered_later(
    env: Env, tmp_path: Path
) -> None:
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        archive_dir = tmp_path / "archive"
        common = {"database_url": url, "archive_dir": archive_dir, "payment_sweep_interval_seconds": 0}
        # A process with no renderer: its invoices are numbered and committed, nothing more
        # (what a process that dies right after the numbering commit leaves behind).
        async with other_billing(env, invoice_render_interval_seconds=0, **common) as first:
            doctors = [await record_mandate(first), await record_mandate(first)]
            order = await new_order(first, doctors=2)
            await pay_in_sandbox(first, order, SUCCESS_CARD)
            await eventually(lambda: bool(first.relay.results))
            worker = first.billing(first.tokens("worker"))
            issued = (
                await worker.IssueInvoices(
                    pb.IssueInvoicesRequest(
                        idempotency_key=f"inv-{order.order_id}",
                        order_id=order.order_id,
                        doctor_ids=[d.doctor_id for d in doctors],
                    )
                )
            ).invoices
            assert len(issued) == 3 and not any(i.sha256_hex for i in issued)
            assert [int(i.invoice_number.rsplit("-", 1)[1]) for i in issued] == [1, 1, 1]
            # Downloaded before rendering: rendered on demand, archived, then served.
            on_demand, content = await download(
                worker, pb.DownloadInvoiceRequest(invoice_id=issued[0].invoice_id)
            )
            assert content.startswith(b"%PDF") and hashlib.sha256(content).hexdigest() == on_demand.sha256_hex  # type: ignore[attr-defined]
            assert (
                await archived_invoice(worker, issued[0].invoice_id, within=0)
            ).sha256_hex == on_demand.sha256_hex  # type: ignore[attr-defined]
            assert not (await archived_invoice(worker, issued[1].invoice_id, within=0)).sha256_hex
        # The second invoice's document reached the archive but the process died before
        # recording it: the copy already stored is the one kept.
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                row = await session.get(Invoice, issued[1].invoice_id)
                assert row is not None and row.document is not None and row.archived_at is None
                stored = render_invoice_pdf(invoice_domain.document_from_json(row.document))
                await LocalDirectoryStore(archive_dir).put(
                    row.archive_key,
                    invoice_domain._one_chunk(stored),
                    retain_until=utcnow() + timedelta(days=1),
                )
        finally:
            await engine.dispose()
        # A process started later renders what is left, at start, without being asked.
        async with other_billing(env, invoice_render_interval_seconds=30, **common) as second:
            worker = second.billing(second.tokens("worker"))
            for invoice in issued:
                archived = await archived_invoice(worker, invoice.invoice_id)
                assert len(archived.sha256_hex) == 64 and archived.archive_locked
                assert archived.invoice_number == invoice.invoice_number
                _, content = await download(worker, pb.DownloadInvoiceRequest(invoice_id=invoice.invoice_id))
                assert hashlib.sha256(content).hexdigest() == archived.sha256_hex
                if invoice.invoice_id == issued[1].invoice_id:
                    assert content == stored
                if invoice.invoice_id == issued[0].invoice_id:
                    assert archived.sha256_hex == on_demand.sha256_hex  # type: ignore[attr-defined]


@pytest.mark.req("BIL-09")
async def test_concurrent_downloads_of_an_unrendered_invoice_archive_it_once(
    env: Env, tmp_path: Path
) -> None:
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        changes = {
            "database_url": url,
            "archive_dir": tmp_path / "archive",
            "payment_sweep_interval_seconds": 0,
            "invoice_render_interval_seconds": 0,
        }
        async with other_billing(env, **changes) as lone:
            doctor = await record_mandate(lone)
            order = await new_order(lone)
            await pay_in_sandbox(lone, order, SUCCESS_CARD)
            await eventually(lambda: any(r.order.order_id == order.order_id for r in lone.relay.results))
            worker = lone.billing(lone.tokens("worker"))
            issued = (
                await worker.IssueInvoices(
                    pb.IssueInvoicesRequest(
                        idempotency_key=f"inv-{order.order_id}",
                        order_id=order.order_id,
                        doctor_ids=[doctor.doctor_id],
                    )
                )
            ).invoices
            target = issued[0].invoice_id
            results = await asyncio.gather(
                *(download(worker, pb.DownloadInvoiceRequest(invoice_id=target)) for _ in range(6))
            )
            hashes = {m.sha256_hex for m, _ in results}  # type: ignore[attr-defined]
            assert len(hashes) == 1 and {hashlib.sha256(c).hexdigest() for _, c in results} == hashes


async def start_attempt(env: Env, order: pb.Order) -> pb.StartCardPaymentResponse:
    started: pb.StartCardPaymentResponse = await env.billing(env.tokens("gateway")).StartCardPayment(
        pb.StartCardPaymentRequest(
            idempotency_key=f"pay-{uuid.uuid4()}", order_id=order.order_id, locale="fr"
        )
    )
    return started


async def expire(env: Env, attempt_id: str) -> None:
    await sql(
        env,
        "UPDATE payment_attempts SET expires_at = :at WHERE payment_attempt_id = :id",
        at=utcnow() - timedelta(minutes=1),
        id=attempt_id,
    )


async def attempt_row(env: Env, attempt_id: str) -> tuple[str, Any]:
    rows = await sql(
        env, "SELECT status, abandoned_at FROM payment_attempts WHERE payment_attempt_id = :id", id=attempt_id
    )
    return rows[0][0], rows[0][1]


async def until_abandoned(env: Env, attempt_id: str) -> Any:
    for _ in range(100):
        status, at = await attempt_row(env, attempt_id)
        if status == "abandoned":
            return at
        await asyncio.sleep(0.1)
    raise AssertionError("the sweep did not mark the attempt abandoned")


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
async def test_the_sweep_marks_an_unanswered_attempt_abandoned_and_a_late_capture_still_pays(
    env: Env,
) -> None:
    order = await new_order(env)
    late = await start_attempt(env, order)
    await expire(env, late.payment_attempt_id)
    assert await until_abandoned(env, late.payment_attempt_id) is not None
    billing = env.billing(env.tokens("gateway"))
    status = await billing.GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id))
    assert status.payment_attempt.status == pb.PAYMENT_STATUS_ABANDONED
    assert status.order_status == pb.ORDER_STATUS_AWAITING_PAYMENT
    # The PSP confirms the capture after all: a real payment, the order is paid by it.
    before = len(env.relay.results)
    await pay_started(env, late, SUCCESS_CARD)
    await eventually(lambda: len(env.relay.results) > before)
    result = env.relay.results[-1]
    assert result.captured_now and result.payment_attempt.status == pb.PAYMENT_STATUS_CAPTURED
    assert result.order.status == pb.ORDER_STATUS_PAID
    assert (await attempt_row(env, late.payment_attempt_id))[0] == "captured"


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
async def test_a_late_capture_of_an_order_paid_meanwhile_is_refunded_as_a_duplicate(env: Env) -> None:
    order = await new_order(env)
    late = await start_attempt(env, order)
    await expire(env, late.payment_attempt_id)
    await until_abandoned(env, late.payment_attempt_id)
    # The patient pays again with a new attempt: the order is paid.
    before = len(env.relay.results)
    await pay_in_sandbox(env, order, SUCCESS_CARD)
    await eventually(lambda: len(env.relay.results) > before)
    assert env.relay.results[-1].order.status == pb.ORDER_STATUS_PAID
    # Then the first, abandoned attempt is captured after all: a duplicate payment.
    before = len(env.relay.results)
    await pay_started(env, late, SUCCESS_CARD)
    await eventually(lambda: len(env.relay.results) > before)
    duplicate = env.relay.results[-1]
    assert duplicate.captured_now and duplicate.payment_attempt.status == pb.PAYMENT_STATUS_CAPTURED
    transaction = duplicate.payment_attempt.psp_transaction_id
    # The sweep refunds it at the PSP, once; the order stays paid, no invoice is corrected.
    await eventually(lambda: any(t == transaction for t, _ in env.sandbox.refunds), within=15)
    await asyncio.sleep(1.0)  # a few more sweeps: still one refund
    assert [a for t, a in env.sandbox.refunds if t == transaction] == [order.total_amount_cents]
    refunds = await sql(
        env,
        "SELECT reason, status, amount_cents, payment_attempt_id, credit_note_ids FROM refunds"
        " WHERE order_id = :id",
        id=order.order_id,
    )
    assert len(refunds) == 1
    reason, status, amount, attempt_id, notes = refunds[0]
    assert (reason, status, amount, attempt_id) == (
        "duplicate_payment",
        "completed",
        order.total_amount_cents,
        late.payment_attempt_id,
    )
    assert notes in ([], "[]")
    kept = await env.billing(env.tokens("worker")).GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    assert kept.order.status == pb.ORDER_STATUS_PAID


@pytest.mark.req("BIL-06")
async def test_concurrent_sweeps_abandon_each_expired_attempt_once(env: Env) -> None:
    attempts = [(await start_attempt(env, await new_order(env))).payment_attempt_id for _ in range(12)]
    # Due only for sweeps that look a day ahead, so the service's own sweep leaves them.
    ahead = utcnow() + timedelta(days=1)
    engines = [create_engine(env.database_url) for _ in range(4)]
    try:

        async def sweep(engine: Any) -> list[str]:
            async with session_factory(engine).begin() as session:
                return await payments.abandon_expired(session, ahead, limit=5)

        async def sweep_all(engine: Any) -> list[str]:
            changed: list[str] = []
            while batch := await sweep(engine):
                changed += batch
            return changed

        results = await asyncio.gather(*(sweep_all(e) for e in engines))
        again = await sweep_all(engines[0])
    finally:
        for engine in engines:
            await engine.dispose()
    everything = [attempt for result in results for attempt in result]
    assert len(everything) == len(set(everything))  # nothing marked twice
    assert set(attempts) <= set(everything)
    assert again == []  # idempotent
    for attempt_id in attempts:
        status, at = await attempt_row(env, attempt_id)
        assert status == "abandoned" and at is not None
