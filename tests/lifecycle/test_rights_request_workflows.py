"""Every rights request has its deadline workflow, and the workflow follows what happens to
the request in identity (real services, Temporal dev server with per-workflow time skipping):

- the daily sweep starts the workflow of a request the DPO recorded from a letter or an
  email (not the portal), with the one-month deadline, once: a second sweep starts nothing,
  a running workflow is never duplicated, an answered request gets none, a terminated one
  whose request is still open is started again;
- a `changed` signal makes the workflow re-read the request: an extension recorded
  directly in identity is seen at once and the person is told once; an answer recorded
  directly ends the deadline;
- while the workflow has not read its request yet, its updates say "still being loaded;
  retry" (not "already answered"), and succeed once it has.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from temporalio import activity
from temporalio.client import WorkflowQueryFailedError, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from services.identity.domain.retention import add_months
from services.shared.auth import Role
from services.shared.protoconv import to_timestamp
from tests.lifecycle.conftest import World, continued_as_retention, record_history
from tests.lifecycle.test_retention_workflows import until
from tests.lifecycle.test_rights_requests import emails_of, file_request
from workflows.lifecycle.models import (
    REQUEST_NOT_LOADED,
    AnswerCallInput,
    AnswerInput,
    ExtendInput,
    RequestFacts,
    RetentionResult,
    RightsRequestInput,
    RightsRequestView,
    SubjectIdInput,
    SubjectStatus,
    SweepInput,
    SweepResult,
)
from workflows.lifecycle.worker import WORKFLOWS
from workflows.lifecycle.workflows import (
    RetentionSweepWorkflow,
    RightsRequestWorkflow,
    rights_request_workflow_id,
)


async def record_by_dpo(
    world: World, dpo: str, subject_id: str, channel: int, received_at: datetime
) -> lpb.RightsRequest:
    """A request that reached the DPO outside the portal (a letter, an email), recorded in
    identity from the DPO's desk: no workflow is started by that."""
    async with world.person(dpo, Role.DPO) as conn:
        reply = await ipb_grpc.IdentityServiceStub(
            conn
        ).RecordRightsRequest(
            ipb.RecordRightsRequestRequest(
                idempotency_key=f"rr-{uuid.uuid4()}",
                subject_id=subject_id,
                kind=lpb.RIGHTS_REQUEST_KIND_RECTIFICATION,
                channel=channel,  # type: ignore[arg-type]
                identity_verification=lpb.IDENTITY_VERIFICATION_METHOD_IDENTITY_DOCUMENT,
                identity_proof_document_id=f"proof-{uuid.uuid4().hex[:8]}",
                received_at=to_timestamp(received_at),
            )
        )
    return reply.rights_request


async def sweep(world: World, now: datetime, name: str | None = None) -> SweepResult:
    sweep_id = f"sweep-{uuid.uuid4()}"
    result: SweepResult = await world.client.execute_workflow(
        RetentionSweepWorkflow.run, SweepInput(as_of=now), id=sweep_id, task_queue=world.queue
    )
    if name is not None:
        await record_history(world.client, sweep_id, name)
    return result


async def has_no_workflow(world: World, request_id: str) -> bool:
    try:
        await world.client.get_workflow_handle(rights_request_workflow_id(request_id)).describe()
    except RPCError as error:
        if error.status is RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_the_daily_sweep_starts_the_deadline_workflow_of_requests_recorded_outside_the_portal(
    world: World,
) -> None:
    patient = await world.sign_up()
    dpo = await world.staff()
    now = datetime.now(UTC)
    # A letter received three days ago, an email today: recorded by the DPO, no workflow.
    letter = await record_by_dpo(
        world, dpo, patient, lpb.RIGHTS_REQUEST_CHANNEL_POSTAL_MAIL, now - timedelta(days=3)
    )
    email = await record_by_dpo(world, dpo, patient, lpb.RIGHTS_REQUEST_CHANNEL_DPO_EMAIL, now)
    # Filed from the portal: the gateway started its workflow (USE_EXISTING, as it does).
    portal_id = await file_request(world, patient, lpb.RIGHTS_REQUEST_KIND_ACCESS)
    portal = await world.client.start_workflow(
        RightsRequestWorkflow.run,
        RightsRequestInput(request_id=portal_id),
        id=rights_request_workflow_id(portal_id),
        task_queue=world.queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
    # Answered directly by the DPO before any sweep: not open, no workflow is started for it.
    answered = await record_by_dpo(world, dpo, patient, lpb.RIGHTS_REQUEST_CHANNEL_DPO_EMAIL, now)
    async with world.person(dpo, Role.DPO) as conn:
        await ipb_grpc.IdentityServiceStub(conn).RecordRightsRequestAnswer(
            ipb.RecordRightsRequestAnswerRequest(
                idempotency_key=f"answer-{answered.request_id}",
                request_id=answered.request_id,
                outcome=lpb.RIGHTS_REQUEST_OUTCOME_GRANTED,
            )
        )
    assert await has_no_workflow(world, letter.request_id)
    assert await has_no_workflow(world, email.request_id)

    first = await sweep(world, now, "sweep_rights_requests")
    assert first.rights_requests is not None
    assert first.rights_requests.listed == 3
    assert first.rights_requests.started == 2 and first.rights_requests.existing == 1
    assert await has_no_workflow(world, answered.request_id)
    # The portal's workflow is the one that was running (not restarted, not duplicated).
    assert (await portal.describe()).run_id == portal.result_run_id

    # The letter's workflow keeps its deadline: one month after the letter was received.
    handle = world.client.get_workflow_handle(rights_request_workflow_id(letter.request_id))
    view: RightsRequestView = await until(
        handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED"
    )
    received = letter.received_at.ToDatetime(tzinfo=UTC)
    assert view.due_at == add_months(received, 1) == letter.due_at.ToDatetime(tzinfo=UTC)
    run_id = (await handle.describe()).run_id

    # A second sweep starts nothing new; the workflows it found are the same runs.
    second = await sweep(world, now)
    assert second.rights_requests is not None
    assert second.rights_requests.listed == 3
    assert second.rights_requests.started == 0 and second.rights_requests.existing == 3
    assert (await handle.describe()).run_id == run_id

    # It is the deadline clock: a week before the deadline the DPO is reminded.
    assert view.now is not None
    await world.env.fast_forward(handle, view.due_at - view.now - timedelta(days=6))
    view = await until(handle, RightsRequestWorkflow.state, lambda v: len(v.reminders_sent) == 1)
    assert view.reminders_sent == [f"{view.due_at.date().isoformat()}:-7d"]

    # A workflow terminated while its request is still open is started again (a completed
    # one never would be); the new run reads the same request and deadline.
    await handle.terminate("operator")
    third = await sweep(world, now)
    assert third.rights_requests is not None and third.rights_requests.started == 1
    restarted = world.client.get_workflow_handle(rights_request_workflow_id(letter.request_id))
    view = await until(restarted, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED")
    assert view.due_at == add_months(received, 1)
    assert (await restarted.describe()).run_id != run_id

    for request_id in (letter.request_id, email.request_id, portal_id):
        await world.client.get_workflow_handle(rights_request_workflow_id(request_id)).terminate("test over")


@pytest.mark.req("GDPR-08")
@pytest.mark.req("GDPR-01")
async def test_changed_signal_rereads_an_extension_and_an_answer_recorded_directly_in_identity(
    world: World,
) -> None:
    email = f"p-{uuid.uuid4().hex[:8]}@example.org"
    patient = await world.sign_up(email=email)
    dpo = await world.staff()
    request_id = await file_request(world, patient, lpb.RIGHTS_REQUEST_KIND_ACCESS)
    handle = await world.client.start_workflow(
        RightsRequestWorkflow.run,
        RightsRequestInput(request_id=request_id),
        id=rights_request_workflow_id(request_id),
        task_queue=world.queue,
    )
    view: RightsRequestView = await until(
        handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED"
    )
    first_due = view.due_at

    async with world.person(dpo, Role.DPO) as conn:
        desk = ipb_grpc.IdentityServiceStub(conn)
        # The DPO extends the deadline in identity, outside the workflow, then signals it.
        extended = await desk.ExtendRightsRequestDeadline(
            ipb.ExtendRightsRequestDeadlineRequest(
                idempotency_key=f"extend-{request_id}",
                request_id=request_id,
                reason=ipb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
                extension_months=2,
            )
        )
        new_due = extended.rights_request.due_at.ToDatetime(tzinfo=UTC)
        assert new_due == add_months(first_due, 2)
        await handle.signal(RightsRequestWorkflow.changed)
        # Seen at once (no time skipped: not at the next reminder), the person told once.
        view = await until(
            handle, RightsRequestWorkflow.state, lambda v: v.due_at == new_due and v.extension_notices == 1
        )
        assert view.status == "EXTENDED" and view.extension_months == 2
        # Signalled again with nothing new: nobody is told twice.
        await handle.signal(RightsRequestWorkflow.changed)
        await asyncio.sleep(0.5)
        view = await until(handle, RightsRequestWorkflow.state, lambda v: v.extension_notices == 1)
        # The DPO records the answer directly: the signal ends the deadline at once.
        await desk.RecordRightsRequestAnswer(
            ipb.RecordRightsRequestAnswerRequest(
                idempotency_key=f"answer-{request_id}",
                request_id=request_id,
                outcome=lpb.RIGHTS_REQUEST_OUTCOME_REFUSED,
            )
        )
    await handle.signal(RightsRequestWorkflow.changed)
    await continued_as_retention(world, handle, "rights_request_changed_directly")
    told = [
        body for recipient, body in await emails_of(world, "rights_request_extended") if recipient == email
    ]
    assert len(told) == 1


class SlowRequestFakes:
    """A rights request whose first read from identity is held until the test releases it."""

    def __init__(self, request_id: str, now: datetime) -> None:
        self.facts = RequestFacts(
            request_id=request_id,
            subject_id="subject-1",
            kind="ACCESS",
            status="RECEIVED",
            received_at=now,
            due_at=add_months(now, 1),
        )
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    def all(self) -> list[Any]:
        @activity.defn(name="lifecycle.get_rights_request")
        async def get_rights_request(request_id: str) -> RequestFacts:
            self.reading.set()
            await self.release.wait()
            return self.facts

        @activity.defn(name="lifecycle.answer_rights_request")
        async def answer_rights_request(data: AnswerCallInput) -> RequestFacts:
            self.facts = self.facts.model_copy(update={"status": "ANSWERED", "outcome": data.outcome})
            return self.facts

        @activity.defn(name="lifecycle.get_subject_status")
        async def get_subject_status(data: SubjectIdInput) -> SubjectStatus:
            return SubjectStatus(exists=False)

        return [get_rights_request, answer_rights_request, get_subject_status]


def not_loaded(error: WorkflowUpdateFailedError | WorkflowQueryFailedError) -> bool:
    if isinstance(error, WorkflowQueryFailedError):
        return "still being loaded" in str(error)
    cause = error.cause
    return (
        isinstance(cause, ApplicationError)
        and cause.type == REQUEST_NOT_LOADED
        and "still being loaded" in cause.message
        and "retry" in cause.message
    )


@pytest.mark.req("GDPR-08")
async def test_updates_say_retry_while_the_workflow_has_not_read_its_request(world: World) -> None:
    request_id = str(uuid.uuid4())
    fakes = SlowRequestFakes(request_id, datetime.now(UTC))
    queue = f"fake-lifecycle-{uuid.uuid4().hex[:8]}"
    async with Worker(world.client, task_queue=queue, workflows=WORKFLOWS, activities=fakes.all()):
        handle = await world.client.start_workflow(
            RightsRequestWorkflow.run,
            RightsRequestInput(request_id=request_id),
            id=rights_request_workflow_id(request_id),
            task_queue=queue,
        )
        await asyncio.wait_for(fakes.reading.wait(), timeout=20)
        # Not "already answered": the request is being read; nothing was done, retry.
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(
                RightsRequestWorkflow.extend, ExtendInput(reason="COMPLEXITY", months=1)
            )
        assert not_loaded(refused.value)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(RightsRequestWorkflow.answer, AnswerInput(outcome="GRANTED"))
        assert not_loaded(refused.value)
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await handle.execute_update(RightsRequestWorkflow.fulfil)
        assert not_loaded(refused.value)
        with pytest.raises(WorkflowQueryFailedError) as unread:
            await handle.query(RightsRequestWorkflow.state)
        assert not_loaded(unread.value)

        # Read: the same update is accepted now (the request is answered; the chain goes on
        # as the record's retention, gone in this fake world).
        fakes.release.set()
        await until(handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED")
        answered = await handle.execute_update(RightsRequestWorkflow.answer, AnswerInput(outcome="GRANTED"))
        assert answered.status == "ANSWERED"
        chain = world.client.get_workflow_handle(handle.id, result_type=RetentionResult)
        assert (await chain.result()).outcome == "GONE"
