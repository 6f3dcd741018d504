"""Starting a case workflow the same way everywhere (the gateway, tests, tools)."""

from __future__ import annotations

from temporalio.client import Client, WorkflowHandle
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy

from workflows import search_attributes as sa
from workflows.case.models import CaseWorkflowInput, CaseWorkflowResult, case_workflow_id
from workflows.case.workflow import CaseWorkflow


def static_summary(data: CaseWorkflowInput) -> str:
    """What coordinators read first in the UI: codes only, no name, no health data."""
    return f"Opinion request · {data.therapeutic_area} · {data.doctor_choice_mode.replace('_', ' ')}"


async def start_case_workflow(
    client: Client, data: CaseWorkflowInput, task_queue: str
) -> WorkflowHandle[CaseWorkflow, CaseWorkflowResult]:
    """One workflow per case; a retried request finds the running one."""
    return await client.start_workflow(
        CaseWorkflow.run,
        data,
        id=case_workflow_id(data.case_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        static_summary=static_summary(data),
        static_details=(
            f"Case `{data.case_id}`. Live state: the *current details* below and the `state` "
            "query; payloads are sealed (codec server needed to read them)."
        ),
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(sa.CASE_STATUS, "submitted"),
                SearchAttributePair(sa.THERAPEUTIC_AREA, data.therapeutic_area),
                SearchAttributePair(sa.ESCALATED, False),
            ]
        ),
    )
