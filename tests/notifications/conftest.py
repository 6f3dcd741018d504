"""The notifications service on port 0 with a real SMTP server and SMS gateway, on SQLite
and PostgreSQL (fresh database each time)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc

from services.notifications.app import running
from services.notifications.settings import NotificationsSettings, SmsTransport
from services.shared.auth import ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.grpc_client import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Environment, InternalAuthSettings
from tests.notifications.servers import SmsGateway, SmtpRecorder, sms_gateway, smtp_server
from tests.support.databases import service_database

BASE_URL = "https://app.deuxiemeavis.test"
ISSUERS = ("identity", "billing", "worker", "gateway", "ops")
FINAL = (pb.DELIVERY_STATUS_SENT, pb.DELIVERY_STATUS_FAILED, pb.DELIVERY_STATUS_BOUNCED)


@dataclass
class Notifications:
    server: GrpcServer
    settings: NotificationsSettings
    auth: InternalAuthSettings
    database_url: str
    smtp: SmtpRecorder
    sms: SmsGateway
    exit_stack: AsyncExitStack

    def stub(self, issuer: str = "identity") -> pb_grpc.NotificationsServiceAsyncStub:
        """A stub calling as the service `issuer` (role service)."""
        provider = ServiceTokenProvider(TokenSigner.from_keys_dir(self.auth.keys_dir, issuer))
        channel = open_channel(self.server.target, provider)
        self.exit_stack.push_async_callback(channel.close)
        return pb_grpc.NotificationsServiceStub(channel)

    def stub_with_token(self, token: str) -> pb_grpc.NotificationsServiceAsyncStub:
        channel = open_channel(self.server.target, lambda: token)
        self.exit_stack.push_async_callback(channel.close)
        return pb_grpc.NotificationsServiceStub(channel)


def service_settings(
    database_url: str, smtp_port: int, sms_url: str, **overrides: Any
) -> NotificationsSettings:
    values: dict[str, Any] = {
        "environment": Environment.TEST,
        "port": 0,
        "database_url": database_url,
        "public_base_url": BASE_URL,
        "smtp_port": smtp_port,
        "sms_transport": SmsTransport.HTTP,
        "sms_gateway_url": sms_url,
        "sms_gateway_api_key": "test-sms-key",
        "retry_base_seconds": 0.02,
        "retry_max_seconds": 0.1,
        "max_attempts": 4,
        "delivery_poll_seconds": 0.05,
        "delivery_concurrency": 4,
        "code_limit_count": 3,
        "shutdown_grace_seconds": 1.0,
        "recipient_hash_key": "test-recipient-key",
    }
    values.update(overrides)
    return NotificationsSettings(**values)


@asynccontextmanager
async def notifications_service(
    workdir: Path,
    backend: str,
    smtp: SmtpRecorder | None = None,
    sms: SmsGateway | None = None,
    **overrides: Any,
) -> AsyncIterator[Notifications]:
    smtp = smtp or SmtpRecorder()
    sms = sms or SmsGateway()
    for issuer in ISSUERS:
        generate_keypair(workdir / "keys", issuer)
    auth = InternalAuthSettings(keys_dir=workdir / "keys")
    async with AsyncExitStack() as stack:
        url = overrides.pop("database_url", None) or await stack.enter_async_context(
            service_database("notifications", backend, workdir / "db")
        )
        smtp_port = await stack.enter_async_context(smtp_server(smtp))
        sms_url = await stack.enter_async_context(sms_gateway(sms))
        settings = service_settings(url, overrides.pop("smtp_port", smtp_port), sms_url, **overrides)
        server = await stack.enter_async_context(running(settings, auth))
        async with AsyncExitStack() as channels:
            yield Notifications(server, settings, auth, url, smtp, sms, channels)


@pytest.fixture
async def service(tmp_path: Path, backend: str) -> AsyncIterator[Notifications]:
    async with notifications_service(tmp_path, backend) as running_service:
        yield running_service


async def wait_final(
    stub: pb_grpc.NotificationsServiceAsyncStub, notification_id: str, limit_s: float = 15.0
) -> pb.GetNotificationStatusResponse:
    deadline = time.monotonic() + limit_s
    while True:
        status = await stub.GetNotificationStatus(
            pb.GetNotificationStatusRequest(notification_id=notification_id)
        )
        if status.status in FINAL:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"still {pb.DeliveryStatus.Name(status.status)} after {limit_s} s")
        await asyncio.sleep(0.02)


async def expect_status(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return str(error.value.details())
