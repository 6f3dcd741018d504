"""Identity on port 0 with a recording NotificationsService, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy.ext.asyncio import AsyncEngine

from services.identity.app import running
from services.identity.domain.sessions import open_session
from services.identity.settings import IdentitySettings
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.grpc_server import GrpcServer
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database
from tests.support.recording_notifications import RecordingNotifications, recording_notifications

PASSWORD = "Correct-Horse-9"
PHONE = "+33 6 12 34 56 78"


@dataclass
class Identity:
    auth: InternalAuthSettings
    target: str
    recorder: RecordingNotifications
    engine: AsyncEngine
    channels: list[grpc.aio.Channel]
    services: dict[str, pb_grpc.IdentityServiceAsyncStub] = field(default_factory=dict)

    def stub(self, tokens: Callable[[], str | None]) -> pb_grpc.IdentityServiceAsyncStub:
        channel = open_channel(self.target, tokens)
        self.channels.append(channel)
        return pb_grpc.IdentityServiceStub(channel)

    def service(self, issuer: str) -> pb_grpc.IdentityServiceAsyncStub:
        if issuer not in self.services:
            signer = TokenSigner.from_keys_dir(self.auth.keys_dir, issuer)
            self.services[issuer] = self.stub(ServiceTokenProvider(signer))
        return self.services[issuer]

    @property
    def gateway(self) -> pb_grpc.IdentityServiceAsyncStub:
        return self.service("gateway")

    @property
    def ops(self) -> pb_grpc.IdentityServiceAsyncStub:
        return self.service("ops")

    def as_role(self, subject: str, role: Role, session_id: str = "") -> pb_grpc.IdentityServiceAsyncStub:
        token, _ = TokenSigner.from_keys_dir(self.auth.keys_dir, "identity").mint(subject, role, session_id)
        return self.stub(lambda: token)

    async def as_session(self, session_token: str) -> pb_grpc.IdentityServiceAsyncStub:
        """What the gateway does with a cookie: validate, then call with the internal token."""
        valid = await self.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=session_token))
        token = valid.internal_token
        return self.stub(lambda: token)

    async def create_staff(self, role: pb.AccountRole.ValueType, email: str, **fields: Any) -> str:
        """A staff account created by the provisioning tool (ACC-12)."""
        request = pb.CreateStaffAccountRequest(
            idempotency_key=f"staff:{email}",
            role=role,
            email=email,
            phone_number=fields.pop("phone_number", PHONE),
            display_name=fields.pop("display_name", "Staff Member"),
            **fields,
        )
        return (await self.ops.CreateStaffAccount(request)).account_id

    async def open_session(self, account_id: str) -> str:
        """A session as a completed login opens it (the login flow has its own tests)."""
        async with session_factory(self.engine).begin() as session:
            return (await open_session(session, account_id)).token

    def last(self, template: int) -> npb.SendNotificationRequest:
        return self.recorder.last(template)

    def sent_of(self, template: int) -> list[npb.SendNotificationRequest]:
        return [message for message in self.recorder.sent if message.template == template]

    async def posted(self, template: int, count: int = 1) -> npb.SendNotificationRequest:
        """The latest message of `template` once `count` of them arrived: identity posts
        some emails after its answer, in the background (no account enumeration)."""
        for _ in range(200):
            if len(self.sent_of(template)) >= count:
                return self.last(template)
            await asyncio.sleep(0.01)
        raise AssertionError(f"no message of template {template} was posted")

    def code(self, template: int = npb.NOTIFICATION_TEMPLATE_LOGIN_CODE) -> str:
        return self.last(template).variables.one_time_code

    def link_token(self, template: int) -> str:
        match = re.search(r"token=([A-Za-z0-9_\-]+)", self.last(template).variables.link)
        assert match, "the email carries a link with a token"
        return match.group(1)

    async def sign_up(self, email: str, password: str = PASSWORD, **fields: Any) -> str:
        request = pb.SignUpRequest(
            idempotency_key=f"signup:{email}",
            email=email,
            phone_number=fields.pop("phone_number", PHONE),
            password=password,
            declared_age=fields.pop("declared_age", 30),
            locale="fr",
            **fields,
        )
        return (await self.gateway.SignUp(request)).account_id

    async def start_login(
        self, email: str, password: str = PASSWORD, key: str | None = None
    ) -> pb.StartLoginResponse:
        return await self.gateway.StartLogin(
            pb.StartLoginRequest(
                idempotency_key=key or f"login:{uuid.uuid4()}",
                email=email,
                password=password,
                client=pb.ClientInfo(ip_address="203.0.113.7", user_agent="pytest"),
            )
        )

    async def verify(
        self,
        attempt_id: str,
        code: str,
        factor: pb.SecondFactorKind.ValueType = pb.SECOND_FACTOR_KIND_SMS_CODE,
    ) -> pb.VerifyLoginCodeResponse:
        return await self.gateway.VerifyLoginCode(
            pb.VerifyLoginCodeRequest(login_attempt_id=attempt_id, factor=factor, code=code)
        )

    async def log_in(self, email: str, password: str = PASSWORD) -> pb.VerifyLoginCodeResponse:
        attempt = await self.start_login(email, password)
        done = await self.verify(attempt.login_attempt_id, self.code())
        assert done.completed
        return done


async def expect(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return str(error.value.details())


def make_auth(keys_dir: Path) -> InternalAuthSettings:
    for issuer in ("identity", "gateway", "ops", "worker"):
        generate_keypair(keys_dir, issuer)
    return InternalAuthSettings(keys_dir=keys_dir)


class SlowNotifications(RecordingNotifications):
    """Answers after a delay, as the real service does: it renders the message and writes
    its outbox under the recipient's rate-limit lock before it answers."""

    delay_seconds = 0.02

    async def SendNotification(
        self, request: npb.SendNotificationRequest, context: Any
    ) -> npb.SendNotificationResponse:
        await asyncio.sleep(self.delay_seconds)
        return await super().SendNotification(request, context)


@asynccontextmanager
async def slow_notifications(
    auth: InternalAuthSettings,
) -> AsyncIterator[tuple[GrpcServer, RecordingNotifications]]:
    async with recording_notifications(auth, SlowNotifications()) as running:  # type: ignore[abstract]
        yield running


@asynccontextmanager
async def identity_harness(
    tmp_path: Path,
    backend: str,
    notifications: Callable[
        [InternalAuthSettings], AbstractAsyncContextManager[tuple[GrpcServer, RecordingNotifications]]
    ],
) -> AsyncIterator[Identity]:
    auth = make_auth(tmp_path / "keys")
    async with (
        service_database("identity", backend, tmp_path / "db") as url,
        notifications(auth) as (notifications_server, recorder),
    ):
        settings = IdentitySettings(
            database_url=url,
            environment=Environment.TEST,
            port=0,
            notifications_target=notifications_server.target,
            code_resend_interval_seconds=0,
            max_codes_per_attempt=3,
        )
        async with running(settings, auth) as server:
            engine = create_engine(url)
            harness = Identity(auth, server.target, recorder, engine, [])
            try:
                yield harness
            finally:
                for channel in harness.channels:
                    await channel.close()
                await engine.dispose()


@pytest.fixture
async def identity(tmp_path: Path, backend: str) -> AsyncIterator[Identity]:
    async with identity_harness(tmp_path, backend, recording_notifications) as harness:
        yield harness


@pytest.fixture
async def identity_slow_notifications(tmp_path: Path, backend: str) -> AsyncIterator[Identity]:
    """Identity whose notifications service takes as long to answer as the real one."""
    async with identity_harness(tmp_path, backend, slow_notifications) as harness:
        yield harness
