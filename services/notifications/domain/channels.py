"""Delivery channels behind one interface: SMTP email, an HTTP SMS gateway, and the
development store (SMS or email kept in the service database).

A channel answers every send with a `DeliveryResult`: sent, retry later (temporary
failure: 4xx SMTP reply, timeout, dropped connection, 5xx HTTP) or permanent (the
recipient's server or operator refused it: 5xx SMTP reply, 4xx HTTP about the number).
Results carry a short code, never the remote server's text (it may quote the address).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from enum import Enum
from typing import Protocol, cast

import aiosmtplib
import httpx
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import Channel
from services.notifications.models import DevelopmentMessage
from services.notifications.settings import NotificationsSettings, SmtpSecurity

log = logging.getLogger(__name__)

# SMTP 5xx replies that mean "our credentials or setup", not "this recipient": retried.
SMTP_SETUP_ERRORS = frozenset({421, 530, 534, 535, 538})
# HTTP statuses of an SMS gateway that refuse the number itself.
SMS_RECIPIENT_REFUSED = frozenset({400, 404, 410, 422})


class Outcome(Enum):
    SENT = "sent"
    RETRY = "retry"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    outcome: Outcome
    code: str = ""
    provider_message_id: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    notification_id: str
    channel: Channel
    template: str
    locale: str
    recipient: str
    recipient_hash: str
    subject: str
    text: str
    html: str
    created_at: datetime


class DeliveryChannel(Protocol):
    # True when the channel itself keeps the message in the development store.
    stores_development_copy: bool

    async def send(self, message: OutgoingMessage) -> DeliveryResult: ...

    async def aclose(self) -> None: ...


def build_email(message: OutgoingMessage, sender: str) -> EmailMessage:
    """A multipart/alternative email (text, then HTML). The Message-ID is derived from the
    notification id so a receiving system can drop a duplicate after a lost reply."""
    _, sender_address = parseaddr(sender)
    domain = sender_address.rpartition("@")[2] or "localhost"
    email = EmailMessage()
    email["From"] = sender
    email["To"] = Address(addr_spec=message.recipient)
    email["Subject"] = message.subject
    email["Date"] = format_datetime(message.created_at)
    email["Message-ID"] = f"<{message.notification_id}@{domain}>"
    email["Auto-Submitted"] = "auto-generated"
    email["Content-Language"] = message.locale
    email.set_content(message.text)
    email.add_alternative(message.html, subtype="html")
    return email


class SmtpEmailChannel:
    """Email through SMTP (aiosmtplib): implicit TLS or STARTTLS per settings, a small pool
    of open connections checked with NOOP before reuse."""

    stores_development_copy = False

    def __init__(self, settings: NotificationsSettings) -> None:
        self._settings = settings
        self._idle: list[aiosmtplib.SMTP] = []
        self._pool_size = settings.delivery_concurrency

    def _client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            use_tls=s.smtp_security is SmtpSecurity.TLS,
            start_tls=s.smtp_security is SmtpSecurity.STARTTLS,
            validate_certs=s.smtp_validate_certs,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() or None,
            timeout=s.smtp_timeout_seconds,
        )

    async def _acquire(self) -> aiosmtplib.SMTP:
        while self._idle:
            client = self._idle.pop()
            try:
                await client.noop()
                return client
            except (aiosmtplib.SMTPException, OSError):
                await self._discard(client)
        client = self._client()
        await client.connect()
        return client

    async def _discard(self, client: aiosmtplib.SMTP) -> None:
        with contextlib.suppress(Exception):
            client.close()

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        email = build_email(message, self._settings.email_from)
        client: aiosmtplib.SMTP | None = None
        try:
            client = await self._acquire()
            await client.send_message(email)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            code = min((error.code for error in exc.recipients), default=550)
            return self._refused(client, code)
        except aiosmtplib.SMTPResponseException as exc:
            return self._refused(client, exc.code)
        except aiosmtplib.SMTPTimeoutError:
            await self._drop(client)
            return DeliveryResult(Outcome.RETRY, "smtp_timeout")
        except (aiosmtplib.SMTPException, OSError):
            await self._drop(client)
            return DeliveryResult(Outcome.RETRY, "smtp_connection")
        self._release(client)
        return DeliveryResult(Outcome.SENT)

    def _refused(self, client: aiosmtplib.SMTP | None, code: int) -> DeliveryResult:
        # The connection stays usable after a refused transaction only if still open;
        # NOOP checks it before the next use.
        if client is not None and client.is_connected:
            self._release(client)
        permanent = 500 <= code < 600 and code not in SMTP_SETUP_ERRORS
        return DeliveryResult(Outcome.PERMANENT if permanent else Outcome.RETRY, f"smtp_{code}")

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if len(self._idle) < self._pool_size:
            self._idle.append(client)
        else:
            client.close()

    async def _drop(self, client: aiosmtplib.SMTP | None) -> None:
        if client is not None:
            await self._discard(client)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.quit(), timeout=2)
            await self._discard(client)


class HttpSmsChannel:
    """An SMS gateway reached with JSON over HTTP(S), API key as a bearer token. The
    notification id travels as `Idempotency-Key` and `reference`, so a gateway drops the
    duplicate of a request whose reply was lost."""

    stores_development_copy = False

    def __init__(self, settings: NotificationsSettings, client: httpx.AsyncClient | None = None) -> None:
        self._url = settings.sms_gateway_url
        self._sender = settings.sms_sender_id
        self._client = client or httpx.AsyncClient(
            timeout=settings.sms_gateway_timeout_seconds,
            headers={"Authorization": f"Bearer {settings.sms_gateway_api_key.get_secret_value()}"},
            follow_redirects=False,
        )

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        payload = {
            "to": message.recipient,
            "text": message.text,
            "sender": self._sender,
            "reference": message.notification_id,
        }
        try:
            response = await self._client.post(
                self._url, json=payload, headers={"Idempotency-Key": message.notification_id}
            )
        except httpx.TimeoutException:
            return DeliveryResult(Outcome.RETRY, "http_timeout")
        except httpx.HTTPError:
            return DeliveryResult(Outcome.RETRY, "http_connection")
        code = f"http_{response.status_code}"
        if response.is_success:
            return DeliveryResult(Outcome.SENT, code, _provider_id(response))
        if response.status_code in SMS_RECIPIENT_REFUSED:
            return DeliveryResult(Outcome.PERMANENT, code)
        return DeliveryResult(Outcome.RETRY, code)

    async def aclose(self) -> None:
        await self._client.aclose()


def _provider_id(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    value = body.get("message_id") if isinstance(body, dict) else None
    return str(value)[:128] if value is not None else None


class DevelopmentStoreChannel:
    """Development only: the message is kept in the service database, where ListOutbox and
    `python -m services.notifications.outbox` show it."""

    stores_development_copy = True

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        gate: AbstractAsyncContextManager[None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._gate = gate or contextlib.nullcontext()

    async def send(self, message: OutgoingMessage) -> DeliveryResult:
        async with self._gate, self._sessions.begin() as session:
            await store_development_copy(session, message)
        return DeliveryResult(Outcome.SENT, "stored")

    async def aclose(self) -> None:
        return None


async def store_development_copy(session: AsyncSession, message: OutgoingMessage) -> None:
    """Keep what was delivered (once per notification, a redelivery changes nothing)."""
    if await session.get(DevelopmentMessage, message.notification_id) is not None:
        return
    session.add(
        DevelopmentMessage(
            notification_id=message.notification_id,
            channel=message.channel.value,
            template=message.template,
            recipient=message.recipient,
            recipient_hash=message.recipient_hash,
            subject=message.subject,
            text_body=message.text,
            created_at=message.created_at,
        )
    )


async def store_development_copies(session: AsyncSession, messages: Sequence[OutgoingMessage]) -> None:
    """Many copies in one statement (an existing copy is kept: a redelivery changes nothing)."""
    if not messages:
        return
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(cast(Table, DevelopmentMessage.__table__)).on_conflict_do_nothing(
        index_elements=["notification_id"]
    )
    connection = await session.connection()
    await connection.execute(
        statement,
        [
            {
                "notification_id": message.notification_id,
                "channel": message.channel.value,
                "template": message.template,
                "recipient": message.recipient,
                "recipient_hash": message.recipient_hash,
                "subject": message.subject,
                "text_body": message.text,
                "created_at": message.created_at,
            }
            for message in messages
        ],
    )
