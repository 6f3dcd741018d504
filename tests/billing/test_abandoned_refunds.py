"""A refund whose caller gave up (the PSP did not answer and nobody retried, or the caller
died after reserving it) does not stay pending forever, holding back the subject's
archive: billing's sweep completes it once it has been left 15 minutes, asking the PSP
the same question (which refunds once), and a later retry under the caller's key finds
it done. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2 as pb

from services.billing.app import build_context
from services.billing.background import PaymentSweeper
from services.billing.domain.refunds import ABANDONED_AFTER
from services.shared.db import utcnow
from tests.billing.conftest import Env, expect_status
from tests.billing.test_deferred_rendering_and_sweep import other_billing, sql
from tests.billing.test_duplicate_refund_notice import own_question_numbers, sessions_on
from tests.billing.test_refunds import order_status, paid_order, refund_request, refunds_at_psp
from tests.support.databases import service_database


@pytest.mark.req("BIL-02")
@pytest.mark.req("CASE-11")
async def test_a_refund_its_caller_abandoned_is_completed_by_the_sweep_once(
    env: Env, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.billing")
    async with service_database("billing", env.backend, tmp_path / "db") as url:
        # Two processes on one database, neither sweeping on its own: the first cannot
        # reach the PSP's refund endpoint (nothing listens on port 9).
        common = {
            "database_url": url,
            "archive_dir": tmp_path / "archive",
            "payment_sweep_interval_seconds": 0,
        }
        async with (
            other_billing(env, psp_direct_url="http://127.0.0.1:9/PPPS.php", **common) as cut_off,
            sessions_on(url) as sessions,
        ):
            cut_off = dataclasses.replace(cut_off, database_url=url)
            await own_question_numbers(cut_off)
            order, attempt = await paid_order(cut_off)
            request = refund_request(order, attempt.amount_cents, key="staff-refund-1")
            worker = cut_off.billing(cut_off.tokens("worker"))
            detail = await expect_status(worker.RefundPayment(request), grpc.StatusCode.UNAVAILABLE)
            assert "stays pending" in detail
            ((refund_id, status),) = await sql(
                cut_off,
                "SELECT refund_id, status FROM refunds WHERE request_key = :k",
                k=request.idempotency_key,
            )
            assert status == "pending"
            # The caller never comes back. A sweep by a process that reaches the PSP leaves
            # a refund this fresh alone: its caller may still be retrying.
            context = await build_context(
                cut_off.settings.model_copy(update={"psp_direct_url": ""}), lambda: None
            )
            sweeper = PaymentSweeper(sessions, context.psp, context.archive, 60, lambda: None)
            assert await sweeper.resume_refunds() == 0
            assert refunds_at_psp(env, attempt.psp_transaction_id) == []
            # Left past ABANDONED_AFTER: the sweep completes it, once, however often it runs.
            await sql(
                cut_off,
                "UPDATE refunds SET created_at = :at WHERE refund_id = :id",
                at=utcnow() - ABANDONED_AFTER - timedelta(minutes=1),
                id=refund_id,
            )
            assert await sweeper.resume_refunds() == 1
            assert await sweeper.resume_refunds() == 0
            assert refunds_at_psp(env, attempt.psp_transaction_id) == [attempt.amount_cents]
            assert await order_status(cut_off, order) == pb.ORDER_STATUS_REFUNDED
            # The patient is told, through the outbox, once.
            ((emails,),) = await sql(
                cut_off,
                "SELECT count(*) FROM email_outbox WHERE template = 'case_cancelled'"
                " AND idempotency_key = :k",
                k=f"refund:{refund_id}",
            )
            assert emails == 1
            # The caller's retry under its key, even through the process cut off from the
            # PSP, finds the refund done: nothing is asked again.
            again = (await worker.RefundPayment(request)).refund
            assert again.refund_id == refund_id and again.status == pb.REFUND_STATUS_COMPLETED
            assert env.sandbox.direct_requests.count(attempt.psp_transaction_id) == 1
    (warning,) = [r for r in caplog.records if r.getMessage() == "abandoned refund completed by the sweep"]
    assert warning.fields == {"refund_id": refund_id, "order_id": order.order_id}  # type: ignore[attr-defined]
