"""Kill the worker in the middle of a case (SIGKILL, right after a side effect and
before Temporal heard of it, and again while the case waits), restart it: the case
finishes with exactly one charge, one assignment and one email of each kind.

The activities here are recording implementations writing to a SQLite file shared by
the worker processes, deduplicating by idempotency key exactly like the services'
run_once does; what this proves is that every retry carries the same key."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.workflows.conftest import HISTORY_KEYS
from tests.workflows.fakes import Recorder
from workflows.case.models import (
    CasePolicy,
    CaseView,
    CaseWorkflowInput,
    OfferAnswered,
    PaymentNotified,
    Phase,
    StartCardPayment,
    SubmitReport,
    case_workflow_id,
)
from workflows.case.workflow import CaseWorkflow

REPO = Path(__file__).resolve().parents[2]


class Workers:
    def __init__(self, env: WorkflowEnvironment, queue: str, workdir: Path) -> None:
        self.address = env.client.service_client.config.target_host
        self.queue = queue
        self.workdir = workdir
        (workdir / "markers").mkdir()
        self.current: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self, crash_after: str = "") -> subprocess.Popen[bytes]:
        self.started += 1
        log = (self.workdir / f"worker-{self.started}.log").open("wb")
        self.current = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.workflows.crash_worker",
                "--address",
                self.address,
                "--queue",
                self.queue,
                "--recorder",
                str(self.workdir / "recorder.db"),
                "--keys-dir",
                str(HISTORY_KEYS.payload_keys_dir),
                "--key-id",
                HISTORY_KEYS.payload_key_id,
                "--markers",
                str(self.workdir / "markers"),
                "--crash-after",
                crash_after,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self.current

    async def wait_exit(self, limit: float = 60.0) -> int:
        assert self.current is not None
        deadline = time.monotonic() + limit
        while self.current.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError("the worker did not crash where expected")
            await asyncio.sleep(0.05)
        return self.current.returncode

    def kill(self) -> None:
        assert self.current is not None
        os.kill(self.current.pid, signal.SIGKILL)
        self.current.wait()

    def stop(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.kill()


@contextmanager
def worker_processes(env: WorkflowEnvironment, queue: str, workdir: Path) -> Iterator[Workers]:
    workers = Workers(env, queue, workdir)
    try:
        yield workers
    finally:
        workers.stop()


async def view_when(handle: WorkflowHandle[Any, Any], ready: Any, limit: float = 60.0) -> CaseView:
    deadline = time.monotonic() + limit
    while True:
        try:
            view = await asyncio.wait_for(handle.query(CaseWorkflow.state), timeout=5)
            if ready(view):
                return view
        except Exception:  # no worker to answer yet
            pass
        if time.monotonic() > deadline:
            raise AssertionError("case did not reach the expected state")
        await asyncio.sleep(0.1)


@pytest.mark.temporal
@pytest.mark.req("CASE-09")
@pytest.mark.req("CASE-11")
async def test_killed_worker_case_finishes_with_every_effect_once(
    ts_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    queue = f"crash-{uuid.uuid4().hex[:8]}"
    case_id = str(uuid.uuid4())
    crash_points = "create_offer,notify:doctor_new_offer"
    with worker_processes(ts_env, queue, tmp_path) as workers:
        workers.start(crash_points)
        handle = await ts_env.client.start_workflow(
            CaseWorkflow.run,
            CaseWorkflowInput(
                case_id=case_id,
                therapeutic_area="oncology",
                doctor_choice_mode="platform_chosen",
                # Short start-to-close so an activity lost with its worker is retried soon.
                policy=CasePolicy(activity_timeout_seconds=2),
            ),
            id=case_workflow_id(case_id),
            task_queue=queue,
        )
        await view_when(handle, lambda v: v.phase is Phase.PAYMENT)
        await handle.execute_update(CaseWorkflow.start_card_payment, StartCardPayment())
        await handle.signal(CaseWorkflow.payment_notified, PaymentNotified())
        # Crash 1: right after the offer was created in matching.
        assert await workers.wait_exit() == -signal.SIGKILL
        workers.start(crash_points)
        # Crash 2: right after the offer email went to the doctor.
        assert await workers.wait_exit() == -signal.SIGKILL
        workers.start(crash_points)
        await view_when(handle, lambda v: v.pending_offer_doctor_id == "doc-a")
        await handle.signal(
            CaseWorkflow.offer_answered,
            OfferAnswered(
                offer_id="offer-doc-a", accepted=True, assignment_id="asg-1", doctor_account_id="acct-doc-a"
            ),
        )
        await view_when(handle, lambda v: v.status.value == "in_review")
        # Crash 3: killed by us while the case waits for the report.
        workers.kill()
        workers.start()
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id="acct-doc-a", report_id="rep-1")
        )
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.status == "closed"

    rec = Recorder(tmp_path / "recorder.db")
    # Exactly one charge, one assignment, one email of each kind.
    assert len(rec.effects("create_order")) == 1
    assert len(rec.effects("start_card_payment")) == 1
    assert not rec.effects("refund")
    assert len(rec.effects("create_offer")) == 1
    assert len(rec.effects("record_assignment")) == 1
    kinds = [e["template"] for e in rec.emails()]
    assert sorted(kinds) == sorted(set(kinds))
    # (The payment summary is billing's own email on capture, not the workflow's.)
    assert {"doctor_new_offer", "report_available", "satisfaction_survey"} <= set(kinds)
    assert "payment_summary" not in kinds
    # The crashed activities really ran twice, with the same key both times.
    offer_email_calls = [k for _, k, d in rec.calls("notify") if d["template"] == "doctor_new_offer"]
    assert len(offer_email_calls) == 2 and len(set(offer_email_calls)) == 1
    assert len(rec.calls("create_offer")) == 2
    assert rec.statuses() == [
        "awaiting_payment",
        "awaiting_assignment",
        "in_review",
        "report_delivered",
        "closed",
    ]
