"""The case workflow (walking skeleton of issue 2; issue 8 adds payment, offers, the
7-day deadline, reminders, escalation, the report update and cancellation).

Deterministic code only: no I/O, no clocks but workflow.now(), ids from the workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows import search_attributes as sa
    from workflows.case.activities import CaseActivities
    from workflows.case.models import (
        CaseWorkflowInput,
        CaseWorkflowResult,
        ListCandidatesInput,
        ReportCaseStatusInput,
    )

# Longer than the gRPC deadline the activities set, so a slow service times out first.
SERVICE_CALL_TIMEOUT = timedelta(seconds=30)
SERVICE_CALL_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@workflow.defn
class CaseWorkflow:
    def __init__(self) -> None:
        self._status = "submitted"

    @workflow.run
    async def run(self, data: CaseWorkflowInput) -> CaseWorkflowResult:
        workflow.upsert_search_attributes(
            [sa.CASE_STATUS.value_set(self._status), sa.THERAPEUTIC_AREA.value_set(data.therapeutic_area)]
        )
        candidates = await workflow.execute_activity_method(
            CaseActivities.list_candidate_doctors,
            ListCandidatesInput(therapeutic_area=data.therapeutic_area),
            start_to_close_timeout=SERVICE_CALL_TIMEOUT,
            retry_policy=SERVICE_CALL_RETRY,
        )
        # Next step: payment or coverage (issue 7/8).
        await self._report_status(data.case_id, "awaiting_payment")
        return CaseWorkflowResult(
            case_id=data.case_id, status=self._status, candidate_doctor_count=len(candidates.doctor_ids)
        )

    async def _report_status(self, case_id: str, status: str) -> None:
        await workflow.execute_activity_method(
            CaseActivities.report_case_status,
            ReportCaseStatusInput(
                case_id=case_id,
                status=status,
                idempotency_key=f"{workflow.info().workflow_id}:status:{status}",
            ),
            start_to_close_timeout=SERVICE_CALL_TIMEOUT,
            retry_policy=SERVICE_CALL_RETRY,
        )
        self._status = status
        workflow.upsert_search_attributes([sa.CASE_STATUS.value_set(status)])

    @workflow.query
    def status(self) -> str:
        return self._status
