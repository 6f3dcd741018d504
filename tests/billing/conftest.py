"""The billing service with its partner API, the sandbox PSP, a gateway stand-in that
forwards the PSP's notifications, the identity service (email addresses) and a recording
notifications service: all real servers on port 0, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.partner.v1 import partner_pb2_grpc as ppb_grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.billing.app import running, running_partner_api
from services.billing.psp.keys import generate_rsa_key, public_pem
from services.billing.psp.sandbox import SandboxState, create_sandbox_app, sandbox_state
from services.billing.settings import BillingSettings
from services.identity.app import running as identity_running
from services.identity.settings import IdentitySettings
from services.shared.auth import Habilitation, Role, ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import postgres_available, service_database
from tests.support.recording_notifications import RecordingNotifications, recording_notifications

HMAC_KEY = secrets.token_bytes(64)
ISSUERS = ("identity", "gateway", "worker", "ops", "billing")


@asynccontextmanager
async def serve_app(app: Starlette) -> AsyncIterator[str]:
    """An ASGI app under uvicorn on a free loopback port; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="on")
    )
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
class Relay:
    """What the gateway does with the PSP's calls: forward the raw signed query string."""

    billing_target: str = ""
    token: Callable[[], str] = lambda: ""
    results: list[pb.HandlePspNotificationResponse] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    returns: list[str] = field(default_factory=list)


def relay_app(relay: Relay) -> Starlette:
    async def notification(request: Request) -> Response:
        raw = request.url.query
        async with open_channel(relay.billing_target, relay.token) as channel:
            try:
                result = await pb_grpc.BillingServiceStub(channel).HandlePspNotification(
                    pb.HandlePspNotificationRequest(
                        idempotency_key=hashlib.sha256(raw.encode()).hexdigest(),
                        kind=pb.PSP_MESSAGE_KIND_NOTIFICATION,
                        raw_payload=raw,
                    )
                )
            except grpc.aio.AioRpcError as exc:
                relay.errors.append(exc.code().name)
                return PlainTextResponse("refused", status_code=400)
        relay.results.append(result)
        return PlainTextResponse("ok")

    async def browser_return(request: Request) -> Response:
        relay.returns.append(request.url.query)
        return PlainTextResponse("back on the platform")

    return Starlette(
        routes=[
            Route("/psp/notification", notification),
            Route("/psp/return/{outcome}", browser_return),
        ]
    )


@dataclass
class Env:
    backend: str
    auth: InternalAuthSettings
    settings: BillingSettings
    database_url: str
    billing_target: str
    partner_target: str
    identity_target: str
    sandbox_url: str
    sandbox: SandboxState
    relay: Relay
    recorder: RecordingNotifications
    exit_stack: AsyncExitStack

    def tokens(self, issuer: str) -> Callable[[], str]:
        return ServiceTokenProvider(TokenSigner.from_keys_dir(self.auth.keys_dir, issuer))

    def person(
        self, account_id: str, role: Role, habilitations: Iterable[Habilitation] = ()
    ) -> Callable[[], str]:
        """A person's token as identity mints it (with the habilitations it would hold)."""
        signer = TokenSigner.from_keys_dir(self.auth.keys_dir, "identity")
        token, _ = signer.mint(account_id, role, "s-1", habilitations)
        return lambda: token

    def billing(self, token: Callable[[], str | None] | None = None) -> Any:
        channel = open_channel(self.billing_target, token or self.tokens("ops"))
        self.exit_stack.push_async_callback(channel.close)
        return pb_grpc.BillingServiceStub(channel)

    def partner(self, api_key: str) -> Any:
        channel = grpc.aio.insecure_channel(self.partner_target)
        self.exit_stack.push_async_callback(channel.close)
        stub = ppb_grpc.PartnerServiceStub(channel)
        return _WithKey(stub, api_key)

    async def sign_up(self) -> str:
        async with open_channel(self.identity_target, self.tokens("ops")) as channel:
            created = await identity_pb2_grpc.IdentityServiceStub(channel).SignUp(
                identity_pb2.SignUpRequest(
                    idempotency_key=f"signup-{uuid.uuid4()}",
                    email=f"patient-{uuid.uuid4().hex[:8]}@example.org",
                    phone_number="+33612345678",
                    password="Correct-Horse-9",
                    declared_age=40,
                    locale="fr",
                )
            )
            return str(created.account_id)


class _WithKey:
    """A partner stub sending its API key on every call."""

    def __init__(self, stub: Any, api_key: str) -> None:
        self._stub = stub
        self._metadata = (("x-partner-api-key", api_key),) if api_key else ()

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._stub, name)
        return lambda request: method(request, metadata=self._metadata)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
async def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    backend = str(request.param)
    if backend == "postgres" and not await postgres_available():
        if os.environ.get("SO_TEST_ALLOW_NO_POSTGRES") == "1":
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        pytest.fail("PostgreSQL must run on 127.0.0.1:5432 (or set SO_TEST_POSTGRES_DSN)")
    workdir = tmp_path_factory.mktemp(f"billing-{backend}")
    for issuer in ISSUERS:
        generate_keypair(workdir / "keys", issuer)
    auth = InternalAuthSettings(keys_dir=workdir / "keys")
    psp_key = generate_rsa_key()
    public_key_path = workdir / "keys" / "psp.pub.pem"
    public_key_path.write_bytes(public_pem(psp_key))
    async with AsyncExitStack() as stack:
        identity_url = await stack.enter_async_context(service_database("identity", backend, workdir / "db"))
        billing_url = await stack.enter_async_context(service_database("billing", backend, workdir / "db"))
        identity = await stack.enter_async_context(
            identity_running(
                IdentitySettings(database_url=identity_url, environment=Environment.TEST, port=0), auth
            )
        )
        recorder_server, recorder = await stack.enter_async_context(recording_notifications(auth))
        sandbox_app = create_sandbox_app(HMAC_KEY, psp_key, "sha1")
        sandbox_url = await stack.enter_async_context(serve_app(sandbox_app))
        relay = Relay(token=ServiceTokenProvider(TokenSigner.from_keys_dir(auth.keys_dir, "gateway")))
        relay_url = await stack.enter_async_context(serve_app(relay_app(relay)))
        settings = BillingSettings(
            environment=Environment.TEST,
            port=0,
            partner_api_port=0,
            database_url=billing_url,
            identity_target=identity.target,
            notifications_target=recorder_server.target,
            public_base_url="https://app.deuxiemeavis.test",
            outbox_poll_seconds=0.2,
            psp_payment_url=f"{sandbox_url}/cgi/MYchoix_pagepaiement.cgi",
            psp_hmac_key_hex=HMAC_KEY.hex(),
            psp_public_key_path=public_key_path,
            psp_return_base_url=f"{relay_url}/psp",
            coverage_code_secret_hex=secrets.token_hex(32),
            archive_dir=workdir / "archive",
            payment_sweep_interval_seconds=0.3,
        )
        billing = await stack.enter_async_context(running(settings, auth))
        partner = await stack.enter_async_context(running_partner_api(settings))
        relay.billing_target = billing.target
        yield Env(
            backend,
            auth,
            settings,
            billing_url,
            billing.target,
            partner.target,
            identity.target,
            sandbox_url,
            sandbox_state(sandbox_app),
            relay,
            recorder,
            stack,
        )


async def expect_status(call: Awaitable[Any], code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()
    return str(error.value.details())


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def ts(value: datetime) -> Any:
    return to_timestamp(value)


def now() -> datetime:
    return datetime.now(UTC)


async def new_order(
    env: Env, payer: str | None = None, doctors: int = 1, area: str = "cardiology"
) -> pb.Order:
    payer = payer or str(uuid.uuid4())
    case_id = str(uuid.uuid4())
    response = await env.billing(env.tokens("worker")).CreateOrder(
        pb.CreateOrderRequest(
            idempotency_key=f"order-{case_id}",
            case_id=case_id,
            payer_account_id=payer,
            purpose=pb.CASE_PURPOSE_SECOND_OPINION,
            therapeutic_area=area,
            doctor_count=doctors,
        )
    )
    order: pb.Order = response.order
    return order


async def pay_in_sandbox(
    env: Env, order: pb.Order, card: str, key: str | None = None
) -> tuple[str, httpx.Response]:
    """Start a card payment and go through the sandbox's pages like a browser."""
    started = await env.billing(env.tokens("gateway")).StartCardPayment(
        pb.StartCardPaymentRequest(
            idempotency_key=key or f"pay-{uuid.uuid4()}", order_id=order.order_id, locale="fr"
        )
    )
    return started.payment_attempt_id, await pay_started(env, started, card)


async def pay_started(env: Env, started: pb.StartCardPaymentResponse, card: str) -> httpx.Response:
    """Go through the sandbox's pages for an attempt already started (maybe long ago)."""
    async with httpx.AsyncClient() as browser:
        page = await browser.post(
            started.form_action_url, data={f.name: f.value for f in started.form_fields}
        )
        assert page.status_code == 200, page.text
        token = page.text.split('name="token" value="')[1].split('"')[0]
        done = await browser.post(
            f"{env.sandbox_url}/pay",
            data={"token": token, "card_number": card, "expiry": "12/30", "cvv": "123"},
            follow_redirects=False,
        )
    return done


async def partner_with_agreement(
    env: Env, purposes: list[Any] | None = None, areas: list[str] | None = None, quota: int = 0
) -> tuple[str, str]:
    ops = env.billing()
    partner = await ops.CreatePartner(
        pb.CreatePartnerRequest(
            idempotency_key=f"partner-{uuid.uuid4()}",
            name=f"Mutuelle {uuid.uuid4().hex[:8]}",
            kind=pb.PARTNER_KIND_MUTUELLE,
        )
    )
    agreement = await ops.CreatePartnerAgreement(
        pb.CreatePartnerAgreementRequest(
            idempotency_key=f"agreement-{uuid.uuid4()}",
            partner_id=partner.partner.partner_id,
            covered_purposes=purposes or [pb.CASE_PURPOSE_SECOND_OPINION],
            covered_therapeutic_areas=areas or [],
            starts_at=ts(now() - timedelta(days=1)),
            ends_at=ts(now() + timedelta(days=365)),
            quota=quota,
        )
    )
    return partner.partner.partner_id, agreement.agreement.agreement_id


async def record_mandate(
    env: Env, doctor_id: str | None = None, account_id: str | None = None
) -> pb.BillingMandate:
    doctor_id = doctor_id or str(uuid.uuid4())
    response = await env.billing().RecordBillingMandate(
        pb.RecordBillingMandateRequest(
            idempotency_key=f"mandate-{doctor_id}",
            doctor_id=doctor_id,
            doctor_account_id=account_id or str(uuid.uuid4()),
            doctor_legal_name="Dr Claire Martin",
            covers_billing=True,
            covers_collection=True,
            starts_at=ts(now() - timedelta(days=30)),
            mandate_text_version="2025-01",
            mandate_text_sha256_hex=hashlib.sha256(b"mandat").hexdigest(),
            signed_document_id=str(uuid.uuid4()),
            accepted_at=ts(now() - timedelta(days=30)),
        )
    )
    mandate: pb.BillingMandate = response.mandate
    return mandate
