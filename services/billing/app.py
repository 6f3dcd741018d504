"""Resources of the billing service, opened and closed together: the BillingService
server (`running`) and the partner API on its own port (`running_partner_api`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.documents import Party
from services.billing.domain.invoices import Archive
from services.billing.emails import EmailDispatcher
from services.billing.partner_api import PartnerApiServer
from services.billing.psp.keys import load_public_key, secret_from
from services.billing.psp.paybox import PayboxSystem
from services.billing.servicer import BillingContext, BillingServicer
from services.billing.settings import BillingSettings
from services.shared.db import create_engine, session_factory
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.objectstore import LocalDirectoryStore, ObjectStore, S3Store
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["BillingService"].full_name


class _CachedPublicKey:
    """The PSP's public key, re-read when its file changes (the sandbox writes it at start)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mtime = -1.0
        self._key: RSAPublicKey | None = None

    def __call__(self) -> RSAPublicKey:
        mtime = self._path.stat().st_mtime
        if self._key is None or mtime != self._mtime:
            self._key, self._mtime = load_public_key(self._path), mtime
        return self._key


def _lazy_secret(hex_value: str, path: Path) -> Callable[[], bytes]:
    cache: list[bytes] = []

    def get() -> bytes:
        if not cache:
            cache.append(secret_from(hex_value, path))
        return cache[0]

    return get


def object_store(settings: BillingSettings) -> tuple[ObjectStore, bool]:
    """(store, whether it enforces write-once retention)."""
    if settings.s3_endpoint:
        store = S3Store(
            settings.s3_endpoint,
            settings.s3_access_key.get_secret_value(),
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
            object_lock=settings.s3_object_lock,
        )
        return store, settings.s3_object_lock
    return LocalDirectoryStore(settings.archive_dir), True


async def build_context(settings: BillingSettings, wake: Callable[[], None]) -> BillingContext:
    store, locks = object_store(settings)
    if isinstance(store, S3Store):
        await store.ensure_bucket()
    psp = PayboxSystem(
        payment_url=settings.psp_payment_url,
        site=settings.psp_site,
        rang=settings.psp_rang,
        identifiant=settings.psp_identifiant,
        hmac_key=_lazy_secret(settings.psp_hmac_key_hex.get_secret_value(), settings.psp_hmac_key_path),
        public_key=_CachedPublicKey(settings.psp_public_key_path),
        return_base_url=settings.psp_return_base_url,
        signature_digest=settings.psp_signature_digest,
        direct_url=settings.psp_direct_url,
    )
    platform = Party(
        settings.platform_legal_name,
        [
            f"SIREN {settings.platform_siren}",
            f"TVA {settings.platform_vat_number}",
            settings.platform_address,
        ],
        settings.platform_vat_number,
        settings.platform_siren,
    )
    return BillingContext(
        psp=psp,
        archive=Archive(store, timedelta(days=settings.invoice_retention_days), locks, platform),
        code_secret=_lazy_secret(
            settings.coverage_code_secret_hex.get_secret_value(), settings.coverage_code_secret_path
        ),
        payment_attempt_ttl_seconds=settings.payment_attempt_ttl_seconds,
        satisfaction_minimum_answers=settings.satisfaction_minimum_answers,
        wake_outbox=wake,
    )


@asynccontextmanager
async def running(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    auth = auth or InternalAuthSettings()
    holder: dict[str, EmailDispatcher] = {}
    context = await build_context(settings, lambda: holder["dispatcher"].wake())

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        holder["dispatcher"] = EmailDispatcher(sessions, settings, auth)
        servicer = BillingServicer(sessions, context)  # type: ignore[abstract]
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_BillingServiceServicer_to_server, servicer)]

    async with serving("billing", settings, auth, registrations) as server:
        dispatcher = holder["dispatcher"]
        task = asyncio.create_task(dispatcher.run(), name="billing-email-outbox")
        dispatcher.wake()
        try:
            yield server
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await dispatcher.close()


@asynccontextmanager
async def running_partner_api(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[PartnerApiServer]:
    """The partner API on `settings.partner_api_port`; `auth` is unused (API keys only)."""
    engine = create_engine(settings.effective_database_url("billing"))
    try:
        context = await build_context(settings, lambda: None)
        server = PartnerApiServer(
            session_factory(engine),
            context,
            settings.host,
            settings.partner_api_port,
            settings.shutdown_grace_seconds,
        )
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    finally:
        await engine.dispose()


@asynccontextmanager
async def running_all(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[tuple[GrpcServer, PartnerApiServer]]:
    async with running(settings, auth) as server, running_partner_api(settings, auth) as partner_server:
        yield server, partner_server
