"""Resources of the notifications service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.servicer import NotificationsServicer
from services.notifications.settings import NotificationsSettings
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotificationsService"].full_name


@asynccontextmanager
async def running(
    settings: NotificationsSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        # RPCs of later issues answer UNIMPLEMENTED through the generated base class.
        servicer = NotificationsServicer(sessions)  # type: ignore[abstract]
        return [
            ServiceRegistration(SERVICE_NAME, pb_grpc.add_NotificationsServiceServicer_to_server, servicer)
        ]

    async with serving("notifications", settings, auth or InternalAuthSettings(), registrations) as server:
        yield server
