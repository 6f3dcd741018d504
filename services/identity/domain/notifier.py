"""Codes and emails go out through the notifications service (its contract only).

Identity calls with a service token it mints for itself, and an idempotency key derived
from the business id (the login attempt and the code's ordinal, the link id...), so a
retried command never sends twice. Nothing here logs a recipient or a code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.notifications.v1 import notifications_pb2_grpc as npb_grpc

from services.shared.errors import ResourceExhausted, ServiceError
from services.shared.protoconv import to_timestamp


class Unavailable(ServiceError):
    status = grpc.StatusCode.UNAVAILABLE


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


LOGIN_CODE = npb.NOTIFICATION_TEMPLATE_LOGIN_CODE
VERIFICATION_CODE = npb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
PASSWORD_RESET = npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET
ACCOUNT_LOCKED = npb.NOTIFICATION_TEMPLATE_ACCOUNT_LOCKED
BREACH_NOTICE = npb.NOTIFICATION_TEMPLATE_BREACH_NOTICE
REFERRAL_INVITATION = npb.NOTIFICATION_TEMPLATE_REFERRAL_INVITATION
PROVISIONAL_CREDENTIALS = npb.NOTIFICATION_TEMPLATE_PROVISIONAL_CREDENTIALS
ACCOUNT_DETAILS_CHANGED = npb.NOTIFICATION_TEMPLATE_ACCOUNT_DETAILS_CHANGED
