"""Replays the histories committed in tests/workflows/histories/ against today's workflow
code: a change that is not deterministic (an activity added, removed or reordered
without `workflow.patched`) fails here, in CI, before it breaks running cases.

`skeleton_v1_*` comes from the walking-skeleton release (before PATCH_FULL_LIFECYCLE);
`v2_*` from the full lifecycle (re-record with SO_RECORD_HISTORIES=1 after an intended,
patched change; the payloads are sealed with the test-only key in histories/keys/)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.workflows.conftest import HISTORIES, HISTORY_KEYS
from workflows.case.models import CaseWorkflowInput, CaseWorkflowResult
from workflows.case.workflow import CaseWorkflow
from workflows.temporal_client import data_converter

# The lifecycle workflows' histories (lifecycle_*.json) replay in test_lifecycle_replay.py.
RECORDED = sorted(p for p in HISTORIES.glob("*.json") if not p.name.startswith("lifecycle_"))


def test_histories_are_committed() -> None:
    names = {path.stem for path in RECORDED}
    assert "skeleton_v1_platform_chosen" in names
    assert {"v2_happy_path", "v2_missed_deadline_reassigned", "v2_cancelled_with_refund"} <= names


@pytest.mark.parametrize("path", RECORDED, ids=[p.stem for p in RECORDED])
async def test_recorded_history_replays(path: Path) -> None:
    history = WorkflowHistory.from_json(f"case-{path.stem}", path.read_text())
    replayer = Replayer(workflows=[CaseWorkflow], data_converter=data_converter(HISTORY_KEYS))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=True)
    assert result.replay_failure is None


@workflow.defn(name="CaseWorkflow", sandboxed=False)
class UnpatchedCaseWorkflow(CaseWorkflow):
    """Today's code with the patch check removed: what a careless change looks like."""

    @workflow.run
    async def run(self, data: CaseWorkflowInput) -> CaseWorkflowResult:
        return await self._legacy_skeleton(data)


async def test_a_non_deterministic_change_fails_replay() -> None:
    """The net works: a v2 history replayed on code that dropped the patch fails."""
    path = HISTORIES / "v2_happy_path.json"
    history = WorkflowHistory.from_json("case-v2", path.read_text())
    replayer = Replayer(workflows=[UnpatchedCaseWorkflow], data_converter=data_converter(HISTORY_KEYS))
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
