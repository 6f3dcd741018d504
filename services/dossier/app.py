"""Resources of the dossier service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.servicer import DossierServicer
from services.dossier.settings import DossierSettings
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DossierService"].full_name


@asynccontextmanager
async def running(
    settings: DossierSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        # RPCs of later issues answer UNIMPLEMENTED through the generated base class.
        servicer = DossierServicer(sessions)  # type: ignore[abstract]
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_DossierServiceServicer_to_server, servicer)]

    async with serving("dossier", settings, auth or InternalAuthSettings(), registrations) as server:
        yield server
