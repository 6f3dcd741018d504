"""The review deadline on the real services: the doctor is reminded three times (real
emails), the deadline passes, the case is escalated to the coordinators and offered to
another referent doctor; the first doctor's access to the file ends, the second accepts,
and the patient is told the new date.

Temporal's clock is skipped for the case while the services keep wall-clock time, so the
skip must stay within what they accept as plausible (an offer answered more than 7 days
from now is rightly refused): the case runs under a 4-day review period, which the
matching still projects an idle doctor within (3 days by default), and the skip is 4 days
and an hour. The 7-day period itself is skipped through in the workflow tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.matching.v1 import matching_pb2
from secondopinion.notifications.v1 import notifications_pb2
from temporalio.testing import WorkflowEnvironment

from tests.conftest import time_skipping_dev_server
from tests.e2e.conftest import eventually, queue_name, seeded_world, view_when
from tests.e2e.test_case_on_real_services import _at_least, covered_case_in_review, expect_code
from tests.support.stack import platform_stack
from workflows.case.models import CasePolicy, CaseStatus, SubmitReport
from workflows.case.workflow import CaseWorkflow
from workflows.temporal_client import with_data_converter

N = notifications_pb2
REMINDER = N.NOTIFICATION_TEMPLATE_DOCTOR_DEADLINE_REMINDER
SHORT_REVIEW = CasePolicy(platform_review_days=4)  # reminders at 2 d, 3 d (24 h before), 3.2 d


@pytest.fixture(scope="module")
async def skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server; time skipped only when the test fast-forwards a workflow."""
    async with time_skipping_dev_server() as env:
        yield env


@pytest.mark.temporal
@pytest.mark.req("CASE-10")
@pytest.mark.req("CASE-09")
async def test_a_missed_deadline_escalates_and_reassigns_on_the_real_services(
    tmp_path: Path, skipping_env: WorkflowEnvironment, smtp_catcher: Path
) -> None:
    queue = queue_name("e2e-deadline")
    async with (
        platform_stack(
            tmp_path, "sqlite", temporal=skipping_env.client, task_queue=queue, with_gateway=False
        ) as stack,
        seeded_world(stack) as world,
    ):
        assert stack.temporal_settings is not None
        client = with_data_converter(skipping_env.client, stack.temporal_settings)
        claire = await world.referent_doctor("Claire", "1000000001")
        patient = await world.patient_signs_up("nora")
        case_id, handle, (accepted,) = await covered_case_in_review(
            world, client, queue, patient, claire, policy=SHORT_REVIEW
        )
        paul = await world.referent_doctor("Paul", "1000000004")
        first_deadline = (await handle.query(CaseWorkflow.state)).slots[0].deadline_at
        assert first_deadline is not None

        # Silence from Claire until an hour past the deadline.
        await skipping_env.fast_forward(handle, timedelta(days=4, hours=1))
        offer = await world.pending_offer(paul, case_id)
        reminders = await eventually(
            lambda: _at_least(world.delivered(claire.email, REMINDER), 3),
            "three deadline reminders",
        )
        assert len(reminders) == 3
        escalations = [
            m for m in await world.outbox() if m.template == N.NOTIFICATION_TEMPLATE_COORDINATOR_ESCALATION
        ]
        assert len(escalations) == 1
        values = {p.key.name: p.value for p in (await handle.describe()).typed_search_attributes}
        assert values["Escalated"] is True
        # Claire's assignment is released and her access to the file has ended.
        matching = world.matching(world.worker)
        released = (
            await matching.ListAssignments(
                matching_pb2.ListAssignmentsRequest(case_id=case_id, include_released=True)
            )
        ).assignments
        assert [(a.assignment_id, a.release_reason) for a in released] == [
            (accepted.assignment.assignment_id, matching_pb2.RELEASE_REASON_REASSIGNED)
        ]
        await expect_code(
            world.dossier(claire.tokens()).GetCase(dossier_pb2.GetCaseRequest(case_id=case_id)),
            grpc.StatusCode.NOT_FOUND,
        )

        assert offer.doctor_id == paul.doctor_id
        await world.doctor_accepts(paul, handle, case_id)
        view = await view_when(
            handle, lambda v: v.status is CaseStatus.IN_REVIEW and v.slots[0].doctor_id == paul.doctor_id
        )
        new_deadline = view.slots[0].deadline_at
        assert new_deadline is not None and new_deadline > first_deadline
        told = await eventually(
            lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_CASE_DEADLINE_EXTENDED),
            "the new date email",
        )
        assert len(told) == 1
        case = (await world.dossier(world.worker).GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))).case
        assert list(case.assigned_doctor_ids) == [paul.doctor_id]

        # Paul delivers; the case closes with his opinion only.
        report_id = await world.doctor_writes_report(paul, case_id)
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id=paul.account_id, report_id=report_id)
        )
        result = await asyncio.wait_for(handle.result(), timeout=60)
        assert result.status == "closed" and result.doctor_ids == [paul.doctor_id]
