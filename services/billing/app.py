"""Resources of the billing service, opened and closed together: the BillingService
server (`running`) and the partner API on its own port (`running_partner_api`), over
mutual TLS when its certificate settings are given (refused in production without)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import cast

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.background import InvoiceRenderer, PaymentSweeper
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

log = logging.getLogger(__name__)
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
        partner_client_ca_path=settings.partner_tls_client_ca_path,
    )


@asynccontextmanager
async def running(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    auth = auth or InternalAuthSettings()
    dispatchers: list[EmailDispatcher] = []
    renderers: list[InvoiceRenderer] = []
    sweepers: list[PaymentSweeper] = []

    def wake() -> None:
        # After an issue, a capture or a refund: emails to send, documents to render.
        for dispatcher in dispatchers:
            dispatcher.wake()
        for renderer in renderers:
            renderer.wake()

    context = await build_context(settings, wake)

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        dispatcher = EmailDispatcher(sessions, settings, auth)
        dispatchers.append(dispatcher)
        if settings.invoice_render_interval_seconds > 0:
            renderers.append(
                InvoiceRenderer(sessions, context.archive, settings.invoice_render_interval_seconds)
            )
        if settings.payment_sweep_interval_seconds > 0:
            sweepers.append(
                PaymentSweeper(
                    sessions,
                    context.psp,
                    context.archive,
                    settings.payment_sweep_interval_seconds,
                    dispatcher.wake,
                )
            )
        servicer = BillingServicer(sessions, context)
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_BillingServiceServicer_to_server, servicer)]

    async with serving("billing", settings, auth, registrations) as server:
        tasks = [
            *(asyncio.create_task(d.run(), name="billing-email-outbox") for d in dispatchers),
            *(asyncio.create_task(r.run(), name="billing-invoice-renderer") for r in renderers),
            *(asyncio.create_task(s.run(), name="billing-payment-sweep") for s in sweepers),
        ]
        wake()
        try:
            yield server
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for dispatcher in dispatchers:
                await dispatcher.close()


def _read_pem(path: Path | None, setting: str, kind: str) -> bytes:
    """The PEM file a setting names, checked to hold what it should (clear error if not)."""
    assert path is not None
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{setting}: cannot read {path} ({exc.strerror})") from exc
    try:
        if kind == "key":
            load_pem_private_key(content, password=None)
        else:
            x509.load_pem_x509_certificates(content)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{setting}: {path} is not a PEM {kind} (unencrypted)") from exc
    return content


def partner_server_credentials(settings: BillingSettings) -> grpc.ServerCredentials | None:
    """Mutual TLS for the partner API from the settings (None: plaintext, not production).

    Every client must present a certificate signed by the partners' CA bundle; the guard
    then binds it to the API key's partner."""
    settings.check_partner_api_transport()
    if not settings.partner_mtls:
        try:
            loopback = ipaddress.ip_address(settings.host).is_loopback
        except ValueError:
            loopback = settings.host == "localhost"
        if not loopback:
            log.warning(
                "partner api served in plaintext off loopback; set the BILLING_PARTNER_TLS_* settings",
                extra={"fields": {"host": settings.host}},
            )
        return None
    files = PartnerTlsFiles(settings)
    # gRPC takes None from the fetcher as "unchanged"; its type stubs do not say so.
    fetch = cast("Callable[[], grpc.ServerCertificateConfiguration]", files.fetch)
    return grpc.dynamic_ssl_server_credentials(files.load(), fetch, require_client_authentication=True)


class PartnerTlsFiles:
    """The partner API's server certificate, key and partners' CA bundle, re-read when one
    of the files changes: gRPC asks `fetch` at every new connection, so a renewed server
    certificate or a new partner CA applies without a restart. A change that leaves the
    files unusable (half-written, a key that does not match) keeps the previous ones."""

    def __init__(self, settings: BillingSettings) -> None:
        self._settings = settings
        self._stamp = self._stamps()

    def _paths(self) -> list[Path]:
        s = self._settings
        assert s.partner_tls_cert_path is not None
        assert s.partner_tls_key_path is not None
        assert s.partner_tls_client_ca_path is not None
        return [s.partner_tls_cert_path, s.partner_tls_key_path, s.partner_tls_client_ca_path]

    def _stamps(self) -> str:
        """A digest of the three files' contents (small; partners connect rarely, and a
        modification time can stay the same on a coarse file system)."""
        digest = hashlib.sha256()
        try:
            for path in self._paths():
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            return ""
        return digest.hexdigest()

    def load(self) -> grpc.ServerCertificateConfiguration:
        s = self._settings
        chain = _read_pem(s.partner_tls_cert_path, "BILLING_PARTNER_TLS_CERT_PATH", "certificate")
        key = _read_pem(s.partner_tls_key_path, "BILLING_PARTNER_TLS_KEY_PATH", "key")
        ca = _read_pem(s.partner_tls_client_ca_path, "BILLING_PARTNER_TLS_CLIENT_CA_PATH", "certificate")
        leaf = x509.load_pem_x509_certificates(chain)[0].public_key()
        if load_pem_private_key(key, password=None).public_key() != leaf:
            raise ValueError("BILLING_PARTNER_TLS_KEY_PATH: the key is not the server certificate's")
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=ca)

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """None: keep what is in use (nothing changed, or the change is unusable)."""
        try:
            stamp = self._stamps()
            if stamp == self._stamp:
                return None
            self._stamp = stamp
            config = self.load()
        except Exception as exc:  # a handshake must never fail on our reload
            # The setting's name only: never a path's content.
            setting = str(exc).split(":")[0]
            log.error(
                "partner api tls files changed but are unusable; keeping the previous ones",
                extra={"fields": {"setting": setting}},
            )
            return None
        log.info("partner api tls files reloaded")
        return config


@asynccontextmanager
async def running_partner_api(
    settings: BillingSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[PartnerApiServer]:
    """The partner API on `settings.partner_api_port`; `auth` is unused (API keys, and
    client certificates over mutual TLS)."""
    credentials = partner_server_credentials(settings)
    engine = create_engine(settings.effective_database_url("billing"))
    try:
        context = await build_context(settings, lambda: None)
        server = PartnerApiServer(
            session_factory(engine),
            context,
            settings.host,
            settings.partner_api_port,
            settings.shutdown_grace_seconds,
            credentials,
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
) -> AsyncIterator[tuple[GrpcServer, PartnerApiServer | None]]:
    """Both servers (the partner API unless `partner_api_enabled` is off)."""
    settings.check_partner_api_transport()
    async with running(settings, auth) as server:
        if not settings.partner_api_enabled:
            yield server, None
            return
        async with running_partner_api(settings, auth) as partner_server:
            yield server, partner_server
