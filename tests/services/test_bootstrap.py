"""Every service: health, reflection, internal-token authentication, error statuses."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc

from services.shared.auth import Role, TokenSigner
from services.shared.grpc_client import open_channel
from tests.support.stack import Stack

SERVICES = {
    "identity": "secondopinion.identity.v1.IdentityService",
    "dossier": "secondopinion.dossier.v1.DossierService",
    "matching": "secondopinion.matching.v1.MatchingService",
    "billing": "secondopinion.billing.v1.BillingService",
    "notifications": "secondopinion.notifications.v1.NotificationsService",
}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_every_service_serves_health_and_reflection(stack: Stack) -> None:
    for name, full_name in SERVICES.items():
        async with grpc.aio.insecure_channel(stack.target(name)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", full_name):
                response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
                assert response.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            listed = {s.name async for answer in answers for s in answer.list_services_response.service}
            assert full_name in listed and "grpc.health.v1.Health" in listed


@pytest.mark.req("SEC-01")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_calls_without_a_valid_internal_token_are_unauthenticated(stack: Stack) -> None:
    request = billing_pb2.ListPartnersRequest()
    async with grpc.aio.insecure_channel(stack.target("billing")) as bare:
        stub = billing_pb2_grpc.BillingServiceStub(bare)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ListPartners(request, timeout=2)
        assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A bare header claiming a role is worth nothing.
        with pytest.raises(grpc.aio.AioRpcError) as claimed:
            await stub.ListPartners(
                request, metadata=(("x-role", "administrator"), ("authorization", "Bearer admin"))
            )
        assert claimed.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.req("SEC-05")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_roles_are_enforced_from_the_verified_token(stack: Stack) -> None:
    patient_token, _ = stack.identity_tokens().mint("someone", Role.PATIENT, "s1")
    async with open_channel(stack.target("billing"), lambda: patient_token) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await billing_pb2_grpc.BillingServiceStub(channel).CreatePartner(
                billing_pb2.CreatePartnerRequest(
                    idempotency_key="k-1", name="Forged", kind=billing_pb2.PARTNER_KIND_INSURER
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # The worker is a service, but not one allowed to create staff accounts.
    worker = TokenSigner.from_keys_dir(stack.auth.keys_dir, "worker")
    async with open_channel(
        stack.target("identity"), lambda: worker.mint("worker", Role.SERVICE)[0]
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused_service:
            await identity_pb2_grpc.IdentityServiceStub(channel).CreateStaffAccount(
                identity_pb2.CreateStaffAccountRequest(
                    idempotency_key="k-2",
                    role=identity_pb2.ACCOUNT_ROLE_COORDINATOR,
                    email="c@example.org",
                    phone_number="+33612345678",
                    display_name="C",
                )
            )
        assert refused_service.value.code() == grpc.StatusCode.PERMISSION_DENIED
