"""Thin gRPC layer of the notifications service: check who calls, translate messages, call
the domain. Only services call it; no request field can carry free text (SEC-08)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import (
    Channel,
    DeliveryStatus,
    Template,
    normalise_locale,
    spec_for,
)
from services.notifications.domain.outbox import (
    NO_GATE,
    NewNotification,
    RateLimit,
    RatePolicy,
    WriteGate,
    get_notification,
    list_development_messages,
    purge_ended_before,
    purge_recipient,
    queue_once,
)
from services.notifications.domain.recipients import (
    RecipientHasher,
    email_recipient,
    phone_recipient,
    recipient_for,
)
from services.notifications.domain.rendering import Renderer
from services.notifications.domain.sending import SendGroupCommit
from services.notifications.domain.variables import RawVariables, template_context
from services.notifications.models import IdempotencyRecord
from services.notifications.settings import NotificationsSettings
from services.shared.auth import Role
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument
from services.shared.idempotency import MAX_KEY_LENGTH, run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

log = logging.getLogger(__name__)

# Services that send messages and read their statuses; people never call this service.
SENDERS = frozenset({"identity", "billing", "worker", "gateway"})
# Erasure: the identity service (account closure), the worker (GDPR workflow), operations.
PURGERS = frozenset({"identity", "worker", "ops"})
# The development outbox page of the gateway, and operations tooling.
OUTBOX_READERS = frozenset({"gateway", "ops"})
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20


def rate_policy(settings: NotificationsSettings) -> RatePolicy:
    template_window = timedelta(seconds=settings.template_limit_window_seconds)
    return RatePolicy(
        code=RateLimit(settings.code_limit_count, timedelta(seconds=settings.code_limit_window_seconds)),
        personal=RateLimit(settings.template_limit_count, template_window),
        staff=RateLimit(settings.staff_template_limit_count, template_window),
        sms_per_day=settings.sms_daily_limit_count,
    )


def _status_pb(status: str) -> Any:
    return to_pb_enum(pb.DeliveryStatus, DeliveryStatus(status))


class NotificationsServicer(pb_grpc.NotificationsServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        settings: NotificationsSettings | None = None,
        on_queued: Callable[[], None] | None = None,
        renderer: Renderer | None = None,
        gate: WriteGate = NO_GATE,
    ) -> None:
        self._gate = gate
        self._sessions = sessions
        self._settings = settings or NotificationsSettings()
        self._on_queued = on_queued or (lambda: None)
        self._renderer = renderer or Renderer()
        self._hasher = RecipientHasher(self._settings.recipient_hash_key.get_secret_value().encode())
        self._rates = rate_policy(self._settings)
        self._sends = (
            SendGroupCommit(sessions, self._rates, gate=gate, max_batch=self._settings.send_batch_max)
            if self._settings.send_group_commit
            else None
        )

    async def aclose(self, grace_seconds: float) -> None:
        """After the server stopped: let queued messages commit, answer what is left."""
        if self._sends is not None:
            await self._sends.aclose(grace_seconds)

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: Any
    ) -> pb.SendNotificationResponse:
        principal = require_role(Role.SERVICE, services=SENDERS)
        template = from_pb_enum(pb.NotificationTemplate, Template, request.template)
        if template is None:
            raise InvalidArgument("template is required")
        channel = from_pb_enum(pb.Channel, Channel, request.channel)
        if channel is None:
            raise InvalidArgument("channel is required")
        spec = spec_for(template)
        if channel not in spec.channels:
            supported = " or ".join(sorted(c.name for c in spec.channels))
            raise InvalidArgument(f"template {template.name} is sent by {supported} only")
        which = request.WhichOneof("recipient")
        expected = "phone_number" if channel is Channel.SMS else "email"
        if which is not None and which != expected:
            raise InvalidArgument(f"recipient does not match channel {channel.name}")
        recipient = recipient_for(
            channel,
            request.phone_number if which == "phone_number" else None,
            request.email if which == "email" else None,
        )
        locale = normalise_locale(request.locale)
        variables = request.variables
        raw = RawVariables(
            first_name=variables.first_name,
            link=variables.link,
            date=variables.date.ToDatetime(tzinfo=UTC) if variables.HasField("date") else None,
            amount_cents=variables.amount_cents,
            currency=variables.currency,
            invoice_number=variables.invoice_number,
            one_time_code=variables.one_time_code,
        )
        context_values = template_context(
            spec,
            raw,
            locale,
            public_base_url=self._settings.public_base_url,
            time_zone=self._settings.display_time_zone,
        )
        rendered = self._renderer.render(template, locale, channel, context_values)
        new = NewNotification(
            caller=principal.subject,
            spec=spec,
            channel=channel,
            locale=locale,
            recipient=recipient,
            recipient_hash=self._hasher(recipient),
            rendered=rendered,
        )
        scoped = self._scoped(request, principal.subject)
        if self._sends is not None:
            queued = await self._sends.submit(scoped, new)
        else:
            async with self._gate:
                queued = await queue_once(self._sessions, scoped, new, self._rates, utcnow())
        if not queued.replayed:
            self._on_queued()
            log.info(
                "notification queued",
                extra={
                    "fields": {
                        "notification_id": queued.notification_id,
                        "template": template.value,
                        "channel": channel.value,
                        "recipient": recipient.masked,
                        "caller": principal.subject,
                    }
                },
            )
        return pb.SendNotificationResponse(
            notification_id=queued.notification_id, status=_status_pb(queued.status.value)
        )

    @staticmethod
    def _scoped(request: Any, caller: str) -> Any:
        """Idempotency keys are per calling service: two services cannot collide."""
        key: str = request.idempotency_key
        prefix = f"{caller}/"
        if not key or len(prefix) + len(key) > MAX_KEY_LENGTH or not key.isprintable():
            raise InvalidArgument(
                f"idempotency_key is required (1 to {MAX_KEY_LENGTH - len(prefix)} printable characters)"
            )
        scoped = type(request)()
        scoped.CopyFrom(request)
        scoped.idempotency_key = prefix + key
        return scoped

    async def GetNotificationStatus(
        self, request: pb.GetNotificationStatusRequest, context: Any
    ) -> pb.GetNotificationStatusResponse:
        principal = require_role(Role.SERVICE, services=SENDERS)
        if not request.notification_id:
            raise InvalidArgument("notification_id is required")
        async with self._sessions() as session:
            notification = await get_notification(session, request.notification_id, principal.subject)
        response = pb.GetNotificationStatusResponse(
            notification_id=notification.notification_id,
            status=_status_pb(notification.status),
            attempts=notification.attempts,
            updated_at=to_timestamp(notification.updated_at),
            template=to_pb_enum(pb.NotificationTemplate, Template(notification.template)),
            channel=to_pb_enum(pb.Channel, Channel(notification.channel)),
            masked_recipient=notification.masked_recipient,
        )
        if (
            notification.status == DeliveryStatus.QUEUED.value
            and notification.attempts > 0
            and notification.next_attempt_at is not None
        ):
            response.next_attempt_at.CopyFrom(to_timestamp(notification.next_attempt_at))
        return response

    async def ListOutbox(self, request: pb.ListOutboxRequest, context: Any) -> pb.ListOutboxResponse:
        require_role(Role.SERVICE, services=OUTBOX_READERS)
        if not self._settings.is_development:
            raise FailedPrecondition("the development outbox exists only in development and test")
        channel = from_pb_enum(pb.Channel, Channel, request.channel) if request.channel else None
        if request.channel and channel is None:
            raise InvalidArgument("channel is unknown")
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        async with self._sessions() as session:
            entries, next_token = await list_development_messages(
                session, channel, page_size, request.page_token
            )
        return pb.ListOutboxResponse(
            messages=[
                pb.OutboxMessage(
                    notification_id=entry.message.notification_id,
                    channel=to_pb_enum(pb.Channel, Channel(entry.message.channel)),
                    template=to_pb_enum(pb.NotificationTemplate, Template(entry.message.template)),
                    recipient=entry.message.recipient,
                    subject=entry.message.subject,
                    rendered_text=entry.message.text_body,
                    status=to_pb_enum(pb.DeliveryStatus, entry.status)
                    if entry.status
                    else pb.DELIVERY_STATUS_UNSPECIFIED,
                    created_at=to_timestamp(entry.message.created_at),
                )
                for entry in entries
            ],
            next_page_token=next_token,
        )

    async def PurgeRecipientData(
        self, request: pb.PurgeRecipientDataRequest, context: Any
    ) -> pb.PurgeRecipientDataResponse:
        principal = require_role(Role.SERVICE, services=PURGERS)
        which = request.WhichOneof("selector")
        if which is None:
            raise InvalidArgument("selector is required: phone_number, email or delivery_ended_before")
        now = utcnow()
        scoped = self._scoped(request, principal.subject)

        async def purge(session: AsyncSession) -> str:
            if which == "delivery_ended_before":
                cutoff = request.delivery_ended_before.ToDatetime(tzinfo=UTC)
                if cutoff > now:
                    raise InvalidArgument("delivery_ended_before must not be in the future")
                return str(await purge_ended_before(session, cutoff))
            else:
                recipient = (
                    phone_recipient(request.phone_number)
                    if which == "phone_number"
                    else email_recipient(request.email)
                )
            return str(await purge_recipient(session, self._hasher(recipient), now))

        async with self._gate:
            result, _ = await run_once(self._sessions, IdempotencyRecord, scoped, "PurgeRecipientData", purge)
        log.info("recipient data purged", extra={"fields": {"selector": which, "count": int(result)}})
        return pb.PurgeRecipientDataResponse(purged_count=int(result))
