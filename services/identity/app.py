"""Resources of the identity service, opened and closed together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity.domain.accounts import AccountRegistry
from services.identity.domain.context import Deps, Policy
from services.identity.domain.notifier import Courier, Notifier
from services.identity.domain.passwords import PasswordHashing
from services.identity.domain.secrets import CodeKeys
from services.identity.servicer import IdentityServicer, session_policy
from services.identity.settings import IdentitySettings
from services.shared.auth import IDENTITY_ISSUER, ServiceTokenProvider, TokenSigner, trusted_public_keys
from services.shared.grpc_client import open_channel
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["IdentityService"].full_name


def token_keys(keys_dir: Path) -> tuple[tuple[str, bytes], ...]:
    """Every trusted issuer's raw public key, identity's first (ListTokenSigningKeys)."""
    keys = trusted_public_keys(keys_dir)
    order = sorted(keys, key=lambda issuer: (issuer != IDENTITY_ISSUER, issuer))
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return tuple((issuer, keys[issuer].public_bytes(*raw)) for issuer in order)


def password_hashing(settings: IdentitySettings) -> PasswordHashing:
    return PasswordHashing(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism)


@asynccontextmanager
async def running(
    settings: IdentitySettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    auth = auth or InternalAuthSettings()
    signer = TokenSigner.from_keys_dir(auth.keys_dir, IDENTITY_ISSUER, auth.token_ttl_seconds)
    keys = CodeKeys.from_setting_or_signing_key(
        settings.code_secret.get_secret_value(), (auth.keys_dir / f"{IDENTITY_ISSUER}.key.pem").read_bytes()
    )
    # Identity calls the notifications service as itself (a service token it mints).
    channel = open_channel(
        settings.notifications_target, ServiceTokenProvider(signer), settings.outgoing_call_timeout_seconds
    )
    hashing = password_hashing(settings)
    notifier = Notifier(channel)
    courier = Courier(notifier)
    deps = Deps(
        policy=Policy.from_settings(settings), hashing=hashing, keys=keys, notifier=notifier, courier=courier
    )

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        # An RPC not implemented here answers UNIMPLEMENTED through the generated base class.
        servicer = IdentityServicer(
            sessions,
            AccountRegistry(hashing),
            signer,
            session_policy(settings.session_idle_timeout_seconds, settings.session_absolute_timeout_seconds),
            deps,
            token_keys(auth.keys_dir),
        )
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_IdentityServiceServicer_to_server, servicer)]

    try:
        async with serving("identity", settings, auth, registrations) as server:
            yield server
    finally:
        await courier.drain()
        await channel.close()
