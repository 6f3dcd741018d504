"""Resources of the matching service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime

from secondopinion.matching.v1 import matching_pb2 as pb
from secondopinion.matching.v1 import matching_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.matching.servicer import MatchingServicer
from services.matching.settings import MatchingSettings
from services.shared.db import utcnow
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MatchingService"].full_name


@asynccontextmanager
async def running(
    settings: MatchingSettings,
    auth: InternalAuthSettings | None = None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> AsyncIterator[GrpcServer]:
    """The matching server; `clock` is injectable so tests of delays and timeouts never sleep."""

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        servicer = MatchingServicer(sessions, clock)
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_MatchingServiceServicer_to_server, servicer)]

    async with serving("matching", settings, auth or InternalAuthSettings(), registrations) as server:
        yield server
