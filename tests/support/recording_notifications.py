"""A real gRPC NotificationsService on port 0 that records what it is asked to send.

For tests of services that send SMS or email (identity codes, billing summaries) without
depending on the delivery machinery; the notifications service has its own tests.
Idempotent by key like the real one: a retried request records nothing new.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc

from services.shared.auth import Role, TokenVerifier
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.principals import require_role
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotificationsService"].full_name


class RecordingNotifications(pb_grpc.NotificationsServiceServicer):
    def __init__(self) -> None:
        self.sent: list[pb.SendNotificationRequest] = []
        self.callers: list[str] = []
        self._ids: dict[str, str] = {}

    async def SendNotification(
        self, request: pb.SendNotificationRequest, context: Any
    ) -> pb.SendNotificationResponse:
        principal = require_role(Role.SERVICE)
        if request.idempotency_key not in self._ids:
            self._ids[request.idempotency_key] = str(uuid.uuid4())
            self.sent.append(request)
            self.callers.append(principal.subject)
        return pb.SendNotificationResponse(
            notification_id=self._ids[request.idempotency_key], status=pb.DELIVERY_STATUS_QUEUED
        )

    def last(self, template: int) -> pb.SendNotificationRequest:
        return next(message for message in reversed(self.sent) if message.template == template)


@asynccontextmanager
async def recording_notifications(
    auth: InternalAuthSettings, recorder: RecordingNotifications | None = None
) -> AsyncIterator[tuple[GrpcServer, RecordingNotifications]]:
    """A notifications service on port 0 that records what it is asked (or `recorder`,
    a subclass that behaves otherwise)."""
    recorder = recorder or RecordingNotifications()  # type: ignore[abstract]
    server = GrpcServer(
        "notifications-recorder",
        [ServiceRegistration(SERVICE_NAME, pb_grpc.add_NotificationsServiceServicer_to_server, recorder)],
        TokenVerifier.from_keys_dir(auth.keys_dir),
    )
    await server.start()
    try:
        yield server, recorder
    finally:
        await server.stop()
