"""A duplicate payment refunded automatically (a late capture of an order paid meanwhile)
is told to the payer by email, once the PSP accepted the refund, exactly once: the email
is written to the outbox in the transaction that records the PSP's answer and sent under
the outbox row's idempotency key, so a sweep run twice, a process dying between the PSP's
answer and the email, or between the hand-over and its record, sends nothing twice.
Operations get a structured warning with ids and amount only. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.app import build_context
from services.billing.background import PaymentSweeper
from services.billing.domain import refunds
from services.billing.models import PaymentAttempt, Refund
from services.billing.psp.sandbox import SUCCESS_CARD
from services.notifications.domain.catalog import SPECS, Channel, Template, Variable
from services.notifications.domain.rendering import Renderer
from services.notifications.domain.variables import RawVariables, template_context
from services.shared.db import create_engine, session_factory, utcnow
from services.shared.protoconv import from_pb_enum
from tests.billing.conftest import Env, eventually, new_order, pay_in_sandbox, pay_started
from tests.billing.test_deferred_rendering_and_sweep import other_billing, sql, start_attempt
from tests.support.databases import service_database

NOTICE = npb.NOTIFICATION_TEMPLATE_DUPLICATE_PAYMENT_REFUNDED
OPERATION_FIELDS = {"refund_id", "order_id", "payment_attempt_id", "amount_cents", "currency"}


async def paid_twice(env: Env, payer: str) -> tuple[pb.Order, str, str]:
    """An order paid by a second attempt while the first one was still open, then the
    first one captured too: (order, the duplicate attempt's id, its PSP transaction)."""
    order = await new_order(env, payer=payer)
    late = await start_attempt(env, order)
    before = len(env.relay.results)
    await pay_in_sandbox(env, order, SUCCESS_CARD)
    await eventually(lambda: len(env.relay.results) > before)
    assert env.relay.results[-1].order.status == pb.ORDER_STATUS_PAID
    before = len(env.relay.results)
    await pay_started(env, late, SUCCESS_CARD)
    await eventually(lambda: len(env.relay.results) > before)
    duplicate = env.relay.results[-1]
    assert duplicate.captured_now and duplicate.payment_attempt.payment_attempt_id == late.payment_attempt_id
    return order, late.payment_attempt_id, duplicate.payment_attempt.psp_transaction_id


async def refund_of(env: Env, attempt_id: str) -> tuple[str, str]:
    ((refund_id, status),) = await sql(
        env, "SELECT refund_id, status FROM refunds WHERE payment_attempt_id = :id", id=attempt_id
    )
    return str(refund_id), str(status)


async def notice_rows(env: Env, refund_id: str) -> list[Any]:
    return await sql(
        env,
        "SELECT outbox_id, template, account_id, amount_cents, currency, sent_at FROM email_outbox"
        " WHERE idempotency_key = :key",
        key=refunds.duplicate_refund_notice_key(refund_id),
    )


async def own_question_numbers(env: Env) -> None:
    """A fresh database numbers its PSP questions from 1 again, while the sandbox PSP
    (shared by the module) remembers the numbers others used today: start elsewhere."""
    await sql(
        env,
        "INSERT INTO invoice_counters (series, last_number) VALUES (:series, :number)",
        series=f"psp-question-{utcnow():%Y%m%d}",
        number=100_000 + secrets.randbelow(10**8),
    )


def notices_for(env: Env, outbox_id: str) -> list[npb.SendNotificationRequest]:
    return [m for m in env.recorder.sent if m.idempotency_key == f"billing-email:{outbox_id}"]


@asynccontextmanager
async def sessions_on(url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


@pytest.mark.req("BIL-06")
@pytest.mark.req("BIL-07")
@pytest.mark.req("NOT-02")
async def test_the_payer_is_told_once_when_the_sweep_refunds_a_duplicate_payment(env: Env) -> None:
    payer = await env.sign_up()
    order, attempt_id, transaction = await paid_twice(env, payer)
    # The service's own sweep refunds it at the PSP; its dispatcher then sends the email.
    await eventually(lambda: any(t == transaction for t, _ in env.sandbox.refunds), within=15)
    # The PSP has answered; billing records the answer a moment later.
    for _ in range(150):
        refund_id, status = await refund_of(env, attempt_id)
        if status != "pending":
            break
        await asyncio.sleep(0.1)
    assert status == "completed"
    rows: list[Any] = []

    async def sent() -> bool:
        rows[:] = await notice_rows(env, refund_id)
        return len(rows) == 1 and rows[0][5] is not None

    for _ in range(150):
        if await sent():
            break
        await asyncio.sleep(0.1)
    ((outbox_id, template, account_id, amount, currency, _),) = rows
    assert (template, account_id, amount, currency) == (
        "duplicate_payment_refunded",
        payer,
        order.total_amount_cents,
        "EUR",
    )
    (message,) = notices_for(env, outbox_id)
    assert message.template == NOTICE and message.channel == npb.CHANNEL_EMAIL
    assert message.email.endswith("@example.org") and message.locale == "fr"
    variables = message.variables
    assert variables.amount_cents == order.total_amount_cents and variables.currency == "EUR"
    assert variables.link == env.settings.public_base_url + "/invoices"
    assert variables.date.seconds > 0 and not variables.invoice_number and not variables.one_time_code
    assert env.recorder.callers[env.recorder.sent.index(message)] == "billing"
    # More sweeps and outbox passes: nothing more is refunded nor sent.
    await asyncio.sleep(1.0)
    assert [a for t, a in env.sandbox.refunds if t == transaction] == [order.total_amount_cents]
    assert len(await notice_rows(env, refund_id)) == 1 and len(notices_for(env, outbox_id)) == 1
    # The order stays paid: the duplicate corrected no invoice.
    kept = await env.billing(env.tokens("worker")).GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    assert kept.order.status == pb.ORDER_STATUS_PAID


@pytest.mark.req("BIL-06")
@pytest.mark.req("BIL-07")
@pytest.mark.req("NOT-02")
async def test_a_crash_after_the_psp_refund_and_two_sweeps_still_tell_the_payer_exactly_once(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.billing")
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        # No sweep of its own: the test plays the sweeps (and the crash) itself.
        changes = {
            "database_url": url,
            "archive_dir": tmp_path / "archive",
            "payment_sweep_interval_seconds": 0,
        }
        async with (
            other_billing(env, **changes) as lone,
            sessions_on(url) as sessions,
            sessions_on(url) as other,
        ):
            lone = dataclasses.replace(lone, database_url=url)
            await own_question_numbers(lone)
            payer = await lone.sign_up()
            order, attempt_id, transaction = await paid_twice(lone, payer)
            refund_id, status = await refund_of(lone, attempt_id)
            assert status == "pending"
            context = await build_context(lone.settings, lambda: None)
            # A sweep claims the refund, the PSP refunds, and the process dies before
            # recording the answer: no email exists yet.
            async with sessions.begin() as session:
                assert await refunds.claim(session, refund_id)
            async with sessions() as session:
                refund = await session.get(Refund, refund_id)
                attempt = await session.get(PaymentAttempt, attempt_id)
                assert refund is not None and attempt is not None
            answer = await refunds.ask_psp(context.psp, refunds.psp_request(refund, attempt))
            assert answer.succeeded
            assert [a for t, a in lone.sandbox.refunds if t == transaction] == [order.total_amount_cents]
            assert await notice_rows(lone, refund_id) == []
            # The claim runs out; two sweeps (two processes) then find the refund at once.
            await sql(
                lone,
                "UPDATE refunds SET claimed_until = :at WHERE refund_id = :id",
                at=utcnow() - timedelta(seconds=1),
                id=refund_id,
            )
            woken: list[int] = []
            sweepers = [
                PaymentSweeper(s, context.psp, context.archive, 60, lambda: woken.append(1))
                for s in (sessions, other)
            ]
            completed = await asyncio.gather(*(s.resume_refunds() for s in sweepers))
            assert sum(completed) == 1 and woken == [1]
            # The same question was asked again: the PSP answered it, refunding nothing more.
            assert [a for t, a in lone.sandbox.refunds if t == transaction] == [order.total_amount_cents]
            assert (await refund_of(lone, attempt_id))[1] == "completed"
            (row,) = await notice_rows(lone, refund_id)
            outbox_id = row[0]
            assert row[1:5] == ("duplicate_payment_refunded", payer, order.total_amount_cents, "EUR")
            await eventually(lambda: len(notices_for(lone, outbox_id)) == 1, within=10)
            # The process dies after the hand-over, before recording it: the dispatcher
            # sends again under the same key, and the notifications service keeps one.
            for _ in range(100):
                if (await notice_rows(lone, refund_id))[0][5] is not None:
                    break
                await asyncio.sleep(0.05)
            await sql(
                lone,
                "UPDATE email_outbox SET sent_at = NULL, next_attempt_at = :at WHERE outbox_id = :id",
                at=utcnow() - timedelta(seconds=1),
                id=outbox_id,
            )
            for _ in range(100):
                if (await notice_rows(lone, refund_id))[0][5] is not None:
                    break
                await asyncio.sleep(0.05)
            ((_, _, _, _, _, sent_again),) = await notice_rows(lone, refund_id)
            assert sent_again is not None
            assert len(notices_for(lone, outbox_id)) == 1
            # Later sweeps have nothing left to do.
            assert [await s.resume_refunds() for s in sweepers] == [0, 0]
            assert len(await notice_rows(lone, refund_id)) == 1
    # Operations see it: a warning with ids and amount only (nothing about the person).
    (warning,) = [
        r
        for r in caplog.records
        if r.getMessage() == "duplicate payment refunded"
        and getattr(r, "fields", {}).get("refund_id") == refund_id
    ]
    assert warning.levelno == logging.WARNING
    fields: dict[str, Any] = warning.fields  # type: ignore[attr-defined]
    assert set(fields) == OPERATION_FIELDS
    assert fields["refund_id"] == refund_id and fields["payment_attempt_id"] == attempt_id
    assert fields["order_id"] == order.order_id and fields["amount_cents"] == order.total_amount_cents
    assert payer not in {str(v) for v in fields.values()}
    detected = [r for r in caplog.records if r.getMessage() == "duplicate payment"]
    assert detected and detected[-1].fields["refund_id"] == refund_id  # type: ignore[attr-defined]


@pytest.mark.req("BIL-06")
async def test_a_duplicate_refund_the_psp_refuses_tells_the_payer_nothing(env: Env, tmp_path: Path) -> None:
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        changes = {
            "database_url": url,
            "archive_dir": tmp_path / "archive",
            "payment_sweep_interval_seconds": 0,
        }
        async with other_billing(env, **changes) as lone, sessions_on(url) as sessions:
            lone = dataclasses.replace(lone, database_url=url)
            await own_question_numbers(lone)
            payer = await lone.sign_up()
            order, attempt_id, _ = await paid_twice(lone, payer)
            refund_id, _ = await refund_of(lone, attempt_id)
            # The capture can no longer be named to the PSP: it refuses the refund.
            await sql(
                lone,
                "UPDATE payment_attempts SET psp_transaction_id = '' WHERE payment_attempt_id = :id",
                id=attempt_id,
            )
            context = await build_context(lone.settings, lambda: None)
            sweeper = PaymentSweeper(sessions, context.psp, context.archive, 60, lambda: None)
            assert await sweeper.resume_refunds() == 0
            assert (await refund_of(lone, attempt_id))[1] == "failed"
            assert await notice_rows(lone, refund_id) == []
            assert order.total_amount_cents > 0


@pytest.mark.req("NOT-02")
@pytest.mark.req("SEC-08")
@pytest.mark.parametrize("locale", ["fr", "en"])
def test_the_notice_shows_the_amount_the_date_and_the_invoices_link_and_nothing_else(locale: str) -> None:
    assert from_pb_enum(npb.NotificationTemplate, Template, NOTICE) is Template.DUPLICATE_PAYMENT_REFUNDED
    spec = SPECS[Template.DUPLICATE_PAYMENT_REFUNDED]
    assert spec.channels == {Channel.EMAIL}
    assert spec.variables == {Variable.FIRST_NAME, Variable.AMOUNT, Variable.DATE, Variable.LINK}
    raw = RawVariables(
        first_name="Camille",
        link="https://app.deuxiemeavis.test/invoices",
        date=datetime(2026, 3, 2, 9, 30, tzinfo=UTC),
        amount_cents=4900,
        currency="EUR",
        invoice_number="P-2026-000001",
        one_time_code="123456",
    )
    context = template_context(
        spec, raw, locale, public_base_url="https://app.deuxiemeavis.test", time_zone="Europe/Paris"
    )
    message = Renderer().render(spec.template, locale, Channel.EMAIL, context)
    for part in (message.text, message.html):
        assert "49,00" in part if locale == "fr" else "49.00" in part
        assert "2026" in part and "/invoices" in part and "Camille" in part
        assert "P-2026-000001" not in part and "123456" not in part
    assert ("double" if locale == "fr" else "duplicate") in message.subject.lower()
