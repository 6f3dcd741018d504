"""Real local servers standing in for the outside world: an SMTP server (aiosmtpd) and an
SMS gateway (FastAPI under uvicorn), both on port 0, both able to fail on demand.
Used by the notifications tests and bench/notifications_delivery.py."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import uvicorn
from aiosmtpd.smtp import SMTP
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class SmtpRecorder:
    """aiosmtpd handler keeping every accepted message.

    fail_every=N: every Nth DATA gets a temporary 451 (message not kept).
    drop_every=N: every Nth DATA has its connection dropped before any reply (not kept).
    always: a reply code for every DATA (e.g. 451 forever), 0 for none.
    refuse: recipients answered 550 at RCPT time.
    hang: DATA never answers (shutdown tests).
    """

    fail_every: int = 0
    drop_every: int = 0
    always: int = 0
    refuse: set[str] = field(default_factory=set)
    hang: bool = False
    messages: list[EmailMessage] = field(default_factory=list)
    data_commands: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address.lower() in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.data_commands += 1
        if self.hang:
            await asyncio.Event().wait()
        if self.always:
            return f"{self.always} 4.3.0 try again later"
        if self.drop_every and self.data_commands % self.drop_every == 0:
            server.transport.close()
            return "421 4.3.2 closing"
        if self.fail_every and self.data_commands % self.fail_every == 0:
            return "451 4.3.0 temporary failure, try again"
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.arrived.set()
        return "250 2.0.0 accepted"

    def per_message_id(self) -> Counter[str]:
        return Counter(str(message["Message-ID"]) for message in self.messages)


@asynccontextmanager
async def smtp_server(recorder: SmtpRecorder) -> AsyncIterator[int]:
    """aiosmtpd on 127.0.0.1, port 0; yields the port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(recorder, hostname="smtp.test", timeout=30), "127.0.0.1", 0
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class SmsGateway:
    """An SMS gateway: JSON POST, bearer API key; fail_every=N answers every Nth with 503."""

    api_key: str = "test-sms-key"
    fail_every: int = 0
    refuse: set[str] = field(default_factory=set)
    requests: int = 0
    accepted: list[dict[str, Any]] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/messages")
        async def send(request: Request) -> JSONResponse:
            self.requests += 1
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": "unauthorized"}, status_code=401)
            if self.fail_every and self.requests % self.fail_every == 0:
                return JSONResponse({"error": "busy"}, status_code=503)
            body = await request.json()
            if body["to"] in self.refuse:
                return JSONResponse({"error": "invalid number"}, status_code=422)
            self.accepted.append(body)
            self.idempotency_keys.append(request.headers.get("idempotency-key", ""))
            return JSONResponse({"message_id": f"gw-{len(self.accepted)}"}, status_code=202)

        return app

    def per_reference(self) -> Counter[str]:
        return Counter(str(body["reference"]) for body in self.accepted)


@asynccontextmanager
async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """The app under uvicorn on a free loopback port; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False, lifespan="off")
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


@asynccontextmanager
async def sms_gateway(gateway: SmsGateway) -> AsyncIterator[str]:
    """Yields the URL messages are POSTed to."""
    async with serve_app(gateway.app()) as base_url:
        yield f"{base_url}/v1/messages"
