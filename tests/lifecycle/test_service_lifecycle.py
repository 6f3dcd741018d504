"""Billing, matching, dossier and notifications through the lifecycle workflows (issue 10):
a subject with a case, an order and its invoices, a completed assignment and a sent email;
export as FHIR, archive, restriction and erasure with what the law keeps, on the real
services (SQLite and PostgreSQL for the RPCs, the Temporal dev server for the workflows)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle
from secondopinion.billing.v1 import billing_pb2 as bpb
from secondopinion.billing.v1 import billing_pb2_grpc as bpb_grpc
from secondopinion.dossier.v1 import dossier_pb2 as dpb
from secondopinion.dossier.v1 import dossier_pb2_grpc as dpb_grpc
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from secondopinion.matching.v1 import matching_pb2 as mpb
from secondopinion.matching.v1 import matching_pb2_grpc as mpb_grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.notifications.v1 import notifications_pb2_grpc as npb_grpc
from sqlalchemy import select

from deploy.seed import with_luhn_digit
from services.billing.models import ArchivedRecord
from services.dossier.models import SubjectKey as DossierSubjectKey
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from tests.lifecycle.conftest import World, continued_as_retention
from tests.lifecycle.test_retention_workflows import until
from tests.support.stack import Stack
from workflows.lifecycle.models import RightsRequestInput
from workflows.lifecycle.workflows import RightsRequestWorkflow, rights_request_workflow_id

NOW = datetime.now(UTC)


def as_service(stack: Stack, service: str, issuer: str) -> grpc.aio.Channel:
    return open_channel(
        stack.target(service), ServiceTokenProvider(TokenSigner.from_keys_dir(stack.auth.keys_dir, issuer))
    )


def as_person(stack: Stack, service: str, account_id: str, role: Role) -> grpc.aio.Channel:
    signer = stack.identity_tokens()
    return open_channel(stack.target(service), lambda: signer.mint(account_id, role)[0])


def resource_type(entry: Any) -> str:
    assert entry.resource is not None
    return str(entry.resource.get_resource_type())


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    return error.value.code()


@dataclass
class Subject:
    account_id: str
    email: str
    case_id: str
    order_id: str
    invoice_ids: list[str]
    doctor_id: str
    doctor_account_id: str
    notification_id: str


async def patient_with_history(stack: Stack) -> Subject:
    """A patient with a case (encrypted notes), a covered order and its invoices, a
    completed assignment and an email sent to them."""
    tag = uuid.uuid4().hex[:8]
    email = f"lc-{tag}@example.org"
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        account_id = (
            await ipb_grpc.IdentityServiceStub(channel).SignUp(
                ipb.SignUpRequest(
                    idempotency_key=f"signup-{tag}",
                    email=email,
                    phone_number="+33 6 12 34 56 78",
                    password="Correct-Horse-9",
                    declared_age=40,
                    locale="fr",
                )
            )
        ).account_id
    async with as_person(stack, "dossier", account_id, Role.PATIENT) as channel:
        dossier = dpb_grpc.DossierServiceStub(channel)
        case = (
            await dossier.CreateCase(
                dpb.CreateCaseRequest(
                    idempotency_key=f"case-{tag}",
                    filing_capacity=dpb.FILING_CAPACITY_SELF,
                    therapeutic_area="cardiology",
                    purpose=dpb.CASE_PURPOSE_SECOND_OPINION,
                    doctor_choice_mode=dpb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                )
            )
        ).case
        await dossier.SaveCaseNotes(
            dpb.SaveCaseNotesRequest(
                idempotency_key=f"n-{tag}", case_id=case.case_id, text="douleur thoracique"
            )
        )
    async with (
        as_service(stack, "billing", "ops") as ops_channel,
        as_service(stack, "billing", "worker") as worker_channel,
        as_service(stack, "billing", "gateway") as gateway_channel,
    ):
        ops, worker = bpb_grpc.BillingServiceStub(ops_channel), bpb_grpc.BillingServiceStub(worker_channel)
        order = (
            await worker.CreateOrder(
                bpb.CreateOrderRequest(
                    idempotency_key=f"order-{tag}",
                    case_id=case.case_id,
                    payer_account_id=account_id,
                    purpose=bpb.CASE_PURPOSE_SECOND_OPINION,
                    therapeutic_area="cardiology",
                    doctor_count=1,
                )
            )
        ).order
        partner = await ops.CreatePartner(
            bpb.CreatePartnerRequest(
                idempotency_key=f"partner-{tag}", name=f"Mutuelle {tag}", kind=bpb.PARTNER_KIND_MUTUELLE
            )
        )
        agreement = await ops.CreatePartnerAgreement(
            bpb.CreatePartnerAgreementRequest(
                idempotency_key=f"agreement-{tag}",
                partner_id=partner.partner.partner_id,
                covered_purposes=[bpb.CASE_PURPOSE_SECOND_OPINION],
                starts_at=to_timestamp(NOW - timedelta(days=1)),
                ends_at=to_timestamp(NOW + timedelta(days=365)),
            )
        )
        codes = await ops.IssueCoverageCodes(
            bpb.IssueCoverageCodesRequest(
                idempotency_key=f"codes-{tag}",
                partner_id=partner.partner.partner_id,
                agreement_id=agreement.agreement.agreement_id,
                count=1,
                usage=bpb.COVERAGE_CODE_USAGE_SINGLE_USE,
                expires_at=to_timestamp(NOW + timedelta(days=30)),
            )
        )
        await bpb_grpc.BillingServiceStub(gateway_channel).ValidateCoverageCode(
            bpb.ValidateCoverageCodeRequest(
                idempotency_key=f"v-{tag}", order_id=order.order_id, code=codes.codes[0].code
            )
        )
        doctor_id = str(uuid.uuid4())
        await ops.RecordBillingMandate(
            bpb.RecordBillingMandateRequest(
                idempotency_key=f"mandate-{tag}",
                doctor_id=doctor_id,
                doctor_account_id=str(uuid.uuid4()),
                doctor_legal_name="Dr Claire Martin",
                covers_billing=True,
                covers_collection=True,
                starts_at=to_timestamp(NOW - timedelta(days=30)),
                mandate_text_version="2025-01",
                mandate_text_sha256_hex=hashlib.sha256(b"mandat").hexdigest(),
                signed_document_id=str(uuid.uuid4()),
                accepted_at=to_timestamp(NOW - timedelta(days=30)),
            )
        )
        issued = await worker.IssueInvoices(
            bpb.IssueInvoicesRequest(
                idempotency_key=f"invoices-{tag}", order_id=order.order_id, doctor_ids=[doctor_id]
            )
        )
    async with (
        as_service(stack, "matching", "ops") as ops_channel,
        as_service(stack, "matching", "worker") as worker_channel,
    ):
        doctor_account = f"doctor-{tag}"
        doctor = (
            await mpb_grpc.MatchingServiceStub(ops_channel).RegisterReferentDoctor(
                mpb.RegisterReferentDoctorRequest(
                    idempotency_key=f"register-{tag}",
                    account_id=doctor_account,
                    rpps_number=with_luhn_digit(f"1{int(tag, 16) % 10**9:09d}"),
                    display_name="Dr Lifecycle",
                    therapeutic_areas=["cardiology"],
                    languages=["fr"],
                    max_concurrent_cases=3,
                )
            )
        ).doctor
        matching = mpb_grpc.MatchingServiceStub(worker_channel)
        offer_request = mpb.CreateOfferRequest(
            idempotency_key=f"offer-{tag}",
            case_id=case.case_id,
            doctor_id=doctor.doctor_id,
            therapeutic_area="cardiology",
        )
        offer_request.respond_by.FromDatetime(NOW + timedelta(days=1))
        offer_request.review_deadline_at.FromDatetime(NOW + timedelta(days=7))
        offer = (await matching.CreateOffer(offer_request)).offer
    async with as_person(stack, "matching", doctor_account, Role.REFERENT_DOCTOR) as channel:
        assignment = (
            await mpb_grpc.MatchingServiceStub(channel).AcceptOffer(
                mpb.AcceptOfferRequest(idempotency_key=f"accept-{tag}", offer_id=offer.offer_id)
            )
        ).assignment
    async with as_service(stack, "matching", "worker") as channel:
        await mpb_grpc.MatchingServiceStub(channel).ReleaseAssignment(
            mpb.ReleaseAssignmentRequest(
                idempotency_key=f"done-{tag}",
                assignment_id=assignment.assignment_id,
                reason=mpb.RELEASE_REASON_COMPLETED,
            )
        )
    async with as_service(stack, "notifications", "worker") as channel:
        sent = await npb_grpc.NotificationsServiceStub(channel).SendNotification(
            npb.SendNotificationRequest(
                idempotency_key=f"mail-{tag}",
                template=npb.NOTIFICATION_TEMPLATE_RIGHTS_REQUEST_EXTENDED,
                channel=npb.CHANNEL_EMAIL,
                email=email,
                locale="fr",
                variables=npb.TemplateVariables(
                    first_name="Jeanne", link="http://127.0.0.1:8000/x", date=to_timestamp(NOW)
                ),
            )
        )
    return Subject(
        account_id,
        email,
        case.case_id,
        order.order_id,
        [i.invoice_id for i in issued.invoices],
        doctor.doctor_id,
        doctor_account,
        sent.notification_id,
    )


async def turnaround_count(stack: Stack, doctor_id: str) -> int:
    async with as_service(stack, "matching", "worker") as channel:
        stats = await mpb_grpc.MatchingServiceStub(channel).GetDoctorTurnaroundStats(
            mpb.GetDoctorTurnaroundStatsRequest(doctor_id=doctor_id)
        )
    return int(stats.completed_count)


@pytest.mark.req("RET-02")
@pytest.mark.req("RET-05")
@pytest.mark.req("RET-07")
@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("BIL-09")
async def test_billing_and_matching_lifecycle_rpcs(stack: Stack) -> None:
    subject = await patient_with_history(stack)
    assert subject.invoice_ids
    async with (
        as_service(stack, "billing", "worker") as channel,
        as_person(stack, "billing", subject.account_id, Role.PATIENT) as mine_channel,
    ):
        billing = bpb_grpc.BillingServiceStub(channel)
        mine = bpb_grpc.BillingServiceStub(mine_channel)
        # Only the lifecycle worker (and the DPO) reach these RPCs.
        assert (
            await code_of(
                mine.PurgeSubject(bpb.PurgeSubjectRequest(idempotency_key="x", subject_id=subject.account_id))
            )
            == grpc.StatusCode.PERMISSION_DENIED
        )
        assert (
            await code_of(
                billing.ExportSubjectData(bpb.ExportSubjectDataRequest(idempotency_key="e", subject_id=""))
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        cases = await billing.ListSubjectCaseIds(bpb.ListSubjectCaseIdsRequest(subject_id=subject.account_id))
        assert list(cases.case_ids) == [subject.case_id]
        # GDPR-05: the orders and invoices as FHIR R4 (validated, re-read).
        exported = await billing.ExportSubjectData(
            bpb.ExportSubjectDataRequest(
                idempotency_key="exp", subject_id=subject.account_id, rights_request_id="rr-1"
            )
        )
        bundle = Bundle.model_validate_json(exported.fhir_bundle_json)
        types = [resource_type(e) for e in bundle.entry or []]
        assert types.count("ChargeItem") == 1 and types.count("Invoice") == len(subject.invoice_ids)
        assert types.count("DocumentReference") == len(subject.invoice_ids)
        assert sorted(exported.invoice_ids) == sorted(subject.invoice_ids)
        # GDPR-04: restriction recorded, counted.
        restricted = await billing.RestrictSubject(
            bpb.RestrictSubjectRequest(
                idempotency_key="res",
                subject_id=subject.account_id,
                rights_request_id="rr-2",
                restricted=True,
            )
        )
        assert {c.category: c.count for c in restricted.affected}["orders"] == 1
        # RET-07: archived, out of every day-to-day path.
        archived = await billing.ArchiveSubject(
            bpb.ArchiveSubjectRequest(idempotency_key="arch", subject_id=subject.account_id)
        )
        counts = {c.category: c.count for c in archived.archived}
        assert counts["orders"] == 1 and counts["invoices"] == len(subject.invoice_ids)
        assert (
            await code_of(mine.GetOrder(bpb.GetOrderRequest(order_id=subject.order_id)))
            == grpc.StatusCode.NOT_FOUND
        )
        assert not (await mine.ListInvoices(bpb.ListInvoicesRequest())).invoices
        assert (
            await code_of(billing.GetInvoice(bpb.GetInvoiceRequest(invoice_id=subject.invoice_ids[0])))
            == grpc.StatusCode.NOT_FOUND
        )
        # Still exported from the archive; the case ids are still known for matching.
        again = await billing.ExportSubjectData(
            bpb.ExportSubjectDataRequest(
                idempotency_key="exp2", subject_id=subject.account_id, rights_request_id="rr-1"
            )
        )
        assert again.resource_count == exported.resource_count
        cases = await billing.ListSubjectCaseIds(bpb.ListSubjectCaseIdsRequest(subject_id=subject.account_id))
        assert list(cases.case_ids) == [subject.case_id]
        # GDPR-03 / BIL-09: erasure keeps the accounting records, restricted, and says so.
        purged = await billing.PurgeSubject(
            bpb.PurgeSubjectRequest(
                idempotency_key="pur", subject_id=subject.account_id, rights_request_id="rr-3"
            )
        )
        kept = {r.category: r for r in purged.retained}
        assert kept["orders"].legal_basis == bpb.RETENTION_LEGAL_BASIS_ACCOUNTING_OBLIGATION
        assert kept["invoices"].count == len(subject.invoice_ids)
        until = kept["invoices"].retained_until.ToDatetime(tzinfo=UTC)
        assert until - NOW > timedelta(days=3650)
        assert not purged.subject_key_destroyed
        replayed = await billing.PurgeSubject(
            bpb.PurgeSubjectRequest(
                idempotency_key="pur", subject_id=subject.account_id, rights_request_id="rr-3"
            )
        )
        assert replayed == purged
    engine = create_engine(stack.database_urls["billing"])
    try:
        async with session_factory(engine)() as session:
            rows = (
                await session.scalars(
                    select(ArchivedRecord).where(ArchivedRecord.subject_id == subject.account_id)
                )
            ).all()
            assert rows and all(r.restricted_at is not None for r in rows)
    finally:
        await engine.dispose()

    # Matching: the patient's case links go, the doctor's statistics stay.
    assert await turnaround_count(stack, subject.doctor_id) == 1
    async with as_service(stack, "matching", "worker") as channel:
        matching = mpb_grpc.MatchingServiceStub(channel)
        listed = await matching.ListAssignments(
            mpb.ListAssignmentsRequest(case_id=subject.case_id, include_released=True)
        )
        assert len(listed.assignments) == 1
        part = await matching.ExportSubjectData(
            mpb.ExportSubjectDataRequest(
                idempotency_key="m-exp",
                subject_id=subject.account_id,
                case_ids=[subject.case_id],
                rights_request_id="rr-1",
            )
        )
        tasks = Bundle.model_validate_json(part.fhir_bundle_json)
        assert [resource_type(e) for e in tasks.entry or []] == ["Task"]
        assert (
            await code_of(
                matching.PurgeSubject(
                    mpb.PurgeSubjectRequest(
                        idempotency_key="m-bad", subject_id=subject.account_id, case_ids=[""]
                    )
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        purged_links = await matching.PurgeSubject(
            mpb.PurgeSubjectRequest(
                idempotency_key="m-pur", subject_id=subject.account_id, case_ids=[subject.case_id]
            )
        )
        assert {c.category: c.count for c in purged_links.purged}["case_assignments"] == 1
        assert not (
            await matching.ListAssignments(
                mpb.ListAssignmentsRequest(case_id=subject.case_id, include_released=True)
            )
        ).assignments
        assert await turnaround_count(stack, subject.doctor_id) == 1
        # The doctor as a subject: professional data, exported, then pseudonymised at purge.
        doctor_part = await matching.ExportSubjectData(
            mpb.ExportSubjectDataRequest(
                idempotency_key="d-exp", subject_id=subject.doctor_account_id, rights_request_id="rr-9"
            )
        )
        doctor_types = {
            resource_type(e) for e in Bundle.model_validate_json(doctor_part.fhir_bundle_json).entry or []
        }
        assert doctor_types == {"Practitioner", "PractitionerRole"}
        await matching.ArchiveSubject(
            mpb.ArchiveSubjectRequest(idempotency_key="d-arch", subject_id=subject.doctor_account_id)
        )
        await matching.PurgeSubject(
            mpb.PurgeSubjectRequest(idempotency_key="d-pur", subject_id=subject.doctor_account_id)
        )
        entry = await matching.GetReferentDoctor(mpb.GetReferentDoctorRequest(doctor_id=subject.doctor_id))
        assert entry.doctor.display_name == "" and not entry.doctor.active
        assert await turnaround_count(stack, subject.doctor_id) == 1


@pytest.mark.req("RET-02")
@pytest.mark.req("RET-07")
@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("BIL-09")
async def test_erasure_through_the_workflow_reaches_every_service(world: World) -> None:
    stack = world.stack
    subject = await patient_with_history(stack)
    async with world.person(subject.account_id) as channel:
        mine = ipb_grpc.IdentityServiceStub(channel)
        requests = {}
        for kind in (lpb.RIGHTS_REQUEST_KIND_ACCESS, lpb.RIGHTS_REQUEST_KIND_ERASURE):
            requests[kind] = (
                await mine.RecordRightsRequest(
                    ipb.RecordRightsRequestRequest(
                        idempotency_key=f"rr-{kind}-{subject.account_id}",
                        subject_id=subject.account_id,
                        kind=kind,
                        channel=lpb.RIGHTS_REQUEST_CHANNEL_PORTAL,
                        identity_verification=lpb.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                    )
                )
            ).rights_request.request_id

    handles: dict[str, Any] = {}

    async def fulfil(request_id: str) -> Any:
        handles[request_id] = handle = await world.client.start_workflow(
            RightsRequestWorkflow.run,
            RightsRequestInput(request_id=request_id),
            id=rights_request_workflow_id(request_id),
            task_queue=world.queue,
        )
        await until(handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED")
        return await handle.execute_update(RightsRequestWorkflow.fulfil)

    # GDPR-05: one FHIR bundle with the account, the file, the orders/invoices, the assignments.
    exported = await fulfil(requests[lpb.RIGHTS_REQUEST_KIND_ACCESS])
    assert exported.export is not None and not exported.export.not_implemented
    types = exported.export.resource_types
    assert types["Patient"] == 1 and types["ServiceRequest"] == 1 and types["Communication"] >= 1
    assert types["ChargeItem"] == 1 and types["Invoice"] == len(subject.invoice_ids) and types["Task"] == 1
    # The archive carries the files themselves, not only references to them (issue 10 §4);
    # the person downloads it from the dossier (the answer names it).
    _, archive_bytes = await world.answer_archive(subject.account_id, exported.export.document_id)
    assert hashlib.sha256(archive_bytes).hexdigest() == exported.export.sha256_hex
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        invoices = [name for name in archive.namelist() if name.startswith("invoices/")]
        assert len(invoices) == len(subject.invoice_ids)
        assert all(archive.read(name).startswith(b"%PDF") for name in invoices)
        assert "Files not included" not in archive.read("summary.txt").decode()
        # Each invoice's DocumentReference points to its file in the archive.
        bundle = Bundle.model_validate_json(archive.read("fhir-bundle.json"))
        urls = [
            content.attachment.url
            for entry in bundle.entry or []
            if resource_type(entry) == "DocumentReference"
            for content in entry.resource.content  # type: ignore[union-attr]
        ]
        assert sorted(url for url in urls if url and url.startswith("invoices/")) == sorted(invoices)

    # The request ended (an erasure waits for cases in progress to end).
    async with as_service(stack, "dossier", "worker") as channel:
        await dpb_grpc.DossierServiceStub(channel).UpdateCaseStatus(
            dpb.UpdateCaseStatusRequest(
                idempotency_key=f"cancel-{subject.case_id}",
                case_id=subject.case_id,
                status=dpb.CASE_STATUS_CANCELLED,
            )
        )

    # GDPR-03: erasure everywhere, what the law keeps restricted, and the answer says so.
    erased = await fulfil(requests[lpb.RIGHTS_REQUEST_KIND_ERASURE])
    assert erased.outcome == "PARTIALLY_GRANTED_RESTRICTED" and erased.report is not None
    report = erased.report
    assert not report.not_implemented
    kept = {(r.service, r.category): r for r in report.retained}
    assert kept[("billing", "invoices")].legal_basis == "ACCOUNTING_OBLIGATION"
    assert kept[("billing", "orders")].count == 1
    assert "dossier" in report.keys_destroyed
    assert report.items["matching"]["case_assignments"] == 1
    assert report.items["notifications"]["recipient_addresses"] >= 1
    await continued_as_retention(
        world, handles[requests[lpb.RIGHTS_REQUEST_KIND_ERASURE]], "rights_request_erasure"
    )

    # No service returns anything about the subject any more.
    async with as_person(stack, "billing", subject.account_id, Role.PATIENT) as channel:
        billing = bpb_grpc.BillingServiceStub(channel)
        assert (
            await code_of(billing.GetOrder(bpb.GetOrderRequest(order_id=subject.order_id)))
            == grpc.StatusCode.NOT_FOUND
        )
        assert not (await billing.ListInvoices(bpb.ListInvoicesRequest())).invoices
    async with as_service(stack, "matching", "worker") as channel:
        matching = mpb_grpc.MatchingServiceStub(channel)
        assert not (
            await matching.ListAssignments(
                mpb.ListAssignmentsRequest(case_id=subject.case_id, include_released=True)
            )
        ).assignments
    assert await turnaround_count(stack, subject.doctor_id) == 1
    async with as_service(stack, "dossier", "worker") as channel:
        dossier = dpb_grpc.DossierServiceStub(channel)
        assert (
            await code_of(dossier.GetCase(dpb.GetCaseRequest(case_id=subject.case_id)))
            == grpc.StatusCode.NOT_FOUND
        )
    async with as_service(stack, "notifications", "worker") as channel:
        status = await npb_grpc.NotificationsServiceStub(channel).GetNotificationStatus(
            npb.GetNotificationStatusRequest(notification_id=subject.notification_id)
        )
        assert status.masked_recipient == ""
    assert (
        await code_of(world.identity.GetAccount(ipb.GetAccountRequest(account_id=subject.account_id)))
        == grpc.StatusCode.NOT_FOUND
    )
    # Their per-subject data cannot be decrypted: the dossier's subject key is gone.
    engine = create_engine(stack.database_urls["dossier"])
    try:
        async with session_factory(engine)() as session:
            assert await session.get(DossierSubjectKey, subject.account_id) is None
    finally:
        await engine.dispose()
    blob = json.dumps([r.model_dump(mode="json") for r in report.retained])
    assert subject.email not in blob
