"""Resources of the billing service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.servicer import BillingServicer
from services.billing.settings import BillingSettings
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BillingService"].full_name


@asynccontextmanager
async def running(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        # RPCs of later issues answer UNIMPLEMENTED through the generated base class.
        servicer = BillingServicer(sessions)  # type: ignore[abstract]
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_BillingServiceServicer_to_server, servicer)]

    async with serving("billing", settings, auth or InternalAuthSettings(), registrations) as server:
        yield server
