"""Sends the email outbox through the notifications service, with a `billing` service
token (the `billing` key pair in the keys folder). The recipient's address and language
are read from the identity service at sending time; billing keeps only the account id."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.notifications.v1 import notifications_pb2_grpc as npb_grpc
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.domain.outbox import backoff, due_emails
from services.billing.models import OutboxEmail
from services.billing.settings import BillingSettings
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import utcnow
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from services.shared.settings import InternalAuthSettings

log = logging.getLogger(__name__)
ISSUER = "billing"
TEMPLATES = {
    "payment_summary": (npb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY, "/invoices"),
    "invoice_available": (npb.NOTIFICATION_TEMPLATE_INVOICE_AVAILABLE, "/invoices"),
    # A refund after a cancelled case (domain/refunds.py): the amount refunded.
    "case_cancelled": (npb.NOTIFICATION_TEMPLATE_CASE_CANCELLED, "/invoices"),
    # A duplicate payment refunded with the PSP (domain/refunds.py): the amount and date.
    "duplicate_payment_refunded": (
        npb.NOTIFICATION_TEMPLATE_DUPLICATE_PAYMENT_REFUNDED,
        "/invoices",
    ),
}


def first_name(display_name: str) -> str:
    first = display_name.split(" ")[0] if display_name else ""
    return first if first and len(first) <= 50 and first.replace("-", "").replace("'", "").isalpha() else ""


class EmailDispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: BillingSettings,
        auth: InternalAuthSettings,
    ) -> None:
        self._sessions = sessions
        self._settings = settings
        self._auth = auth
        self._event = asyncio.Event()
        self._tokens: ServiceTokenProvider | None = None
        self._channels: tuple[grpc.aio.Channel, grpc.aio.Channel] | None = None

    def wake(self) -> None:
        self._event.set()

    def _token(self) -> str:
        if self._tokens is None:
            signer = TokenSigner.from_keys_dir(self._auth.keys_dir, ISSUER, self._auth.token_ttl_seconds)
            self._tokens = ServiceTokenProvider(signer)
        return self._tokens()

    def _stubs(
        self,
    ) -> tuple[identity_pb2_grpc.IdentityServiceAsyncStub, npb_grpc.NotificationsServiceAsyncStub]:
        if self._channels is None:
            timeout = self._settings.outgoing_call_timeout_seconds
            self._channels = (
                open_channel(self._settings.identity_target, self._token, timeout),
                open_channel(self._settings.notifications_target, self._token, timeout),
            )
        return (
            identity_pb2_grpc.IdentityServiceStub(self._channels[0]),
            npb_grpc.NotificationsServiceStub(self._channels[1]),
        )

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout=self._settings.outbox_poll_seconds)
            self._event.clear()
            try:
                await self.drain()
            except Exception as exc:  # keep the loop alive; the next pass retries
                log.error("email outbox pass failed", exc_info=exc)

    async def drain(self) -> int:
        async with self._sessions() as session:
            due = await due_emails(session)
        sent = 0
        for email in due:
            sent += await self._send(email)
        return sent

    async def _send(self, email: OutboxEmail) -> int:
        template, path = TEMPLATES[email.template]
        try:
            identity, notifications = self._stubs()
            account = (
                await identity.GetAccount(identity_pb2.GetAccountRequest(account_id=email.account_id))
            ).account
            variables = npb.TemplateVariables(
                first_name=first_name(account.display_name),
                link=self._settings.public_base_url.rstrip("/") + path,
                date=to_timestamp(email.occurred_at.astimezone(UTC)),
                amount_cents=email.amount_cents,
                currency=email.currency,
                invoice_number=email.invoice_number,
            )
            response = await notifications.SendNotification(
                npb.SendNotificationRequest(
                    idempotency_key=f"billing-email:{email.outbox_id}",
                    template=template,
                    channel=npb.CHANNEL_EMAIL,
                    email=account.email,
                    locale=account.locale or "fr",
                    variables=variables,
                )
            )
        except (grpc.aio.AioRpcError, OSError, ValueError) as exc:
            code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
            log.warning("email not sent yet", extra={"fields": {"outbox_id": email.outbox_id, "error": code}})
            await self._postpone(email)
            return 0
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.outbox_id == email.outbox_id, OutboxEmail.sent_at.is_(None))
                .values(
                    sent_at=utcnow(), notification_id=response.notification_id, attempts=email.attempts + 1
                )
            )
        log.info(
            "email handed over", extra={"fields": {"outbox_id": email.outbox_id, "template": email.template}}
        )
        return 1

    async def _postpone(self, email: OutboxEmail) -> None:
        now: datetime = utcnow()
        async with self._sessions.begin() as session:
            await session.execute(
                update(OutboxEmail)
                .where(OutboxEmail.outbox_id == email.outbox_id)
                .values(attempts=email.attempts + 1, next_attempt_at=now + backoff(email.attempts + 1))
            )

    async def close(self) -> None:
        if self._channels is not None:
            for channel in self._channels:
                await channel.close()
