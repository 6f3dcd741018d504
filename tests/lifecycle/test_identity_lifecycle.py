"""Identity's lifecycle RPCs on SQLite and PostgreSQL: rights requests, holds, due
subjects, export (FHIR R4, validated and re-read), restriction and erasure."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from fhir.resources.R4B.bundle import Bundle
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb

from deploy.seed import with_luhn_digit
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from tests.support.stack import Stack
from workflows.lifecycle.fhir import merge_bundles, readable_summary, validate_bundle


def person(stack: Stack, account_id: str, role: Role = Role.PATIENT) -> grpc.aio.Channel:
    signer = stack.identity_tokens()
    return open_channel(stack.target("identity"), lambda: signer.mint(account_id, role)[0])


def worker(stack: Stack) -> grpc.aio.Channel:
    return open_channel(
        stack.target("identity"),
        ServiceTokenProvider(TokenSigner.from_keys_dir(stack.auth.keys_dir, "worker")),
    )


async def sign_up(ops: ipb_grpc.IdentityServiceAsyncStub, name: str = "") -> str:
    reply = await ops.SignUp(
        ipb.SignUpRequest(
            idempotency_key=f"signup-{uuid.uuid4()}",
            email=f"{name or 'p'}-{uuid.uuid4().hex[:6]}@example.org",
            phone_number="+33 6 12 34 56 78",
            password="Correct-Horse-9",
            declared_age=40,
            locale="fr",
        )
    )
    return str(reply.account_id)


async def staff(ops: ipb_grpc.IdentityServiceAsyncStub, role: int) -> str:
    reply = await ops.CreateStaffAccount(
        ipb.CreateStaffAccountRequest(
            idempotency_key=f"staff-{uuid.uuid4()}",
            role=role,  # type: ignore[arg-type]
            email=f"s-{uuid.uuid4().hex[:6]}@example.org",
            phone_number="+33 6 98 76 54 32",
            display_name="Staff",
            rpps_number=with_luhn_digit("1000000001") if role == ipb.ACCOUNT_ROLE_REFERENT_DOCTOR else "",
        )
    )
    return str(reply.account_id)


def rr(
    subject: str, kind: int, channel: int, verification: int, **extra: object
) -> ipb.RecordRightsRequestRequest:
    return ipb.RecordRightsRequestRequest(
        idempotency_key=f"rr-{uuid.uuid4()}",
        subject_id=subject,
        kind=kind,  # type: ignore[arg-type]
        channel=channel,  # type: ignore[arg-type]
        identity_verification=verification,  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    return error.value.code()


@pytest.mark.req("GDPR-02")
@pytest.mark.req("GDPR-06")
@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_rights_requests_are_recorded_with_channel_and_verified_identity(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as ops_channel:
        ops = ipb_grpc.IdentityServiceStub(ops_channel)
        patient = await sign_up(ops)
        other = await sign_up(ops)
        dpo = await staff(ops, ipb.ACCOUNT_ROLE_DPO)
        doctor = await staff(ops, ipb.ACCOUNT_ROLE_REFERENT_DOCTOR)
    P, K, V = lpb, lpb, lpb
    async with person(stack, patient) as channel:
        mine = ipb_grpc.IdentityServiceStub(channel)
        # GDPR-06: post-mortem directives, free text sealed with the request's own key.
        directives = await mine.RecordRightsRequest(
            rr(
                patient,
                K.RIGHTS_REQUEST_KIND_POST_MORTEM_DIRECTIVES,
                P.RIGHTS_REQUEST_CHANNEL_PORTAL,
                V.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                details="Mes données seront supprimées à mon décès.",
            )
        )
        assert directives.rights_request.status == lpb.RIGHTS_REQUEST_STATUS_RECEIVED
        # GDPR-07: naming a doctor for indirect access needs their RPPS number.
        assert (
            await code_of(
                mine.RecordRightsRequest(
                    rr(
                        patient,
                        K.RIGHTS_REQUEST_KIND_DESIGNATE_DOCTOR_FOR_INDIRECT_ACCESS,
                        P.RIGHTS_REQUEST_CHANNEL_PORTAL,
                        V.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                        designated_doctor_rpps_number="123",
                        designated_doctor_display_name="Dr House",
                    )
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        named = await mine.RecordRightsRequest(
            rr(
                patient,
                K.RIGHTS_REQUEST_KIND_DESIGNATE_DOCTOR_FOR_INDIRECT_ACCESS,
                P.RIGHTS_REQUEST_CHANNEL_PORTAL,
                V.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                designated_doctor_rpps_number="10003456789",
                designated_doctor_display_name="Dr Martin",
            )
        )
        got = await mine.GetRightsRequest(
            ipb.GetRightsRequestRequest(request_id=named.rights_request.request_id)
        )
        assert got.rights_request.designated_doctor_rpps_number == "10003456789"
        # A person files only for themselves, through the portal.
        assert (
            await code_of(
                mine.RecordRightsRequest(
                    rr(
                        other,
                        K.RIGHTS_REQUEST_KIND_ACCESS,
                        P.RIGHTS_REQUEST_CHANNEL_PORTAL,
                        V.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                    )
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await code_of(
                mine.RecordRightsRequest(
                    rr(
                        patient,
                        K.RIGHTS_REQUEST_KIND_ACCESS,
                        P.RIGHTS_REQUEST_CHANNEL_DPO_EMAIL,
                        V.IDENTITY_VERIFICATION_METHOD_STEP_UP,
                    )
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        # Another person's request is not revealed.
        assert await code_of(mine.ListRightsRequests(ipb.ListRightsRequestsRequest(subject_id=other))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    async with person(stack, dpo, Role.DPO) as channel:
        desk = ipb_grpc.IdentityServiceStub(channel)
        # A postal letter: the DPO checked an identity document; the letter's date counts.
        letter_date = datetime.now(UTC) - timedelta(days=10)
        assert (
            await code_of(
                desk.RecordRightsRequest(
                    rr(
                        patient,
                        K.RIGHTS_REQUEST_KIND_RECTIFICATION,
                        P.RIGHTS_REQUEST_CHANNEL_POSTAL_MAIL,
                        V.IDENTITY_VERIFICATION_METHOD_IDENTITY_DOCUMENT,
                    )
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        letter = await desk.RecordRightsRequest(
            rr(
                patient,
                K.RIGHTS_REQUEST_KIND_RECTIFICATION,
                P.RIGHTS_REQUEST_CHANNEL_POSTAL_MAIL,
                V.IDENTITY_VERIFICATION_METHOD_IDENTITY_DOCUMENT,
                identity_proof_document_id="doc-123",
                received_at=to_timestamp(letter_date),
            )
        )
        assert letter.rights_request.recorded_by_account_id == dpo
        extended = await desk.ExtendRightsRequestDeadline(
            ipb.ExtendRightsRequestDeadlineRequest(
                idempotency_key="ext-1",
                request_id=letter.rights_request.request_id,
                reason=ipb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
                extension_months=2,
            )
        )
        assert extended.rights_request.status == lpb.RIGHTS_REQUEST_STATUS_EXTENDED
        assert (
            await code_of(
                desk.ExtendRightsRequestDeadline(
                    ipb.ExtendRightsRequestDeadlineRequest(
                        idempotency_key="ext-2",
                        request_id=letter.rights_request.request_id,
                        reason=ipb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
                        extension_months=1,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        answered = await desk.RecordRightsRequestAnswer(
            ipb.RecordRightsRequestAnswerRequest(
                idempotency_key="ans-1",
                request_id=letter.rights_request.request_id,
                outcome=lpb.RIGHTS_REQUEST_OUTCOME_GRANTED,
            )
        )
        assert answered.rights_request.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED
        assert (
            await code_of(
                desk.RecordRightsRequestAnswer(
                    ipb.RecordRightsRequestAnswerRequest(
                        idempotency_key="ans-2",
                        request_id=letter.rights_request.request_id,
                        outcome=lpb.RIGHTS_REQUEST_OUTCOME_REFUSED,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        listed = await desk.ListRightsRequests(ipb.ListRightsRequestsRequest(subject_id=patient))
        assert len(listed.rights_requests) == 3
    async with person(stack, doctor, Role.REFERENT_DOCTOR) as channel:
        relayed = await ipb_grpc.IdentityServiceStub(channel).RecordRightsRequest(
            rr(
                patient,
                K.RIGHTS_REQUEST_KIND_OBJECTION,
                P.RIGHTS_REQUEST_CHANNEL_REFERENT_DOCTOR,
                V.IDENTITY_VERIFICATION_METHOD_REFERENT_DOCTOR_ATTESTATION,
            )
        )
        assert relayed.rights_request.recorded_by_account_id == doctor


@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-08")
async def test_an_erasure_refused_for_now_while_a_case_is_in_progress_is_answered_twice(stack: Stack) -> None:
    """The record behind the workflow: REFUSED_CASE_IN_PROGRESS answers an erasure within the
    deadline (status POSTPONED, no extension any more); the final answer then replaces it
    and the time of the first answer stays."""
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as ops_channel:
        ops = ipb_grpc.IdentityServiceStub(ops_channel)
        patient = await sign_up(ops)
        dpo = await staff(ops, ipb.ACCOUNT_ROLE_DPO)
    verified = lpb.IDENTITY_VERIFICATION_METHOD_STEP_UP
    async with person(stack, patient) as channel:
        mine = ipb_grpc.IdentityServiceStub(channel)
        erasure = await mine.RecordRightsRequest(
            rr(patient, lpb.RIGHTS_REQUEST_KIND_ERASURE, lpb.RIGHTS_REQUEST_CHANNEL_PORTAL, verified)
        )
        access = await mine.RecordRightsRequest(
            rr(patient, lpb.RIGHTS_REQUEST_KIND_ACCESS, lpb.RIGHTS_REQUEST_CHANNEL_PORTAL, verified)
        )
    erasure_id, access_id = erasure.rights_request.request_id, access.rights_request.request_id

    def answer(request_id: str, key: str, outcome: int) -> ipb.RecordRightsRequestAnswerRequest:
        return ipb.RecordRightsRequestAnswerRequest(
            idempotency_key=key,
            request_id=request_id,
            outcome=outcome,  # type: ignore[arg-type]
        )

    later = lpb.RIGHTS_REQUEST_OUTCOME_REFUSED_CASE_IN_PROGRESS
    async with person(stack, dpo, Role.DPO) as channel:
        desk = ipb_grpc.IdentityServiceStub(channel)
        # Only an erasure waits for a case to end.
        assert await code_of(desk.RecordRightsRequestAnswer(answer(access_id, "a-1", later))) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        first = (await desk.RecordRightsRequestAnswer(answer(erasure_id, "e-1", later))).rights_request
        assert first.status == lpb.RIGHTS_REQUEST_STATUS_POSTPONED and first.outcome == later
        assert first.HasField("answered_at") and first.answered_at.ToDatetime() <= first.due_at.ToDatetime()
        # Answered in time: not postponed twice, not extended.
        assert await code_of(desk.RecordRightsRequestAnswer(answer(erasure_id, "e-2", later))) == (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        assert (
            await code_of(
                desk.ExtendRightsRequestDeadline(
                    ipb.ExtendRightsRequestDeadlineRequest(
                        idempotency_key="x-1",
                        request_id=erasure_id,
                        reason=ipb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
                        extension_months=1,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        # The DPO's desk finds it among the postponed ones.
        listed = await desk.ListRightsRequests(
            ipb.ListRightsRequestsRequest(subject_id=patient, statuses=[lpb.RIGHTS_REQUEST_STATUS_POSTPONED])
        )
        assert [r.request_id for r in listed.rights_requests] == [erasure_id]
        # Carried out once the case ended: the final answer replaces it, the first time stays.
        final = (
            await desk.RecordRightsRequestAnswer(
                answer(erasure_id, "e-3", lpb.RIGHTS_REQUEST_OUTCOME_PARTIALLY_GRANTED_RESTRICTED)
            )
        ).rights_request
        assert final.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED
        assert final.outcome == lpb.RIGHTS_REQUEST_OUTCOME_PARTIALLY_GRANTED_RESTRICTED
        assert final.answered_at == first.answered_at
        assert await code_of(
            desk.RecordRightsRequestAnswer(answer(erasure_id, "e-4", lpb.RIGHTS_REQUEST_OUTCOME_GRANTED))
        ) == (grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.req("RET-01")
@pytest.mark.req("RET-02")
@pytest.mark.req("RET-06")
async def test_due_subjects_are_paged_oldest_first_and_held_ones_excluded(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as ops_channel:
        ops = ipb_grpc.IdentityServiceStub(ops_channel)
        accounts = [await sign_up(ops) for _ in range(5)]
        dpo = await staff(ops, ipb.ACCOUNT_ROLE_DPO)
    async with person(stack, dpo, Role.DPO) as channel:
        await ipb_grpc.IdentityServiceStub(channel).PlaceLegalHold(
            ipb.PlaceLegalHoldRequest(
                idempotency_key="hold-1",
                subject_id=accounts[0],
                reason=lpb.LEGAL_HOLD_REASON_JUDICIAL_REQUEST,
            )
        )
    async with worker(stack) as channel:
        identity = ipb_grpc.IdentityServiceStub(channel)
        later = datetime.now(UTC) + timedelta(days=5 * 366)
        seen: list[str] = []
        token = ""
        while True:
            page = await identity.ListSubjectsDueForRetention(
                ipb.ListSubjectsDueForRetentionRequest(
                    category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE,
                    as_of=to_timestamp(later),
                    page_size=2,
                    page_token=token,
                )
            )
            seen += [s.subject_id for s in page.subjects]
            token = page.next_page_token
            if not token:
                break
        assert set(accounts[1:]) <= set(seen) and accounts[0] not in seen
        assert len(seen) == len(set(seen))
        early = await identity.ListSubjectsDueForRetention(
            ipb.ListSubjectsDueForRetentionRequest(
                category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE,
                as_of=to_timestamp(datetime.now(UTC) + timedelta(days=4 * 365)),
            )
        )
        assert not set(accounts) & {s.subject_id for s in early.subjects}
        # An activity moves the clock past the sweep's horizon.
        moved = await identity.RecordSubjectActivity(
            ipb.RecordSubjectActivityRequest(
                idempotency_key="act-1",
                subject_id=accounts[1],
                category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE,
                occurred_at=to_timestamp(datetime.now(UTC) + timedelta(days=30)),
            )
        )
        assert moved.due_at.ToDatetime(tzinfo=UTC) > later
        page = await identity.ListSubjectsDueForRetention(
            ipb.ListSubjectsDueForRetentionRequest(
                category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE, as_of=to_timestamp(later)
            )
        )
        assert accounts[1] not in {s.subject_id for s in page.subjects}
        assert (
            await code_of(
                identity.ListSubjectsDueForRetention(
                    ipb.ListSubjectsDueForRetentionRequest(
                        category=lpb.RETENTION_CATEGORY_PAYMENT_DATA, as_of=to_timestamp(later)
                    )
                )
            )
            == grpc.StatusCode.INVALID_ARGUMENT
        )
        # Held: archive and purge are refused.
        assert (
            await code_of(
                identity.ArchiveSubject(
                    ipb.ArchiveSubjectRequest(
                        idempotency_key="arch-held",
                        subject_id=accounts[0],
                        reason=ipb.ARCHIVE_REASON_RETENTION_ELAPSED,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-04")
@pytest.mark.req("CNS-06")
async def test_export_is_valid_fhir_and_erasure_keeps_what_the_law_requires(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as ops_channel:
        ops = ipb_grpc.IdentityServiceStub(ops_channel)
        patient = await sign_up(ops, "marie")
    async with person(stack, patient) as channel:
        mine = ipb_grpc.IdentityServiceStub(channel)
        access = await mine.RecordRightsRequest(
            rr(
                patient,
                lpb.RIGHTS_REQUEST_KIND_PORTABILITY,
                lpb.RIGHTS_REQUEST_CHANNEL_PORTAL,
                lpb.IDENTITY_VERIFICATION_METHOD_STEP_UP,
            )
        )
        erasure = await mine.RecordRightsRequest(
            rr(
                patient,
                lpb.RIGHTS_REQUEST_KIND_ERASURE,
                lpb.RIGHTS_REQUEST_CHANNEL_PORTAL,
                lpb.IDENTITY_VERIFICATION_METHOD_STEP_UP,
            )
        )
    async with worker(stack) as channel:
        identity = ipb_grpc.IdentityServiceStub(channel)
        exported = await identity.ExportSubjectData(
            ipb.ExportSubjectDataRequest(
                idempotency_key="exp-1",
                subject_id=patient,
                rights_request_id=access.rights_request.request_id,
            )
        )
        bundle = merge_bundles([json.loads(exported.fhir_bundle_json)], patient)
        parsed = validate_bundle(bundle)
        # Re-read: the JSON the person receives parses back to the same resources.
        again = Bundle.model_validate_json(parsed.model_dump_json())
        resources: list[Any] = [entry.resource for entry in again.entry or []]
        patients = [r for r in resources if r.get_resource_type() == "Patient"]
        assert len(patients) == 1 and patients[0].id == patient
        assert any(t.value.startswith("marie-") for t in patients[0].telecom)
        assert "Your account" in readable_summary(bundle, [])
        # An export answers an access/portability request only.
        assert (
            await code_of(
                identity.ExportSubjectData(
                    ipb.ExportSubjectDataRequest(
                        idempotency_key="exp-2",
                        subject_id=patient,
                        rights_request_id=erasure.rights_request.request_id,
                    )
                )
            )
            == grpc.StatusCode.FAILED_PRECONDITION
        )
        restricted = await identity.RestrictSubject(
            ipb.RestrictSubjectRequest(
                idempotency_key="res-1",
                subject_id=patient,
                rights_request_id=erasure.rights_request.request_id,
                restricted=True,
            )
        )
        assert {c.category for c in restricted.affected} >= {"accounts"}
        status = await identity.GetSubjectRetention(lpb.GetSubjectRetentionRequest(subject_id=patient))
        assert status.restricted
        purged = await identity.PurgeSubject(
            ipb.PurgeSubjectRequest(
                idempotency_key="pur-1",
                subject_id=patient,
                reason=ipb.PURGE_REASON_ERASURE_REQUEST,
                rights_request_id=erasure.rights_request.request_id,
            )
        )
        assert {c.category for c in purged.purged} >= {"accounts"}
        # The records of the person's requests are kept (RET-06), listed with their basis.
        kept = {r.category: r for r in purged.retained}
        assert kept["rights_requests"].legal_basis == lpb.RETENTION_LEGAL_BASIS_RIGHTS_REQUEST_RECORD
        assert (
            await code_of(identity.GetAccount(ipb.GetAccountRequest(account_id=patient)))
            == grpc.StatusCode.NOT_FOUND
        )
        assert (
            await code_of(
                identity.ExportSubjectData(
                    ipb.ExportSubjectDataRequest(
                        idempotency_key="exp-3",
                        subject_id=patient,
                        rights_request_id=access.rights_request.request_id,
                    )
                )
            )
            == grpc.StatusCode.NOT_FOUND
        )
