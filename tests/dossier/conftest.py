"""The dossier service on port 0 with its real resources: a fresh database (SQLite or
PostgreSQL), an object store (local folder or an S3 server, moto's, through minio), master
keys in a temp folder, and a real clamd loaded with a tiny EICAR signature database."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from moto.server import ThreadedMotoServer
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.dossier.app import running
from services.dossier.domain.documents import DocumentVault
from services.dossier.settings import DossierSettings
from services.shared.auth import Habilitation, Role, ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine
from services.shared.grpc_client import open_channel
from services.shared.objectstore import LocalDirectoryStore, ObjectStore, S3Store
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database
from tests.support.stack import make_keys

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
COORDINATOR = "coord-habilitated"
ASSISTANT = "assistant-pa"
ARCHIVIST = "coord-archives"
# What identity would put in these accounts' tokens after GrantHabilitation (SEC-05,
# CASE-14); tests/identity/test_habilitations.py drives the real grant end to end.
HABILITATIONS: dict[str, frozenset[Habilitation]] = {
    COORDINATOR: frozenset({Habilitation.HEALTH_DATA}),
    ASSISTANT: frozenset({Habilitation.PERSONAL_ASSISTANT}),
    ARCHIVIST: frozenset({Habilitation.ARCHIVE_ACCESS}),
}
MAX_BYTES = 3 * 1024 * 1024


@pytest.fixture(scope="session")
def clamd_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real clamd (Debian clamav-daemon) with a signature database written here: the
    EICAR test file by hash (.hdb) and by body (.ndb), since downloads are impossible."""
    clamd = shutil.which("clamd") or "/usr/sbin/clamd"
    if not Path(clamd).exists():
        pytest.fail("clamd is missing: apt-get install -y clamav-daemon")
    folder = tmp_path_factory.mktemp("clamd")
    (folder / "db").mkdir()
    (folder / "db" / "eicar.hdb").write_text(f"{hashlib.md5(EICAR).hexdigest()}:{len(EICAR)}:Test.EICAR\n")
    (folder / "db" / "eicar.ndb").write_text(
        "Test.EICAR-Body:0:*:" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE".hex() + "\n"
    )
    socket = folder / "clamd.sock"
    config = folder / "clamd.conf"
    config.write_text(
        f"LocalSocket {socket}\nDatabaseDirectory {folder / 'db'}\nForeground yes\n"
        f"LogFile {folder / 'clamd.log'}\nStreamMaxLength 64M\nMaxScanSize 64M\nMaxFileSize 64M\n"
        + ("User root\n" if os.geteuid() == 0 else "")
    )
    process = subprocess.Popen(
        [clamd, f"--config-file={config}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(300):
            if socket.exists():
                break
            if process.poll() is not None:
                pytest.fail("clamd did not start: " + (folder / "clamd.log").read_text()[-500:])
            import time

            time.sleep(0.05)
        else:
            pytest.fail("clamd did not open its socket")
        yield str(socket)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@dataclass
class Dossier:
    """The running service and ways to call it as anyone."""

    target: str
    auth: InternalAuthSettings
    database_url: str
    store: ObjectStore
    store_kind: str
    vault: DocumentVault
    settings: DossierSettings
    engine: AsyncEngine
    _exit: AsyncExitStack
    _stubs: dict[tuple[str, Role], pb_grpc.DossierServiceAsyncStub] = field(default_factory=dict)

    def token(self, subject: str, role: Role) -> str:
        signer = TokenSigner.from_keys_dir(self.auth.keys_dir, "identity")
        return signer.mint(subject, role, "s", HABILITATIONS.get(subject, ()))[0]

    async def as_(self, subject: str, role: Role) -> pb_grpc.DossierServiceAsyncStub:
        key = (subject, role)
        if key not in self._stubs:
            if role is Role.SERVICE:
                provider: Any = ServiceTokenProvider(TokenSigner.from_keys_dir(self.auth.keys_dir, subject))
            else:
                token = self.token(subject, role)
                provider = lambda: token  # noqa: E731
            channel = open_channel(self.target, provider, default_timeout=30)
            await self._exit.enter_async_context(channel)
            self._stubs[key] = pb_grpc.DossierServiceStub(channel)
        return self._stubs[key]

    async def patient(self, subject: str = "alice") -> pb_grpc.DossierServiceAsyncStub:
        return await self.as_(subject, Role.PATIENT)

    async def doctor(self, subject: str = "doctor-account-1") -> pb_grpc.DossierServiceAsyncStub:
        return await self.as_(subject, Role.REFERENT_DOCTOR)

    async def worker(self) -> pb_grpc.DossierServiceAsyncStub:
        return await self.as_("worker", Role.SERVICE)

    async def sql(self, statement: str, **params: Any) -> list[Any]:
        async with self.engine.begin() as connection:
            result = await connection.execute(text(statement), params)
            return list(result.all()) if result.returns_rows else []

    async def object_keys(self) -> list[str]:
        if isinstance(self.store, LocalDirectoryStore):
            root = self.settings.objects_dir
            return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        assert isinstance(self.store, S3Store)
        client = self.store._client
        bucket = self.store._bucket
        return sorted(
            o.object_name
            for o in await asyncio.to_thread(lambda: list(client.list_objects(bucket, recursive=True)))
        )


async def start_dossier(
    tmp_path: Path,
    backend: str,
    store_kind: str,
    clamd: str,
    request: pytest.FixtureRequest,
    **overrides: Any,
) -> AsyncIterator[Dossier]:
    """The service as configured for tests; `overrides` change settings (limits...)."""
    auth = make_keys(tmp_path / "keys")
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(service_database("dossier", backend, tmp_path / "db"))
        settings = DossierSettings(
            database_url=url,
            environment=Environment.TEST,
            port=0,
            max_document_bytes=MAX_BYTES,
            objects_dir=tmp_path / "objects",
            scratch_dir=tmp_path / "scratch",
            master_keys_dir=tmp_path / "master-keys",
            encryption_chunk_bytes=64 * 1024,
            clamd_address=clamd,
            rescan_interval_seconds=0,
            **overrides,
        )
        if store_kind == "s3":
            settings.s3_endpoint = request.getfixturevalue("s3_endpoint")
            settings.s3_access_key = settings.s3_secret_key = "testing"
            settings.s3_bucket = f"dossier-{os.urandom(4).hex()}"
            settings.s3_secure = False
            settings.s3_region = "eu-west-3"
        server = await stack.enter_async_context(running(settings, auth))
        engine = create_engine(url)
        stack.push_async_callback(engine.dispose)
        vault: DocumentVault = server.vault  # type: ignore[attr-defined]
        yield Dossier(server.target, auth, url, vault.store, store_kind, vault, settings, engine, stack)


@pytest.fixture
async def dossier(
    tmp_path: Path, backend: str, clamd_socket: str, request: pytest.FixtureRequest
) -> AsyncIterator[Dossier]:
    """Local object store; SQLite and PostgreSQL."""
    async for running_dossier in start_dossier(tmp_path, backend, "local", clamd_socket, request):
        yield running_dossier


@pytest.fixture(params=["local", "s3"])
async def dossier_stores(
    tmp_path: Path, backend: str, clamd_socket: str, request: pytest.FixtureRequest
) -> AsyncIterator[Dossier]:
    """Both object stores x SQLite and PostgreSQL (documents)."""
    async for running_dossier in start_dossier(tmp_path, backend, request.param, clamd_socket, request):
        yield running_dossier


# --- helpers shared by the tests ---------------------------------------------------------------


async def expect_status(call: Any, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, (error.value.code(), error.value.details())
    return str(error.value.details())


async def create_case(
    stub: pb_grpc.DossierServiceAsyncStub, key: str = "case-1", area: str = "oncology", **fields: Any
) -> pb.Case:
    values: dict[str, Any] = {
        "idempotency_key": key,
        "filing_capacity": pb.FILING_CAPACITY_SELF,
        "therapeutic_area": area,
        "purpose": pb.CASE_PURPOSE_SECOND_OPINION,
        "doctor_choice_mode": pb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
    }
    request = pb.CreateCaseRequest(**{**values, **fields})
    return (await stub.CreateCase(request)).case


async def assign(
    dossier: Dossier,
    case_id: str,
    doctor_account: str = "doctor-account-1",
    doctor_id: str = "doc-1",
    assignment_id: str = "asg-1",
) -> pb.Assignment:
    worker = await dossier.worker()
    response = await worker.RecordAssignment(
        pb.RecordAssignmentRequest(
            idempotency_key=f"assign-{assignment_id}",
            case_id=case_id,
            assignment_id=assignment_id,
            doctor_id=doctor_id,
            doctor_account_id=doctor_account,
        )
    )
    return response.assignment
