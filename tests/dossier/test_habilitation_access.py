"""The dossier decides a coordinator's access from the habilitation claim of the token the
real identity service mints (SEC-05, CASE-14): without it refused, with it allowed, and a
revocation refused from the next token. Identity and the dossier share one keys folder,
as in the platform; SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from secondopinion.identity.v1 import identity_pb2 as ipb

from services.shared.grpc_client import open_channel
from tests.dossier.conftest import Dossier, create_case, expect_status
from tests.identity.conftest import Identity, identity  # noqa: F401 (the identity fixture)

NF = grpc.StatusCode.NOT_FOUND


class Coordinator:
    """A coordinator's calls to the dossier, each with the token identity minted last."""

    def __init__(self, service: Identity, session_token: str) -> None:
        self._identity = service
        self._session_token = session_token
        self.token = ""

    async def next_token(self) -> str:
        """What the gateway does at each request: validate the session, get a fresh token."""
        valid = await self._identity.gateway.ValidateSession(
            ipb.ValidateSessionRequest(session_token=self._session_token)
        )
        self.token = valid.internal_token
        return self.token


async def habilitation(service: Identity, key: str, account_id: str, kind: Any, grant: bool) -> None:
    if grant:
        await service.ops.GrantHabilitation(
            ipb.GrantHabilitationRequest(
                idempotency_key=key, account_id=account_id, habilitation=kind, reason="case coordination"
            )
        )
    else:
        await service.ops.RevokeHabilitation(
            ipb.RevokeHabilitationRequest(idempotency_key=key, account_id=account_id, habilitation=kind)
        )


@pytest.mark.req("SEC-05")
@pytest.mark.req("CASE-14")
async def test_a_coordinator_reads_only_with_the_claim_and_loses_it_at_the_next_token(
    dossier: Dossier,
    identity: Identity,  # noqa: F811 (the fixture imported above)
) -> None:
    alice = await dossier.patient("alice")
    case = await create_case(alice, key="hab-case")
    get = pb.GetCaseRequest(case_id=case.case_id)
    account_id = await identity.create_staff(ipb.ACCOUNT_ROLE_COORDINATOR, "coordination@example.org")
    coordinator = Coordinator(identity, await identity.open_session(account_id))
    async with open_channel(dossier.target, lambda: coordinator.token) as channel:
        stub = pb_grpc.DossierServiceStub(channel)

        # A coordinator without the habilitation: refused like a stranger.
        await coordinator.next_token()
        await expect_status(stub.GetCase(get), NF)

        # Granted through identity: the next token carries it and the dossier lets them read.
        await habilitation(identity, "g-health", account_id, ipb.HABILITATION_HEALTH_DATA, True)
        await expect_status(stub.GetCase(get), NF)  # the token in hand predates the grant
        await coordinator.next_token()
        assert (await stub.GetCase(get)).case.case_id == case.case_id
        # Health data is not the mandate: filling in for the patient stays refused...
        notes = pb.SaveCaseNotesRequest(
            idempotency_key="pa-1", case_id=case.case_id, text="Saisi sous mandat"
        )
        await expect_status(stub.SaveCaseNotes(notes), NF)
        # ...until the personal-assistant habilitation is granted too (CASE-14).
        await habilitation(identity, "g-pa", account_id, ipb.HABILITATION_PERSONAL_ASSISTANT, True)
        await coordinator.next_token()
        await stub.SaveCaseNotes(notes)
        before_revocation = coordinator.token

        # Revoked: the token already minted lives on until it expires (5 minutes)...
        await habilitation(identity, "r-health", account_id, ipb.HABILITATION_HEALTH_DATA, False)
        await habilitation(identity, "r-pa", account_id, ipb.HABILITATION_PERSONAL_ASSISTANT, False)
        assert (await stub.GetCase(get)).case.case_id == case.case_id
        # ...and the next one no longer opens the case.
        await coordinator.next_token()
        assert coordinator.token != before_revocation
        await expect_status(stub.GetCase(get), NF)
        await expect_status(
            stub.SaveCaseNotes(
                pb.SaveCaseNotesRequest(idempotency_key="pa-2", case_id=case.case_id, text="Refusé")
            ),
            NF,
        )
        # The staff queues need the habilitation too.
        await expect_status(
            stub.ListCases(pb.ListCasesRequest(scope=pb.CASE_LIST_SCOPE_ESCALATED)),
            grpc.StatusCode.PERMISSION_DENIED,
        )
