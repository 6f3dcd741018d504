"""Habilitations granted by identity and carried in its internal tokens (SEC-05, CASE-14),
on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import jwt
import pytest
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from sqlalchemy import text

from deploy.seed import with_luhn_digit
from services.shared.auth import AUDIENCE, InvalidTokenError, Role, TokenSigner, TokenVerifier
from tests.identity.conftest import Identity, expect

HEALTH = pb.HABILITATION_HEALTH_DATA
ASSISTANT = pb.HABILITATION_PERSONAL_ASSISTANT
FP, PD = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED


def grant(key: str, account_id: str, kind: Any, reason: str = "coordination of cases") -> Any:
    return pb.GrantHabilitationRequest(
        idempotency_key=key, account_id=account_id, habilitation=kind, reason=reason
    )


def revoke(key: str, account_id: str, kind: Any, reason: str = "") -> Any:
    return pb.RevokeHabilitationRequest(
        idempotency_key=key, account_id=account_id, habilitation=kind, reason=reason
    )


async def as_person(identity: Identity, account_id: str) -> pb_grpc.IdentityServiceAsyncStub:
    """The person's stub, with the internal token identity mints for their session."""
    return await identity.as_session(await identity.open_session(account_id))


async def minted(identity: Identity, session_token: str) -> tuple[str, pb.ValidateSessionResponse]:
    valid = await identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=session_token))
    return valid.internal_token, valid


async def habilitation_records(identity: Identity, reader: Any, account_id: str) -> list[pb.EvidenceRecord]:
    listed = await reader.ListEvidenceRecords(pb.ListEvidenceRecordsRequest(account_id=account_id))
    return [
        r
        for r in listed.records
        if r.kind in (pb.EVIDENCE_KIND_HABILITATION_GRANTED, pb.EVIDENCE_KIND_HABILITATION_REVOKED)
    ]


@pytest.mark.req("SEC-05")
@pytest.mark.req("CASE-14")
async def test_an_administrator_grants_and_revokes_and_the_next_token_follows(identity: Identity) -> None:
    verifier = TokenVerifier.from_keys_dir(identity.auth.keys_dir)
    admin_id = await identity.create_staff(pb.ACCOUNT_ROLE_ADMINISTRATOR, "admin@example.org")
    admin_session = await identity.open_session(admin_id)
    admin = await identity.as_session(admin_session)
    coordinator_id = await identity.create_staff(pb.ACCOUNT_ROLE_COORDINATOR, "coord@example.org")
    session = await identity.open_session(coordinator_id)

    # No habilitation yet: the token has no claim at all, which means none.
    token, valid = await minted(identity, session)
    assert "hab" not in jwt.decode(token, options={"verify_signature": False})
    assert verifier.verify(token).habilitations == frozenset()
    assert list(valid.habilitations) == []

    granted = await admin.GrantHabilitation(grant("g-1", coordinator_id, HEALTH))
    assert list(granted.account.habilitations) == [HEALTH]
    # The same decision retried: the same answer, recorded once.
    assert (await admin.GrantHabilitation(grant("g-1", coordinator_id, HEALTH))).account == granted.account
    # Another decision for a habilitation already held changes nothing.
    await admin.GrantHabilitation(grant("g-1-bis", coordinator_id, HEALTH))
    # A key reused for another decision is refused.
    await expect(admin.GrantHabilitation(grant("g-1", coordinator_id, ASSISTANT)), FP)
    await admin.GrantHabilitation(grant("g-2", coordinator_id, ASSISTANT, "personal assistant service"))

    before_revocation, valid = await minted(identity, session)
    assert verifier.verify(before_revocation).habilitations == {"health_data", "personal_assistant"}
    assert sorted(valid.habilitations) == [HEALTH, ASSISTANT]
    # The account itself (and staff) read the active ones on the account.
    coordinator = await identity.as_session(session)
    own = await coordinator.GetAccount(pb.GetAccountRequest(account_id=coordinator_id))
    assert sorted(own.account.habilitations) == [HEALTH, ASSISTANT]

    revoked = await admin.RevokeHabilitation(revoke("r-1", coordinator_id, HEALTH, "left the team"))
    assert list(revoked.account.habilitations) == [ASSISTANT]
    # Revoking one not held changes nothing.
    await admin.RevokeHabilitation(revoke("r-1-bis", coordinator_id, HEALTH))
    # A token minted before the revocation keeps its claim until it expires (5 minutes);
    # the next token no longer carries it.
    assert "health_data" in verifier.verify(before_revocation).habilitations
    after, valid = await minted(identity, session)
    assert verifier.verify(after).habilitations == {"personal_assistant"}
    assert list(valid.habilitations) == [ASSISTANT]

    # Each change is evidence: chained, naming who decided, from which session.
    records = await habilitation_records(identity, admin, coordinator_id)
    assert [(r.kind, r.habilitation) for r in reversed(records)] == [
        (pb.EVIDENCE_KIND_HABILITATION_GRANTED, HEALTH),
        (pb.EVIDENCE_KIND_HABILITATION_GRANTED, ASSISTANT),
        (pb.EVIDENCE_KIND_HABILITATION_REVOKED, HEALTH),
    ]
    admin_valid = await identity.gateway.ValidateSession(
        pb.ValidateSessionRequest(session_token=admin_session)
    )
    assert {(r.recorded_by_account_id, r.session_id, r.account_id) for r in records} == {
        (admin_id, admin_valid.session_id, coordinator_id)
    }
    chain = await admin.VerifyEvidenceChain(pb.VerifyEvidenceChainRequest())
    assert chain.intact and chain.checked_count >= 3
    # The history keeps who granted, why, who revoked and when.
    async with identity.engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT kind, reason, granted_by, revoked_by, revocation_reason, revoked_at IS NULL "
                    "FROM habilitations WHERE account_id = :a ORDER BY granted_at"
                ),
                {"a": coordinator_id},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        ("health_data", "coordination of cases", admin_id, admin_id, "left the team", False),
        ("personal_assistant", "personal assistant service", admin_id, "", "", True),
    ]


@pytest.mark.req("SEC-05")
async def test_only_administrators_and_the_provisioning_tool_grant(identity: Identity) -> None:
    coordinator_id = await identity.create_staff(pb.ACCOUNT_ROLE_COORDINATOR, "c2@example.org")
    dpo_id = await identity.create_staff(pb.ACCOUNT_ROLE_DPO, "dpo@example.org")
    other_id = await identity.create_staff(pb.ACCOUNT_ROLE_COORDINATOR, "c3@example.org")
    patient_id = await identity.sign_up("patient@example.org")
    refused = {
        "dpo": await as_person(identity, dpo_id),
        "another coordinator": await as_person(identity, other_id),
        "the coordinator": await as_person(identity, coordinator_id),
        "patient": await as_person(identity, patient_id),
        "worker service": identity.service("worker"),
        "gateway service": identity.service("gateway"),
    }
    for who, stub in refused.items():
        await expect(stub.GrantHabilitation(grant(f"g-{who}", coordinator_id, HEALTH)), PD)
        await expect(stub.RevokeHabilitation(revoke(f"r-{who}", coordinator_id, HEALTH)), PD)
    # The provisioning tool (service `ops`) grants; the record names it.
    granted = await identity.ops.GrantHabilitation(grant("g-ops", coordinator_id, HEALTH))
    assert list(granted.account.habilitations) == [HEALTH]
    [record] = await habilitation_records(identity, refused["dpo"], coordinator_id)
    assert record.recorded_by_account_id == "ops"
    assert record.authentication_method == pb.AUTHENTICATION_METHOD_SERVICE
    # No one grants to themselves, administrators included.
    admin_id = await identity.create_staff(pb.ACCOUNT_ROLE_ADMINISTRATOR, "admin2@example.org")
    admin = await as_person(identity, admin_id)
    await expect(admin.GrantHabilitation(grant("g-self", admin_id, pb.HABILITATION_ARCHIVE_ACCESS)), PD)
    # A token minted by hand without a session cannot grant either (the evidence names one).
    await expect(
        identity.as_role(admin_id, Role.ADMINISTRATOR, "no-such-session").GrantHabilitation(
            grant("g-nosession", coordinator_id, ASSISTANT)
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@pytest.mark.req("SEC-05")
async def test_patients_and_roles_a_habilitation_does_not_fit_are_refused(
    identity: Identity,
) -> None:
    ops = identity.ops
    patient_id = await identity.sign_up("pat@example.org")
    doctor_id = await identity.create_staff(
        pb.ACCOUNT_ROLE_REFERENT_DOCTOR, "doc@example.org", rpps_number=with_luhn_digit("1000000042")
    )
    partner_id = await identity.create_staff(
        pb.ACCOUNT_ROLE_PARTNER_USER, "partner@example.org", partner_id="p-1"
    )
    dpo_id = await identity.create_staff(pb.ACCOUNT_ROLE_DPO, "dpo2@example.org")
    coordinator_id = await identity.create_staff(pb.ACCOUNT_ROLE_COORDINATOR, "c4@example.org")
    for account_id, kind in [
        (patient_id, HEALTH),
        (patient_id, ASSISTANT),
        (doctor_id, HEALTH),
        (partner_id, HEALTH),
        (dpo_id, HEALTH),
        (dpo_id, ASSISTANT),
    ]:
        await expect(ops.GrantHabilitation(grant(f"g-{account_id}-{kind}", account_id, kind)), FP)
    # The DPO's office may hold archive access and rights-request handling.
    dpo = await ops.GrantHabilitation(grant("g-dpo", dpo_id, pb.HABILITATION_ARCHIVE_ACCESS))
    assert list(dpo.account.habilitations) == [pb.HABILITATION_ARCHIVE_ACCESS]
    # Bad requests.
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(ops.GrantHabilitation(grant("g-u", coordinator_id, pb.HABILITATION_UNSPECIFIED)), invalid)
    await expect(ops.GrantHabilitation(grant("g-r", coordinator_id, HEALTH, reason="  ")), invalid)
    await expect(ops.GrantHabilitation(grant("g-l", coordinator_id, HEALTH, reason="x" * 501)), invalid)
    await expect(ops.GrantHabilitation(grant("g-nf", "no-such-account", HEALTH)), grpc.StatusCode.NOT_FOUND)
    # A closed account receives nothing.
    dpo_stub = await as_person(identity, dpo_id)
    await dpo_stub.CloseAccount(
        pb.CloseAccountRequest(
            idempotency_key="close", account_id=coordinator_id, reason=pb.CLOSURE_REASON_USER_REQUEST
        )
    )
    await expect(ops.GrantHabilitation(grant("g-closed", coordinator_id, HEALTH)), FP)
    # Refusals leave no trace in the history.
    async with identity.engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM habilitations"))).scalar_one()
    assert count == 1


@pytest.mark.req("SEC-05")
async def test_a_grant_the_role_may_not_hold_confers_nothing_in_the_token(identity: Identity) -> None:
    """A row that does not fit the account's role (written around the grant checks, e.g. by
    a hand-made fix in the database) never reaches a token: the role decides first."""
    patient_id = await identity.sign_up("pat-row@example.org")
    dpo_id = await identity.create_staff(pb.ACCOUNT_ROLE_DPO, "dpo-row@example.org")
    async with identity.engine.begin() as connection:
        for account_id, kind in [
            (patient_id, "health_data"),
            (dpo_id, "health_data"),
            (dpo_id, "archive_access"),
        ]:
            await connection.execute(
                text(
                    "INSERT INTO habilitations (habilitation_id, account_id, kind, reason, granted_by,"
                    " granted_at, revoked_by, revocation_reason) VALUES (:id, :account, :kind, 'by hand',"
                    " 'nobody', CURRENT_TIMESTAMP, '', '')"
                ),
                {"id": str(uuid.uuid4()), "account": account_id, "kind": kind},
            )
    _, patient = await minted(identity, await identity.open_session(patient_id))
    assert list(patient.habilitations) == []
    token, dpo = await minted(identity, await identity.open_session(dpo_id))
    assert list(dpo.habilitations) == [pb.HABILITATION_ARCHIVE_ACCESS]
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["hab"] == ["archive_access"]


@pytest.mark.req("SEC-05")
async def test_staff_created_with_habilitations_hold_them_from_the_first_token(identity: Identity) -> None:
    coordinator_id = await identity.create_staff(
        pb.ACCOUNT_ROLE_COORDINATOR, "c5@example.org", habilitations=[HEALTH, ASSISTANT, HEALTH]
    )
    token, valid = await minted(identity, await identity.open_session(coordinator_id))
    assert sorted(valid.habilitations) == [HEALTH, ASSISTANT]
    assert TokenVerifier.from_keys_dir(identity.auth.keys_dir).verify(token).habilitations == {
        "health_data",
        "personal_assistant",
    }
    dpo_id = await identity.create_staff(pb.ACCOUNT_ROLE_DPO, "dpo3@example.org")
    records = await habilitation_records(identity, await as_person(identity, dpo_id), coordinator_id)
    assert len(records) == 2
    # A role the habilitation does not fit: nothing is created.
    await expect(
        identity.ops.CreateStaffAccount(
            pb.CreateStaffAccountRequest(
                idempotency_key="staff:partner-hab",
                role=pb.ACCOUNT_ROLE_PARTNER_USER,
                email="p2@example.org",
                phone_number="+33612345678",
                display_name="Partner",
                partner_id="p-1",
                habilitations=[HEALTH],
            )
        ),
        FP,
    )


@pytest.mark.req("SEC-05")
async def test_only_identity_person_tokens_carry_habilitations(identity: Identity) -> None:
    keys = identity.auth.keys_dir
    verifier = TokenVerifier.from_keys_dir(keys)
    with pytest.raises(InvalidTokenError):
        TokenSigner.from_keys_dir(keys, "identity").mint("identity", Role.SERVICE, "", ["health_data"])
    # Forged with the worker's real key: a service token claiming habilitations is refused.
    now = int(time.time())
    claims = {"iss": "worker", "sub": "worker", "role": "service", "aud": AUDIENCE, "iat": now,
              "exp": now + 60, "jti": "j", "hab": ["health_data"]}  # fmt: skip
    worker_key = TokenSigner.from_keys_dir(keys, "worker")._key
    forged = jwt.encode(claims, worker_key, algorithm="EdDSA", headers={"kid": "worker"})
    with pytest.raises(InvalidTokenError, match="only identity"):
        verifier.verify(forged)
    identity_key = TokenSigner.from_keys_dir(keys, "identity")._key
    for bad in ("health_data", [1], ["x"] * 17):
        malformed = {**claims, "iss": "identity", "sub": "a", "role": "coordinator", "hab": bad}
        token = jwt.encode(malformed, identity_key, algorithm="EdDSA", headers={"kid": "identity"})
        with pytest.raises(InvalidTokenError, match="malformed"):
            verifier.verify(token)
