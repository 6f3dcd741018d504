"""The lifespan every database-backed gRPC service shares: engine, server, clean stop."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.shared.auth import TokenVerifier
from services.shared.db import create_engine, session_factory
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.settings import InternalAuthSettings, ServiceSettings

RegistrationFactory = Callable[[async_sessionmaker[AsyncSession]], Sequence[ServiceRegistration]]


@asynccontextmanager
async def serving(
    name: str,
    settings: ServiceSettings,
    auth: InternalAuthSettings,
    registrations: RegistrationFactory,
) -> AsyncIterator[GrpcServer]:
    engine = create_engine(settings.effective_database_url(name))
    try:
        server = GrpcServer(
            name,
            registrations(session_factory(engine)),
            TokenVerifier.from_keys_dir(auth.keys_dir),
            settings.host,
            settings.port,
            settings.shutdown_grace_seconds,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    finally:
        await engine.dispose()
