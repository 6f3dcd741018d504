"""The whole platform in one process, every server on port 0: for tests and benchmarks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import uvicorn
from fastapi import FastAPI
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from services.billing.app import running as billing_running
from services.billing.settings import BillingSettings
from services.dossier.app import running as dossier_running
from services.dossier.settings import DossierSettings
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings
from services.identity.app import running as identity_running
from services.identity.domain.sessions import open_session
from services.identity.settings import IdentitySettings
from services.matching.app import running as matching_running
from services.matching.settings import MatchingSettings
from services.notifications.app import running as notifications_running
from services.notifications.settings import NotificationsSettings
from services.shared.auth import ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.worker import case_worker

ISSUERS = ("identity", "gateway", "worker", "ops", "billing")
# Tests keep Argon2 at the documented minimum; speed comes from few hashes, not weak ones.


def make_keys(keys_dir: Path) -> InternalAuthSettings:
    for issuer in ISSUERS:
        generate_keypair(keys_dir, issuer)
    return InternalAuthSettings(keys_dir=keys_dir)


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """Run an ASGI app under uvicorn on a free loopback port; yield its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Stack:
    auth: InternalAuthSettings
    database_urls: dict[str, str]
    servers: dict[str, GrpcServer]
    gateway_url: str = ""
    temporal: Client | None = None
    temporal_settings: TemporalSettings | None = None
    _identity_sessions: async_sessionmaker[AsyncSession] | None = field(default=None, repr=False)

    def target(self, service: str) -> str:
        return self.servers[service].target

    def ops_tokens(self) -> ServiceTokenProvider:
        """The seeding/operations identity (role service, subject `ops`)."""
        return ServiceTokenProvider(TokenSigner.from_keys_dir(self.auth.keys_dir, "ops"))

    def identity_tokens(self) -> TokenSigner:
        return TokenSigner.from_keys_dir(self.auth.keys_dir, "identity")

    async def grant_habilitations(
        self, account_id: str, *kinds: int, reason: str = "test provisioning"
    ) -> identity_pb2.Account:
        """SEC-05, CASE-14: what an operator does for a new staff member (GrantHabilitation as
        the provisioning tool); the account's next internal token carries them."""
        account = identity_pb2.Account()
        async with open_channel(self.target("identity"), self.ops_tokens()) as channel:
            identity = identity_pb2_grpc.IdentityServiceStub(channel)
            for kind in kinds:
                granted = await identity.GrantHabilitation(
                    identity_pb2.GrantHabilitationRequest(
                        idempotency_key=f"grant-{account_id}-{kind}",
                        account_id=account_id,
                        habilitation=cast(Any, kind),
                        reason=reason,
                    )
                )
                account = granted.account
        return account

    async def open_session(self, account_id: str) -> str:
        """A session as a completed login would open it (login flow: identity issue)."""
        assert self._identity_sessions is not None
        async with self._identity_sessions.begin() as session:
            return (await open_session(session, account_id)).token


@asynccontextmanager
async def platform_stack(
    workdir: Path,
    backend: str = "sqlite",
    temporal: Client | None = None,
    task_queue: str = "cases",
    with_gateway: bool = True,
) -> AsyncIterator[Stack]:
    """Every service (fresh databases), the case worker and the gateway, on port 0."""
    auth = make_keys(workdir / "keys")
    async with AsyncExitStack() as exit_stack:
        urls: dict[str, str] = {}
        for service in ("identity", "dossier", "matching", "billing", "notifications"):
            urls[service] = await exit_stack.enter_async_context(
                service_database(service, backend, workdir / "db")
            )
        test_env = Environment.TEST
        # Started in dependency order: notifications first (others send through it).
        notifications = await exit_stack.enter_async_context(
            notifications_running(
                NotificationsSettings(database_url=urls["notifications"], environment=test_env, port=0), auth
            )
        )
        identity = await exit_stack.enter_async_context(
            identity_running(
                IdentitySettings(
                    database_url=urls["identity"],
                    environment=test_env,
                    port=0,
                    notifications_target=notifications.target,
                ),
                auth,
            )
        )
        billing = await exit_stack.enter_async_context(
            billing_running(
                BillingSettings(
                    database_url=urls["billing"],
                    environment=test_env,
                    port=0,
                    partner_api_port=0,
                    identity_target=identity.target,
                    notifications_target=notifications.target,
                    archive_dir=workdir / "billing-archive",
                    psp_hmac_key_path=workdir / "keys" / "psp-sandbox.hmac",
                    psp_public_key_path=workdir / "keys" / "psp-sandbox.pub.pem",
                    coverage_code_secret_path=workdir / "keys" / "billing-coverage-codes.secret",
                ),
                auth,
            )
        )
        servers = {
            "notifications": notifications,
            "identity": identity,
            "billing": billing,
            "dossier": await exit_stack.enter_async_context(
                dossier_running(
                    DossierSettings(database_url=urls["dossier"], environment=test_env, port=0), auth
                )
            ),
            "matching": await exit_stack.enter_async_context(
                matching_running(
                    MatchingSettings(database_url=urls["matching"], environment=test_env, port=0), auth
                )
            ),
        }
        identity_engine = create_engine(urls["identity"])
        exit_stack.push_async_callback(identity_engine.dispose)
        stack = Stack(
            auth, urls, servers, temporal=temporal, _identity_sessions=session_factory(identity_engine)
        )
        temporal_settings = TemporalSettings(
            address=temporal.service_client.config.target_host if temporal else "127.0.0.1:1",
            namespace=temporal.namespace if temporal else "default",
            case_task_queue=task_queue,
            payload_keys_dir=workdir / "keys" / "temporal-payload",
        )
        stack.temporal_settings = temporal_settings
        if temporal is not None:
            worker_settings = WorkerSettings(
                identity_target=stack.target("identity"),
                dossier_target=stack.target("dossier"),
                matching_target=stack.target("matching"),
                billing_target=stack.target("billing"),
                notifications_target=stack.target("notifications"),
            )
            await exit_stack.enter_async_context(
                case_worker(temporal, temporal_settings, worker_settings, auth)
            )
        if with_gateway:
            gateway_settings = GatewaySettings(
                environment=Environment.TEST,
                identity_target=stack.target("identity"),
                dossier_target=stack.target("dossier"),
                matching_target=stack.target("matching"),
                billing_target=stack.target("billing"),
                notifications_target=stack.target("notifications"),
            )
            app = create_app(gateway_settings, auth, temporal_settings, connect_temporal=temporal is not None)
            stack.gateway_url = await exit_stack.enter_async_context(serve_app(app))
        yield stack
