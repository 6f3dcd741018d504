"""Replays the lifecycle histories committed in tests/workflows/histories/lifecycle_*.json
against today's lifecycle workflows: a change that is not deterministic (an activity
added, removed or reordered without `workflow.patched`) fails here, in CI, before it breaks
the retention clocks and rights requests already running.

- `lifecycle_v1_*`: recorded with the first release of RightsRequestWorkflow (before
  PATCH_POSTPONED_ERASURE); never re-recorded: they prove old runs still replay.
- the others: recorded by tests/lifecycle with SO_RECORD_HISTORIES=1 (retention: archive,
  then purge after continue-as-new; rights requests: extension and answer, erasure,
  erasure refused for now then carried out, export; the daily sweep; the legal-text
  announcement's first and last runs). Re-record them after an intended, patched change.
  `sweep` and `rights_request_extended_access` were recorded before
  PATCH_SWEEP_RIGHTS_REQUESTS / PATCH_CHANGED_REREADS and are kept so: they prove runs
  started before those patches still replay. The patched paths have their own:
  `sweep_rights_requests` (the sweep starts the workflows of open rights requests) and
  `rights_request_changed_directly` (a `changed` signal re-reads an extension, then an
  answer, recorded directly in identity), from tests/lifecycle/test_rights_request_workflows.py.

Payloads are sealed with the test-only key in histories/keys/."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.workflows.conftest import HISTORIES, HISTORY_KEYS
from workflows.lifecycle.models import FulfilResult, RightsRequestInput, RightsRequestView
from workflows.lifecycle.workflows import (
    LegalTextAnnouncementWorkflow,
    RetentionSweepWorkflow,
    RightsRequestWorkflow,
    SubjectRetentionWorkflow,
)
from workflows.temporal_client import data_converter

RECORDED = sorted(HISTORIES.glob("lifecycle_*.json"))
WORKFLOWS = [
    SubjectRetentionWorkflow,
    RightsRequestWorkflow,
    RetentionSweepWorkflow,
    LegalTextAnnouncementWorkflow,
]


def history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_lifecycle_histories_are_committed() -> None:
    names = {path.stem.removeprefix("lifecycle_") for path in RECORDED}
    assert {
        "retention_archive_run",
        "retention_purge_run",
        "rights_request_extended_access",
        "rights_request_erasure",
        "rights_request_erasure_postponed",
        "rights_request_erasure_refused_by_dossier",
        "rights_request_portability",
        "sweep",
        "sweep_rights_requests",
        "rights_request_changed_directly",
        "announcement_first_run",
        "announcement_last_run",
        "v1_rights_request_erasure",
        "v1_rights_request_extended_access",
    } <= names


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_lifecycle_history_replays(path: Path) -> None:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=data_converter(HISTORY_KEYS))
    result = await replayer.replay_workflow(history(path), raise_on_replay_failure=True)
    assert result.replay_failure is None


@workflow.defn(name="RightsRequestWorkflow", sandboxed=False)
class UnguardedRightsRequestWorkflow(RightsRequestWorkflow):
    """Today's erasure without its `workflow.patched` guard: what a careless change looks like."""

    @workflow.run
    async def run(self, data: RightsRequestInput) -> RightsRequestView:
        return await super().run(data)

    @workflow.update
    async def fulfil(self) -> FulfilResult:  # type: ignore[override]  # same update, no guard
        assert self._facts is not None
        result = await self._erase_unless_case_in_progress(self._facts)
        assert result is not None
        self._fulfilment = result
        await self._answer(result.outcome, "")
        return result


async def test_an_unguarded_change_fails_replay_of_the_shipped_erasure() -> None:
    """The net works: the first release's erasure replays on today's code (the patch keeps
    its two steps) and fails on the same code without the patch check."""
    shipped = history(HISTORIES / "lifecycle_v1_rights_request_erasure.json")
    guarded = Replayer(workflows=[RightsRequestWorkflow], data_converter=data_converter(HISTORY_KEYS))
    assert (await guarded.replay_workflow(shipped, raise_on_replay_failure=False)).replay_failure is None
    careless = Replayer(
        workflows=[UnguardedRightsRequestWorkflow], data_converter=data_converter(HISTORY_KEYS)
    )
    result = await careless.replay_workflow(shipped, raise_on_replay_failure=False)
    assert result.replay_failure is not None
    assert "nondeterminism" in str(result.replay_failure).lower()
