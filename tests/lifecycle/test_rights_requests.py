"""Rights requests carried out by the workflow on the real services (issue 10): an erasure
refused for now while a case is in progress, answered within the deadline and carried
out once the case has ended; and an access/portability export that carries the person's
uploaded documents, pointed to by their FHIR DocumentReferences, stored in the dossier as
the person's own document and named by the answer (the person downloads it, nobody else;
the worker's disk keeps no copy)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.documentreference import DocumentReference
from secondopinion.billing.v1 import billing_pb2 as bpb
from secondopinion.billing.v1 import billing_pb2_grpc as bpb_grpc
from secondopinion.dossier.v1 import dossier_pb2 as dpb
from secondopinion.dossier.v1 import dossier_pb2_grpc as dpb_grpc
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from sqlalchemy import select
from temporalio import activity
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from services.notifications.models import Notification
from services.shared.auth import Role
from services.shared.db import create_engine, session_factory
from tests.dossier import samples
from tests.lifecycle.conftest import World, continued_as_retention
from tests.lifecycle.test_retention_workflows import until, world_worker_identity
from tests.lifecycle.test_service_lifecycle import as_person, as_service, code_of, patient_with_history
from tests.support.stack import Stack
from workflows.lifecycle.models import (
    AnswerCallInput,
    AnswerInput,
    CasesInProgress,
    ExtendInput,
    NotifyInput,
    RequestFacts,
    RetentionResult,
    RightsRequestInput,
    RightsRequestView,
    StepInput,
    StepReport,
    SubjectIdInput,
    SubjectStatus,
)
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import WORKFLOWS, build_lifecycle_worker, lifecycle_activities
from workflows.lifecycle.workflows import RightsRequestWorkflow, rights_request_workflow_id
from workflows.settings import TemporalSettings
from workflows.temporal_client import with_data_converter

S = dpb


async def case_status(stack: Stack, case_id: str, *statuses: int) -> None:
    """What the case workflow reports as the case moves on (it is the platform: `worker`)."""
    async with as_service(stack, "dossier", "worker") as channel:
        dossier = dpb_grpc.DossierServiceStub(channel)
        for status in statuses:
            await dossier.UpdateCaseStatus(
                dpb.UpdateCaseStatusRequest(
                    idempotency_key=f"status-{case_id}-{status}",
                    case_id=case_id,
                    status=status,  # type: ignore[arg-type]
                )
            )


async def case_seen_by_the_platform(stack: Stack, case_id: str) -> dpb.Case:
    """The case as the case workflow reads it; a restricted file would refuse it."""
    async with as_service(stack, "dossier", "worker") as channel:
        return (await dpb_grpc.DossierServiceStub(channel).GetCase(dpb.GetCaseRequest(case_id=case_id))).case


async def file_request(world: World, account_id: str, kind: int) -> str:
    async with world.person(account_id) as channel:
        recorded = await ipb_grpc.IdentityServiceStub(channel).RecordRightsRequest(
            ipb.RecordRightsRequestRequest(
                idempotency_key=f"rr-{kind}-{account_id}",
                subject_id=account_id,
                kind=kind,  # type: ignore[arg-type]
                channel=lpb.RIGHTS_REQUEST_CHANNEL_PORTAL,
                identity_verification=lpb.IDENTITY_VERIFICATION_METHOD_STEP_UP,
            )
        )
    return str(recorded.rights_request.request_id)


async def start(world: World, request_id: str, **policy: Any) -> WorkflowHandle[Any, Any]:
    handle = await world.client.start_workflow(
        RightsRequestWorkflow.run,
        RightsRequestInput(request_id=request_id, **policy),
        id=rights_request_workflow_id(request_id),
        task_queue=world.queue,
    )
    await until(handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED")
    return handle


async def stored(world: World, request_id: str) -> lpb.RightsRequest:
    reply = await world_worker_identity(world).GetRightsRequest(
        ipb.GetRightsRequestRequest(request_id=request_id)
    )
    return reply.rights_request


async def restricted(world: World, account_id: str) -> bool:
    reply = await world_worker_identity(world).GetSubjectRetention(
        lpb.GetSubjectRetentionRequest(subject_id=account_id)
    )
    return bool(reply.restricted)


async def notices_to_the_person(world: World, handle: WorkflowHandle[Any, Any]) -> list[str]:
    """The kinds of the notices the workflow asked for (decoded from its sealed history)."""
    kinds: list[str] = []
    history = await world.client.get_workflow_handle(
        handle.id, run_id=handle.first_execution_run_id
    ).fetch_history()
    for event in history.events:
        if not event.HasField("activity_task_scheduled_event_attributes"):
            continue
        scheduled = event.activity_task_scheduled_event_attributes
        if scheduled.activity_type.name != "lifecycle.notify_rights_request":
            continue
        (notice,) = await world.client.data_converter.decode(scheduled.input.payloads, [NotifyInput])
        assert isinstance(notice, NotifyInput)
        if notice.kind.startswith("PERSON_"):
            kinds.append(notice.kind)
    return kinds


async def emails_of(world: World, template: str) -> list[tuple[str, str]]:
    """(recipient, plain text) of the emails notifications accepted for a template (its
    database: the stack sends over SMTP, so nothing reaches the development outbox)."""
    engine = create_engine(world.stack.database_urls["notifications"])
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(
                select(Notification.recipient, Notification.text_body).where(
                    Notification.template == template
                )
            )
            return [(str(recipient), str(body)) for recipient, body in rows]
    finally:
        await engine.dispose()


async def wait_answered(world: World, request_id: str, limit: float = 20) -> lpb.RightsRequest:
    """The final answer (the workflow then continues as the record's retention workflow)."""
    deadline = time.monotonic() + limit
    while True:
        request = await stored(world, request_id)
        if request.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED:
            return request
        if time.monotonic() > deadline:
            raise AssertionError(f"not answered: {lpb.RightsRequestStatus.Name(request.status)}")
        await asyncio.sleep(0.05)


@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-08")
@pytest.mark.req("BIL-09")
async def test_erasure_refused_while_a_case_is_in_progress_is_carried_out_once_it_is_closed(
    world: World,
) -> None:
    stack = world.stack
    subject = await patient_with_history(stack)
    await case_status(
        stack,
        subject.case_id,
        S.CASE_STATUS_SUBMITTED,
        S.CASE_STATUS_AWAITING_ASSIGNMENT,
        S.CASE_STATUS_IN_REVIEW,
    )
    request_id = await file_request(world, subject.account_id, lpb.RIGHTS_REQUEST_KIND_ERASURE)
    handle = await start(world, request_id, postponed_recheck_days=5)

    # Refused for now: recorded as the answer, within the deadline.
    postponed = await handle.execute_update(RightsRequestWorkflow.fulfil)
    assert postponed.outcome == "REFUSED_CASE_IN_PROGRESS" and postponed.report is None
    first = await stored(world, request_id)
    assert first.status == lpb.RIGHTS_REQUEST_STATUS_POSTPONED
    assert first.outcome == lpb.RIGHTS_REQUEST_OUTCOME_REFUSED_CASE_IN_PROGRESS
    answered_at = first.answered_at.ToDatetime(tzinfo=UTC)
    assert answered_at <= first.due_at.ToDatetime(tzinfo=UTC)
    # Nothing was touched: the case goes on (a restricted file would refuse the platform).
    assert (await case_seen_by_the_platform(stack, subject.case_id)).status == S.CASE_STATUS_IN_REVIEW
    assert not await restricted(world, subject.account_id)
    account = await world.identity.GetAccount(ipb.GetAccountRequest(account_id=subject.account_id))
    assert account.account.email == subject.email
    # The person is told (an email with a link to the request, no health data).
    assert await notices_to_the_person(world, handle) == ["PERSON_POSTPONED"]
    ((recipient, body),) = await emails_of(world, "rights_request_postponed")
    assert recipient == subject.email and "effacement" in body and "/privacy/requests/" in body
    # Answered in time: nothing to extend, nothing to carry out by hand.
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(RightsRequestWorkflow.extend, ExtendInput(reason="COMPLEXITY", months=1))
    assert "already answered" in str(refused.value.cause)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(RightsRequestWorkflow.fulfil)
    assert "case in progress" in str(refused.value.cause)
    async with world.person(await world.staff(), Role.DPO) as channel:
        assert (
            await code_of(
                ipb_grpc.IdentityServiceStub(channel).ExtendRightsRequestDeadline(
                    ipb.ExtendRightsRequestDeadlineRequest(
                        idempotency_key=f"ext-{request_id}",
                        request_id=request_id,
                        reason=ipb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
                        extension_months=1,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )

    # The deadline passes while the case is still in progress: checked every 5 days, no
    # reminder to the DPO (the person was answered), nothing erased.
    view: RightsRequestView = await handle.query(RightsRequestWorkflow.state)
    assert view.now is not None
    await world.env.fast_forward(handle, view.due_at - view.now + timedelta(days=3))
    view = await until(handle, RightsRequestWorkflow.state, lambda v: v.postponed_checks >= 6)
    assert view.status == "POSTPONED" and view.reminders_sent == []
    assert view.answered_at == answered_at
    assert (await case_seen_by_the_platform(stack, subject.case_id)).status == S.CASE_STATUS_IN_REVIEW

    # The report is delivered and the case closed: at the next check, the erasure.
    await case_status(stack, subject.case_id, S.CASE_STATUS_REPORT_DELIVERED, S.CASE_STATUS_CLOSED)
    await world.env.fast_forward(handle, timedelta(days=5))
    final = await wait_answered(world, request_id)
    # What the law keeps (invoices, consent evidence) is restricted instead: the answer says so.
    assert final.outcome == lpb.RIGHTS_REQUEST_OUTCOME_PARTIALLY_GRANTED_RESTRICTED
    # The deadline is measured on the first answer; it stays.
    assert final.answered_at.ToDatetime(tzinfo=UTC) == answered_at
    assert (
        await code_of(world.identity.GetAccount(ipb.GetAccountRequest(account_id=subject.account_id)))
        == grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(case_seen_by_the_platform(stack, subject.case_id)) == grpc.StatusCode.NOT_FOUND
    async with as_person(stack, "billing", subject.account_id, Role.PATIENT) as channel:
        assert (
            await code_of(
                bpb_grpc.BillingServiceStub(channel).GetOrder(bpb.GetOrderRequest(order_id=subject.order_id))
            )
            == grpc.StatusCode.NOT_FOUND
        )
    await continued_as_retention(world, handle, "rights_request_erasure_postponed")


@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
async def test_the_dossiers_own_refusal_postpones_the_erasure_and_lifts_the_restriction(world: World) -> None:
    """A case billing does not know yet (submitted, no order). The first check now asks the
    dossier itself (ListSubjectCases), which sees it: the erasure is postponed before any
    restriction is placed. (Were the check to miss a case, e.g. one created between the
    check and the purge, the dossier refuses the erasure before anything is deleted and
    the restriction the attempt placed is lifted; that path is no longer reached here.)"""
    stack = world.stack
    subject = await patient_with_history(stack)
    await case_status(stack, subject.case_id, S.CASE_STATUS_CANCELLED)
    async with as_person(stack, "dossier", subject.account_id, Role.PATIENT) as channel:
        second = (
            await dpb_grpc.DossierServiceStub(channel).CreateCase(
                dpb.CreateCaseRequest(
                    idempotency_key=f"second-{subject.account_id}",
                    filing_capacity=dpb.FILING_CAPACITY_SELF,
                    therapeutic_area="cardiology",
                    purpose=dpb.CASE_PURPOSE_SECOND_OPINION,
                    doctor_choice_mode=dpb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                )
            )
        ).case
    await case_status(stack, second.case_id, S.CASE_STATUS_SUBMITTED)
    request_id = await file_request(world, subject.account_id, lpb.RIGHTS_REQUEST_KIND_ERASURE)
    handle = await start(world, request_id)

    postponed = await handle.execute_update(RightsRequestWorkflow.fulfil)
    assert postponed.outcome == "REFUSED_CASE_IN_PROGRESS"
    assert (await stored(world, request_id)).status == lpb.RIGHTS_REQUEST_STATUS_POSTPONED
    assert not await restricted(world, subject.account_id)
    assert (await case_seen_by_the_platform(stack, second.case_id)).status == S.CASE_STATUS_SUBMITTED
    async with as_person(stack, "billing", subject.account_id, Role.PATIENT) as channel:
        order = await bpb_grpc.BillingServiceStub(channel).GetOrder(
            bpb.GetOrderRequest(order_id=subject.order_id)
        )
        assert order.order.order_id == subject.order_id

    # The case is cancelled; whoever knows it (the DPO desk, the case workflow) says so.
    await case_status(stack, second.case_id, S.CASE_STATUS_CANCELLED)
    await handle.signal(RightsRequestWorkflow.changed)
    final = await wait_answered(world, request_id)
    assert final.outcome == lpb.RIGHTS_REQUEST_OUTCOME_PARTIALLY_GRANTED_RESTRICTED
    assert await code_of(case_seen_by_the_platform(stack, second.case_id)) == grpc.StatusCode.NOT_FOUND
    await continued_as_retention(world, handle, "rights_request_erasure_refused_by_dossier")


def upload_messages(
    data: bytes, case_id: str, name: str, purpose: int = dpb.DOCUMENT_PURPOSE_MEDICAL_RECORD
) -> Iterator[dpb.UploadDocumentRequest]:
    yield dpb.UploadDocumentRequest(
        idempotency_key=f"upload-{uuid.uuid4()}",
        metadata=dpb.UploadDocumentMetadata(
            case_id=case_id,
            purpose=purpose,  # type: ignore[arg-type]
            file_name=name,
            declared_size_bytes=len(data),
        ),
    )
    for start_at in range(0, len(data), 64 * 1024):
        yield dpb.UploadDocumentRequest(chunk=data[start_at : start_at + 64 * 1024])


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("CASE-04")
@pytest.mark.req("SEC-01")
async def test_portability_export_carries_the_uploaded_document_its_reference_points_to(world: World) -> None:
    stack = world.stack
    account_id = await world.sign_up()
    data = samples.pdf(b"compte rendu operatoire", pages=2)
    proof = samples.image("PNG")
    async with as_person(stack, "dossier", account_id, Role.PATIENT) as channel:
        dossier = dpb_grpc.DossierServiceStub(channel)
        case = (
            await dossier.CreateCase(
                dpb.CreateCaseRequest(
                    idempotency_key=f"case-{account_id}",
                    filing_capacity=dpb.FILING_CAPACITY_SELF,
                    therapeutic_area="cardiology",
                    purpose=dpb.CASE_PURPOSE_SECOND_OPINION,
                    doctor_choice_mode=dpb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                )
            )
        ).case
        document = (
            await dossier.UploadDocument(upload_messages(data, case.case_id, "compte rendu.pdf"))
        ).document
        # An account-level proof of theirs travels in the export too.
        identity_proof = (
            await dossier.UploadDocument(
                upload_messages(proof, "", "piece.png", dpb.DOCUMENT_PURPOSE_IDENTITY_PROOF)
            )
        ).document
    # Scanned by the real clamd: clean, so it is exportable.
    assert document.status == dpb.DOCUMENT_STATUS_AVAILABLE
    assert identity_proof.status == dpb.DOCUMENT_STATUS_AVAILABLE

    request_id = await file_request(world, account_id, lpb.RIGHTS_REQUEST_KIND_PORTABILITY)
    handle = await start(world, request_id)
    fulfilled = await handle.execute_update(RightsRequestWorkflow.fulfil)
    assert fulfilled.outcome == "GRANTED" and fulfilled.export is not None
    export = fulfilled.export
    # The answer names the dossier document holding the archive; no copy stays on the worker.
    answered = await stored(world, request_id)
    assert answered.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED
    assert answered.answer_document_id == export.document_id != ""
    assert not (world.export_dir / export.object_key).exists()
    assert not (world.export_dir / request_id).exists()
    # The person downloads the same bytes the worker wrote.
    meta, archive_bytes = await world.answer_archive(account_id, export.document_id)
    assert hashlib.sha256(archive_bytes).hexdigest() == export.sha256_hex == meta.sha256_hex
    assert len(archive_bytes) == export.size_bytes
    assert meta.purpose == dpb.DOCUMENT_PURPOSE_RIGHTS_REQUEST_ANSWER and meta.case_id == ""
    assert meta.content_type == dpb.DOCUMENT_CONTENT_TYPE_ZIP
    assert meta.source == dpb.DOCUMENT_SOURCE_PLATFORM and meta.uploaded_by_account_id == account_id
    assert meta.status == dpb.DOCUMENT_STATUS_AVAILABLE  # scanned, archive and all
    assert meta.file_name == f"export-{request_id[:8]}.zip"
    # Nobody else: another person, whatever they guess.
    stranger = await world.sign_up()
    assert await code_of(world.answer_archive(stranger, export.document_id)) == grpc.StatusCode.NOT_FOUND

    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        entry = f"documents/{document.document_id}-compte_rendu.pdf"
        assert archive.read(entry) == data
        assert archive.read(f"documents/{identity_proof.document_id}-piece.png") == proof
        raw = archive.read("fhir-bundle.json")
        assert "Files not included" not in archive.read("summary.txt").decode()
    # Valid FHIR R4 (the R4B models), and its DocumentReference points to the file.
    bundle = Bundle.model_validate_json(raw)
    references = [e.resource for e in bundle.entry or [] if isinstance(e.resource, DocumentReference)]
    (reference,) = [r for r in references if r.id == document.document_id]
    attachment = reference.content[0].attachment
    assert attachment.url == entry
    assert attachment.title == "compte rendu.pdf" and attachment.size == len(data)
    assert attachment.contentType == "application/pdf"
    assert [i.value for i in reference.identifier or []] == [hashlib.sha256(data).hexdigest()]
    assert reference.context is not None and reference.context.related
    assert reference.context.related[0].reference == f"ServiceRequest/{case.case_id}"
    # Re-read: what we wrote parses back to the same resources.
    again = Bundle.model_validate_json(bundle.model_dump_json())
    assert json.loads(again.model_dump_json()) == json.loads(bundle.model_dump_json())
    assert {type(e.resource).__name__ for e in again.entry or []} >= {
        "Patient",
        "ServiceRequest",
        "DocumentReference",
    }
    assert datetime.now(UTC) - timedelta(minutes=5) < datetime.fromisoformat(
        str(json.loads(raw)["timestamp"])
    )
    await continued_as_retention(world, handle, "rights_request_portability")

    # SEC-01: the person's access history names the platform storing the answer and their
    # own download.
    async with as_person(stack, "dossier", account_id, Role.PATIENT) as channel:
        history = (
            await dpb_grpc.DossierServiceStub(channel).ListAccessLog(dpb.ListAccessLogRequest())
        ).entries
    about = {(e.actor_account_id, e.action) for e in history if e.object_id == export.document_id}
    assert ("worker", dpb.ACCESS_ACTION_CREATE) in about
    assert (account_id, dpb.ACCESS_ACTION_DOWNLOAD) in about
    assert (stranger, dpb.ACCESS_ACTION_REFUSED) in about

    # A later access request: a new answer; the earlier one is named in the bundle, not copied.
    second_id = await file_request(world, account_id, lpb.RIGHTS_REQUEST_KIND_ACCESS)
    second_handle = await start(world, second_id)
    second = await second_handle.execute_update(RightsRequestWorkflow.fulfil)
    assert second.export is not None and second.export.document_id not in ("", export.document_id)
    _, second_bytes = await world.answer_archive(account_id, second.export.document_id)
    with zipfile.ZipFile(io.BytesIO(second_bytes)) as archive:
        assert not [n for n in archive.namelist() if export.document_id in n]
        assert "Files not included" not in archive.read("summary.txt").decode()
        named = Bundle.model_validate_json(archive.read("fhir-bundle.json"))
    assert export.document_id in {e.resource.id for e in named.entry or [] if e.resource is not None}
    await continued_as_retention(world, second_handle, None)


class PostponedErasureFakes:
    """The lifecycle activities under their real names, for a postponed erasure whose
    carrying out a service refuses (neither a case in progress nor an outage)."""

    def __init__(self, request_id: str, now: datetime) -> None:
        self.facts = RequestFacts(
            request_id=request_id,
            subject_id="subject-1",
            kind="ERASURE",
            status="POSTPONED",
            received_at=now,
            due_at=now + timedelta(days=30),
            outcome="REFUSED_CASE_IN_PROGRESS",
            answered_at=now,
        )
        self.steps: list[str] = []
        self.notices: list[str] = []
        self.refuse_purge = True

    def all(self) -> list[Any]:
        @activity.defn(name="lifecycle.get_rights_request")
        async def get_rights_request(request_id: str) -> RequestFacts:
            return self.facts

        @activity.defn(name="lifecycle.count_cases_in_progress")
        async def count_cases_in_progress(data: SubjectIdInput) -> CasesInProgress:
            return CasesInProgress()

        @activity.defn(name="lifecycle.get_subject_status")
        async def get_subject_status(data: SubjectIdInput) -> SubjectStatus:
            return SubjectStatus(
                exists=self.facts.status != "ANSWERED", kind="RIGHTS_REQUEST", stage="PURGED"
            )

        @activity.defn(name="lifecycle.run_step")
        async def run_step(data: StepInput) -> StepReport:
            self.steps.append(data.idempotency_key.rsplit(":", 1)[-1] if data.step == "PURGE" else data.step)
            if data.step == "PURGE" and self.refuse_purge:
                raise ApplicationError("FAILED_PRECONDITION: a legal hold is in force", non_retryable=True)
            return StepReport(subject_id=data.subject_id, step=data.step)

        @activity.defn(name="lifecycle.notify_rights_request")
        async def notify_rights_request(data: NotifyInput) -> str:
            self.notices.append(f"{data.kind}:{data.idempotency_key.rsplit(':', 1)[-1]}")
            return ""

        @activity.defn(name="lifecycle.answer_rights_request")
        async def answer_rights_request(data: AnswerCallInput) -> RequestFacts:
            self.facts = self.facts.model_copy(update={"status": "ANSWERED", "outcome": data.outcome})
            return self.facts

        return [
            get_rights_request,
            count_cases_in_progress,
            get_subject_status,
            run_step,
            notify_rights_request,
            answer_rights_request,
        ]


@pytest.mark.req("GDPR-03")
async def test_a_postponed_erasure_a_service_refuses_tells_the_dpo_once_and_keeps_checking(
    world: World,
) -> None:
    request_id = str(uuid.uuid4())
    fakes = PostponedErasureFakes(request_id, datetime.now(UTC))
    queue = f"fake-lifecycle-{uuid.uuid4().hex[:8]}"
    async with Worker(world.client, task_queue=queue, workflows=WORKFLOWS, activities=fakes.all()):
        handle = await world.client.start_workflow(
            RightsRequestWorkflow.run,
            # As a run continued as new after one attempt starts (from the POSTPONED record).
            RightsRequestInput(request_id=request_id, erasure_attempts=1),
            id=rights_request_workflow_id(request_id),
            task_queue=queue,
        )
        view = await until(handle, RightsRequestWorkflow.state, lambda v: v.status == "POSTPONED")
        await world.env.fast_forward(handle, timedelta(days=3, hours=1))
        view = await until(handle, RightsRequestWorkflow.state, lambda v: v.postponed_checks == 3)
        # Each check tries again under its own keys (counted across runs); the DPO is told
        # once, not every day.
        await until(handle, RightsRequestWorkflow.state, lambda v: len(fakes.steps) == 6)
        assert fakes.steps == ["RESTRICT", "1", "RESTRICT", "2", "RESTRICT", "3"]
        assert fakes.notices == ["DPO_REMINDER:erasure-failed"]
        assert view.status == "POSTPONED" and view.reminders_sent == []
        # The DPO answers it by hand: the workflow ends its checks and the request's chain
        # goes on as the record's retention (already purged in this fake world: gone).
        answered = await handle.execute_update(RightsRequestWorkflow.answer, AnswerInput(outcome="REFUSED"))
        assert answered.status == "ANSWERED" and answered.outcome == "REFUSED"
        chain = world.client.get_workflow_handle(handle.id, result_type=RetentionResult)
        assert (await chain.result()).outcome == "GONE"


@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
async def test_a_case_the_first_check_missed_makes_the_dossier_refuse_and_the_restriction_is_lifted(
    world: World, payload_settings: TemporalSettings
) -> None:
    """A case appearing between the workflow's check and the purge (simulated: the check
    reports none while a case is in progress). The erasure restricts the subject, the
    dossier refuses the purge before anything is deleted, the restriction the attempt
    placed is lifted, and the person is answered "refused for now"."""
    stack = world.stack
    subject = await patient_with_history(stack)
    await case_status(stack, subject.case_id, S.CASE_STATUS_CANCELLED)
    async with as_person(stack, "dossier", subject.account_id, Role.PATIENT) as channel:
        case = (
            await dpb_grpc.DossierServiceStub(channel).CreateCase(
                dpb.CreateCaseRequest(
                    idempotency_key=f"race-{subject.account_id}",
                    filing_capacity=dpb.FILING_CAPACITY_SELF,
                    therapeutic_area="cardiology",
                    purpose=dpb.CASE_PURPOSE_SECOND_OPINION,
                    doctor_choice_mode=dpb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                )
            )
        ).case
    await case_status(stack, case.case_id, S.CASE_STATUS_SUBMITTED)
    request_id = await file_request(world, subject.account_id, lpb.RIGHTS_REQUEST_KIND_ERASURE)
    settings = LifecycleSettings(
        task_queue=f"race-{uuid.uuid4().hex[:8]}",
        identity_target=stack.target("identity"),
        dossier_target=stack.target("dossier"),
        matching_target=stack.target("matching"),
        billing_target=stack.target("billing"),
        notifications_target=stack.target("notifications"),
        export_dir=world.export_dir,
    )

    @activity.defn(name="lifecycle.count_cases_in_progress")
    async def sees_no_case(data: SubjectIdInput) -> CasesInProgress:
        return CasesInProgress()

    sealed = with_data_converter(world.client, payload_settings)
    async with lifecycle_activities(sealed, settings, stack.auth) as real:
        activities = [a for a in real.all() if a.__name__ != "count_cases_in_progress"] + [sees_no_case]
        async with build_lifecycle_worker(world.client, payload_settings, settings, activities):
            handle = await world.client.start_workflow(
                RightsRequestWorkflow.run,
                RightsRequestInput(request_id=request_id),
                id=rights_request_workflow_id(request_id),
                task_queue=settings.task_queue,
            )
            await until(handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED")
            postponed = await handle.execute_update(RightsRequestWorkflow.fulfil)
            assert postponed.outcome == "REFUSED_CASE_IN_PROGRESS"
            assert (await stored(world, request_id)).status == lpb.RIGHTS_REQUEST_STATUS_POSTPONED
            # Nothing was deleted and nothing stays restricted: the case goes on.
            assert not await restricted(world, subject.account_id)
            seen = await case_seen_by_the_platform(stack, case.case_id)
            assert seen.status == S.CASE_STATUS_SUBMITTED
            await handle.terminate("test over")
