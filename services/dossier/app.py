"""Resources of the dossier service, opened and closed together: database, object store,
master keys, malware scanner, the gRPC server and the quarantine re-scan task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain.access import AccessPolicy
from services.dossier.domain.crypto import Keyring
from services.dossier.domain.documents import DocumentVault
from services.dossier.domain.gate import Gate
from services.dossier.domain.scan import ClamdScanner, MalwareScanner
from services.dossier.domain.subjectkeys import SubjectKeys
from services.dossier.servicer import DossierServicer
from services.dossier.settings import DossierSettings
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.objectstore import LocalDirectoryStore, ObjectStore, S3Store
from services.shared.service import serving
from services.shared.settings import Environment, InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DossierService"].full_name
log = logging.getLogger(__name__)


async def open_store(settings: DossierSettings) -> ObjectStore:
    if settings.s3_endpoint:
        store = S3Store(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
        await store.ensure_bucket()
        return store
    return LocalDirectoryStore(settings.objects_dir)


def load_keyring(settings: DossierSettings) -> Keyring:
    return Keyring.load(
        settings.master_keys_dir,
        settings.active_master_key_id,
        create_if_missing=settings.environment is not Environment.PRODUCTION,
    )


def access_policy(settings: DossierSettings) -> AccessPolicy:
    return AccessPolicy(platform_services=frozenset(settings.platform_services))


async def _rescan_forever(vault: DocumentVault, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await vault.rescan_quarantined()
        except Exception:
            log.exception("quarantine re-scan failed")


@asynccontextmanager
async def running(
    settings: DossierSettings,
    auth: InternalAuthSettings | None = None,
    *,
    scanner: MalwareScanner | None = None,
    store: ObjectStore | None = None,
) -> AsyncIterator[GrpcServer]:
    keyring = load_keyring(settings)
    object_store = store or await open_store(settings)
    malware_scanner = scanner or ClamdScanner(settings.clamd_address, settings.clamd_timeout_seconds)
    vaults: list[DocumentVault] = []

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        gate = Gate(sessions, access_policy(settings), SubjectKeys(sessions, keyring))
        vault = DocumentVault(
            gate,
            object_store,
            keyring,
            malware_scanner,
            max_bytes=settings.max_document_bytes,
            max_answer_bytes=settings.max_rights_answer_bytes,
            scratch_dir=settings.scratch_dir,
            chunk_bytes=settings.encryption_chunk_bytes,
        )
        vaults.append(vault)
        servicer = DossierServicer(gate, vault, keyring, settings)
        return [ServiceRegistration(SERVICE_NAME, pb_grpc.add_DossierServiceServicer_to_server, servicer)]

    async with serving("dossier", settings, auth or InternalAuthSettings(), registrations) as server:
        server.vault = vaults[0]  # type: ignore[attr-defined]
        task = (
            asyncio.create_task(_rescan_forever(vaults[0], settings.rescan_interval_seconds))
            if settings.rescan_interval_seconds > 0
            else None
        )
        try:
            yield server
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
