"""Codes and emails go out through the notifications service (its contract only).

Identity calls with a service token it mints for itself, and an idempotency key derived
from the business id (the login attempt and the code's ordinal, the link id...), so a
retried command never sends twice. Nothing here logs a recipient or a code.

Two ways out:
- `Notifier.send`, inside the command: a refusal or an outage fails the command (codes,
  staff operations), and the caller retries.
- `Courier.post`, after the command committed: for the answers that must not tell whether
  an account exists (password-reset request, sign-up with a known address). Whether a
  message goes out then changes neither the answer nor its latency, and neither does a
  refusal of the notifications service (a rate limit would otherwise reveal the account).
  The courier retries an unavailable service a few times in the background; a message
  still not accepted is dropped and counted in the log (the person asks again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.notifications.v1 import notifications_pb2_grpc as npb_grpc

from services.shared.errors import ResourceExhausted, Unavailable
from services.shared.protoconv import to_timestamp

log = logging.getLogger(__name__)


Template = int  # a NotificationTemplate value


@dataclass(frozen=True, slots=True)
class Message:
    template: Template
    idempotency_key: str
    locale: str
    phone_number: str = ""
    email: str = ""
    one_time_code: str = ""
    link: str = ""
    date: datetime | None = None
    first_name: str = ""


class Notifier:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = npb_grpc.NotificationsServiceStub(channel)

    async def send(self, message: Message) -> str:
        variables = npb.TemplateVariables(
            one_time_code=message.one_time_code, link=message.link, first_name=message.first_name
        )
        if message.date is not None:
            variables.date.CopyFrom(to_timestamp(message.date))
        request = npb.SendNotificationRequest(
            idempotency_key=message.idempotency_key,
            template=cast(Any, message.template),
            locale=message.locale or "fr",
            variables=variables,
        )
        if message.phone_number:
            request.channel = npb.CHANNEL_SMS
            request.phone_number = message.phone_number
        else:
            request.channel = npb.CHANNEL_EMAIL
            request.email = message.email
        try:
            response = await self._stub.SendNotification(request)
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise ResourceExhausted("too many messages to this recipient; try again later") from exc
            if exc.code() in {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}:
                raise Unavailable("the message could not be sent; try again shortly") from exc
            raise
        return str(response.notification_id)


class Courier:
    """Sends messages in the background, after the command that decided them committed."""

    def __init__(self, notifier: Notifier, retry_delays: Sequence[float] = (0.5, 2.0, 10.0, 30.0)) -> None:
        self._notifier = notifier
        self._retry_delays = tuple(retry_delays)
        self._pending: set[asyncio.Task[None]] = set()

    def post(self, message: Message) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(message))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _deliver(self, message: Message) -> None:
        fields = {"template": int(message.template)}
        for delay in (0.0, *self._retry_delays):
            if delay:
                await asyncio.sleep(delay)
            try:
                await self._notifier.send(message)
                return
            except Unavailable:
                continue
            except ResourceExhausted:
                log.warning("message refused by the rate limit; dropped", extra={"fields": fields})
                return
            except grpc.aio.AioRpcError as exc:
                fields["code"] = exc.code().value[0]
                log.error("message refused by the notifications service", extra={"fields": fields})
                return
            except Exception:
                log.exception("message could not be sent", extra={"fields": fields})
                return
        log.error("notifications unavailable; message dropped", extra={"fields": fields})

    async def drain(self, grace_seconds: float = 5.0) -> None:
        """Waits for the messages under way (shutdown); those still retrying are cancelled."""
        if not self._pending:
            return
        _, late = await asyncio.wait(set(self._pending), timeout=grace_seconds)
        for task in late:
            task.cancel()
        if late:
            await asyncio.gather(*late, return_exceptions=True)
            fields = {"count": len(late)}
            log.warning("messages still retrying at shutdown; dropped", extra={"fields": fields})


LOGIN_CODE = npb.NOTIFICATION_TEMPLATE_LOGIN_CODE
VERIFICATION_CODE = npb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
EMAIL_VERIFICATION_CODE = npb.NOTIFICATION_TEMPLATE_EMAIL_VERIFICATION_CODE
PASSWORD_RESET = npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET
ACCOUNT_LOCKED = npb.NOTIFICATION_TEMPLATE_ACCOUNT_LOCKED
BREACH_NOTICE = npb.NOTIFICATION_TEMPLATE_BREACH_NOTICE
REFERRAL_INVITATION = npb.NOTIFICATION_TEMPLATE_REFERRAL_INVITATION
PROVISIONAL_CREDENTIALS = npb.NOTIFICATION_TEMPLATE_PROVISIONAL_CREDENTIALS
ACCOUNT_DETAILS_CHANGED = npb.NOTIFICATION_TEMPLATE_ACCOUNT_DETAILS_CHANGED
SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT = npb.NOTIFICATION_TEMPLATE_SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT
