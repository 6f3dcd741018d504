"""Identity's own desk RPCs honour the habilitations it grants (SEC-05): a coordinator
holding `archive_access` reads archives as the DPO does (RET-07), one holding
`rights_requests` runs the rights-request desk as the DPO does (GDPR-07, GDPR-08); a
coordinator without them, or with the other one only, is refused. And the public keys of
the internal tokens are listed to anyone, without a token."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from sqlalchemy import text

from services.shared.auth import Role
from tests.identity.conftest import Identity, expect

PD, NF, IA = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
)


async def staff(
    identity: Identity, role: Any, email: str, *held: Any
) -> tuple[str, pb_grpc.IdentityServiceAsyncStub]:
    """A staff member created with `held` habilitations, calling with the token identity
    mints for their session (which carries the habilitations)."""
    account_id = await identity.create_staff(role, email, habilitations=list(held))
    return account_id, await identity.as_session(await identity.open_session(account_id))


@pytest.mark.req("SEC-05")
@pytest.mark.req("RET-07")
async def test_archives_are_read_by_the_dpo_or_a_coordinator_holding_archive_access(
    identity: Identity,
) -> None:
    subject = await identity.sign_up("archived@example.org")
    await identity.service("worker").ArchiveSubject(
        pb.ArchiveSubjectRequest(
            idempotency_key="archive-1", subject_id=subject, reason=pb.ARCHIVE_REASON_ACCOUNT_CLOSED
        )
    )
    dpo_id, dpo = await staff(identity, pb.ACCOUNT_ROLE_DPO, "dpo@example.org")
    reader_id, reader = await staff(
        identity, pb.ACCOUNT_ROLE_COORDINATOR, "archives@example.org", pb.HABILITATION_ARCHIVE_ACCESS
    )
    _, plain = await staff(identity, pb.ACCOUNT_ROLE_COORDINATOR, "plain@example.org")
    _, desk_only = await staff(
        identity, pb.ACCOUNT_ROLE_COORDINATOR, "desk@example.org", pb.HABILITATION_RIGHTS_REQUESTS
    )
    read = lpb.ReadArchivedSubjectRequest(
        subject_id=subject, purpose=lpb.ARCHIVE_READ_PURPOSE_LITIGATION, reference="TJ Paris 24/00123"
    )
    for stub in (dpo, reader):
        got = await stub.ReadArchivedSubject(read)
        assert got.access_log_id and json.loads(got.archive_json)
    for stub in (
        plain,
        desk_only,
        identity.as_role(subject, Role.PATIENT),
        identity.as_role(reader_id, Role.COORDINATOR),  # a token without the claim
        identity.service("worker"),
    ):
        await expect(stub.ReadArchivedSubject(read), PD)
    # The reason is still required of a habilitated reader; each read is logged.
    await expect(
        reader.ReadArchivedSubject(
            lpb.ReadArchivedSubjectRequest(subject_id=subject, purpose=lpb.ARCHIVE_READ_PURPOSE_LITIGATION)
        ),
        IA,
    )
    async with identity.engine.connect() as connection:
        readers = (
            await connection.execute(
                text("SELECT reader_account_id FROM archive_access_log ORDER BY read_at")
            )
        ).all()
    assert [r[0] for r in readers] == [dpo_id, reader_id]


def postal_request(subject: str, key: str) -> pb.RecordRightsRequestRequest:
    return pb.RecordRightsRequestRequest(
        idempotency_key=key,
        subject_id=subject,
        kind=lpb.RIGHTS_REQUEST_KIND_RECTIFICATION,
        channel=lpb.RIGHTS_REQUEST_CHANNEL_POSTAL_MAIL,
        identity_verification=lpb.IDENTITY_VERIFICATION_METHOD_IDENTITY_DOCUMENT,
        identity_proof_document_id="doc-123",
        details="Mon adresse postale a changé.",
    )


def extend(request_id: str, key: str) -> pb.ExtendRightsRequestDeadlineRequest:
    return pb.ExtendRightsRequestDeadlineRequest(
        idempotency_key=key,
        request_id=request_id,
        reason=pb.DEADLINE_EXTENSION_REASON_COMPLEXITY,
        extension_months=2,
    )


def answer(request_id: str, key: str) -> pb.RecordRightsRequestAnswerRequest:
    return pb.RecordRightsRequestAnswerRequest(
        idempotency_key=key, request_id=request_id, outcome=lpb.RIGHTS_REQUEST_OUTCOME_GRANTED
    )


@pytest.mark.req("SEC-05")
@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_a_coordinator_holding_rights_requests_runs_the_desk_as_the_dpo_does(
    identity: Identity,
) -> None:
    subject = await identity.sign_up("requester@example.org")
    desk_id, desk = await staff(
        identity, pb.ACCOUNT_ROLE_COORDINATOR, "desk@example.org", pb.HABILITATION_RIGHTS_REQUESTS
    )
    _, plain = await staff(identity, pb.ACCOUNT_ROLE_COORDINATOR, "plain@example.org")
    _, archives = await staff(
        identity, pb.ACCOUNT_ROLE_COORDINATOR, "archives@example.org", pb.HABILITATION_ARCHIVE_ACCESS
    )
    _, dpo = await staff(identity, pb.ACCOUNT_ROLE_DPO, "dpo@example.org")

    # The habilitated coordinator records a postal request, reads and lists it (with its
    # sealed details), extends its deadline and answers it.
    recorded = (await desk.RecordRightsRequest(postal_request(subject, "rr-1"))).rights_request
    assert recorded.recorded_by_account_id == desk_id
    assert recorded.details == "Mon adresse postale a changé."
    got = (
        await desk.GetRightsRequest(pb.GetRightsRequestRequest(request_id=recorded.request_id))
    ).rights_request
    assert got.details == recorded.details
    listed = await desk.ListRightsRequests(pb.ListRightsRequestsRequest(subject_id=subject))
    assert [r.request_id for r in listed.rights_requests] == [recorded.request_id]
    everyone = await desk.ListRightsRequests(pb.ListRightsRequestsRequest())
    assert len(everyone.rights_requests) == 1
    extended = (await desk.ExtendRightsRequestDeadline(extend(recorded.request_id, "ext-1"))).rights_request
    assert extended.status == lpb.RIGHTS_REQUEST_STATUS_EXTENDED
    answered = (await desk.RecordRightsRequestAnswer(answer(recorded.request_id, "ans-1"))).rights_request
    assert answered.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED

    # Without the habilitation (or with another one) a coordinator is a person like any:
    # nothing of another person's requests, and no desk operation.
    second = (await dpo.RecordRightsRequest(postal_request(subject, "rr-2"))).rights_request
    for stub in (plain, archives, identity.as_role(desk_id, Role.COORDINATOR)):
        await expect(stub.RecordRightsRequest(postal_request(subject, "rr-3")), NF)
        await expect(stub.GetRightsRequest(pb.GetRightsRequestRequest(request_id=second.request_id)), NF)
        await expect(stub.ListRightsRequests(pb.ListRightsRequestsRequest(subject_id=subject)), IA)
        await expect(stub.ExtendRightsRequestDeadline(extend(second.request_id, "ext-2")), PD)
        await expect(stub.RecordRightsRequestAnswer(answer(second.request_id, "ans-2")), PD)
    # The DPO's own desk works as before.
    assert (
        await dpo.ExtendRightsRequestDeadline(extend(second.request_id, "ext-3"))
    ).rights_request.status == (lpb.RIGHTS_REQUEST_STATUS_EXTENDED)


@pytest.mark.req("SEC-05")
async def test_the_token_signing_keys_are_listed_without_a_token(identity: Identity) -> None:
    anonymous = identity.stub(lambda: None)
    listed = await anonymous.ListTokenSigningKeys(pb.ListTokenSigningKeysRequest())
    assert listed.keys[0].key_id == "identity"
    assert {k.algorithm for k in listed.keys} == {"Ed25519"}
    assert all(len(k.public_key) == 32 for k in listed.keys)  # raw public keys, nothing else
    # The other RPCs still need a token.
    await expect(
        anonymous.GetCurrentLegalText(pb.GetCurrentLegalTextRequest(kind=pb.LEGAL_TEXT_KIND_TERMS)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect(anonymous.SignUp(pb.SignUpRequest()), grpc.StatusCode.UNAUTHENTICATED)
    # A forged token does not matter either: the answer is the same public list.
    forged = identity.stub(lambda: "not-a-token")
    assert (await forged.ListTokenSigningKeys(pb.ListTokenSigningKeysRequest())).keys == listed.keys
