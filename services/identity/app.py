"""Resources of the identity service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from argon2 import PasswordHasher, Type
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity.domain.accounts import AccountRegistry
from services.identity.servicer import IdentityServicer, session_policy
from services.identity.settings import IdentitySettings
from services.shared.auth import IDENTITY_ISSUER, TokenSigner
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


def password_hasher(settings: IdentitySettings) -> PasswordHasher:
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )


@asynccontextmanager
async def running(
    settings: IdentitySettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    auth = auth or InternalAuthSettings()
    signer = TokenSigner.from_keys_dir(auth.keys_dir, IDENTITY_ISSUER, auth.token_ttl_seconds)

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        # RPCs of later issues answer UNIMPLEMENTED through the generated base class.
        servicer = IdentityServicer(  # type: ignore[abstract]
            sessions,
            AccountRegistry(password_hasher(settings)),
            signer,
            session_policy(settings.session_idle_timeout_seconds, settings.session_absolute_timeout_seconds),
        )
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_IdentityServiceServicer_to_server, servicer)]

    async with serving("identity", settings, auth, registrations) as server:
        yield server
