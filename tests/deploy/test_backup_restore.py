"""SEC-04: the platform's state can be restored after an incident. A backup taken while
the dossier serves is encrypted, verified before anything is replaced, and brings back
the medical file: the case, the document (still decryptable: the keys come back too) and
an intact access log. A tampered, truncated or foreign backup is refused untouched."""

from __future__ import annotations

import shutil
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc

from deploy import backup
from deploy.backup import BackupError, BackupPlan
from services.dossier.app import running
from services.dossier.settings import DossierSettings
from services.shared.auth import Role, TokenSigner
from services.shared.db import upgrade_to_head
from services.shared.grpc_client import open_channel
from services.shared.migrate import SERVICES_WITH_DATABASES, migrations_dir
from services.shared.settings import Environment, InternalAuthSettings
from tests.dossier.conftest import clamd_socket  # noqa: F401 - the fixture, reused
from tests.dossier.samples import pdf
from tests.support.databases import service_database
from tests.support.stack import make_keys

pytestmark = pytest.mark.req("SEC-04")

DOCUMENT = pdf(b"restored after the incident")


def dossier_settings(workdir: Path, url: str, clamd: str) -> DossierSettings:
    return DossierSettings(
        database_url=url,
        environment=Environment.TEST,
        port=0,
        objects_dir=workdir / "objects",
        scratch_dir=workdir / "scratch",
        master_keys_dir=workdir / "keys" / "dossier-master",
        clamd_address=clamd,
        rescan_interval_seconds=0,
    )


@asynccontextmanager
async def as_patient(settings: DossierSettings, auth: InternalAuthSettings) -> AsyncIterator[
    tuple[pb_grpc.DossierServiceAsyncStub, pb_grpc.DossierServiceAsyncStub]
]:  # fmt: skip
    """The dossier on port 0; stubs for the patient alice and a DPO."""
    async with running(settings, auth) as server:
        signer = TokenSigner.from_keys_dir(auth.keys_dir, "identity")
        alice_token = signer.mint("alice", Role.PATIENT, "s")[0]
        dpo_token = signer.mint("dpo-1", Role.DPO, "s")[0]
        async with (
            open_channel(server.target, lambda: alice_token, default_timeout=30) as alice_channel,
            open_channel(server.target, lambda: dpo_token, default_timeout=30) as dpo_channel,
        ):
            yield pb_grpc.DossierServiceStub(alice_channel), pb_grpc.DossierServiceStub(dpo_channel)


async def download(stub: pb_grpc.DossierServiceAsyncStub, document_id: str) -> bytes:
    parts = [
        message.chunk
        async for message in stub.DownloadDocument(pb.DownloadDocumentRequest(document_id=document_id))
        if message.WhichOneof("part") == "chunk"
    ]
    return b"".join(parts)


async def test_a_backup_taken_while_serving_restores_the_medical_file(
    tmp_path: Path,
    backend: str,
    clamd_socket: str,  # noqa: F811
) -> None:
    workdir = tmp_path / "state"
    auth = make_keys(workdir / "keys" / "internal")
    key = backup.load_key(tmp_path / "offline" / "backup.key", create=True)
    async with service_database("dossier", backend, workdir / "db") as url:
        settings = dossier_settings(workdir, url, clamd_socket)
        plan = BackupPlan(
            databases={"dossier": url},
            directories={"keys": workdir / "keys", "dossier-objects": workdir / "objects"},
        )
        async with as_patient(settings, auth) as (alice, _dpo):
            case = (
                await alice.CreateCase(
                    pb.CreateCaseRequest(
                        idempotency_key="case-1",
                        filing_capacity=pb.FILING_CAPACITY_SELF,
                        therapeutic_area="oncology",
                        purpose=pb.CASE_PURPOSE_SECOND_OPINION,
                        doctor_choice_mode=pb.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
                    )
                )
            ).case
            uploaded = await alice.UploadDocument(
                iter(
                    [
                        pb.UploadDocumentRequest(
                            idempotency_key="doc-1",
                            metadata=pb.UploadDocumentMetadata(
                                case_id=case.case_id,
                                purpose=pb.DOCUMENT_PURPOSE_MEDICAL_RECORD,
                                file_name="scan.pdf",
                                declared_size_bytes=len(DOCUMENT),
                            ),
                        ),
                        pb.UploadDocumentRequest(chunk=DOCUMENT),
                    ]
                )
            )
            document_id = uploaded.document.document_id
            assert await download(alice, document_id) == DOCUMENT
            # Online: the service keeps serving while the snapshot is taken.
            made = backup.create_backup(plan, key, tmp_path / "backups")
            await alice.GetCase(pb.GetCaseRequest(case_id=case.case_id))

        # Nothing readable in the backup: no plaintext PDF, no SQLite or dump header.
        for part in made.iterdir():
            content = part.read_bytes()
            assert b"restored after the incident" not in content and b"SQLite format" not in content
            assert b"PGDMP" not in content

        # The incident: the database is lost, and so are the objects and every key.
        if backend == "sqlite":
            Path(url.split("///", 1)[1]).unlink()
        else:
            await _empty_postgres(url)
        shutil.rmtree(workdir / "objects")
        shutil.rmtree(workdir / "keys")

        backup.restore_backup(made, key, plan)
        async with as_patient(settings, auth) as (alice, dpo):
            restored = (await alice.GetCase(pb.GetCaseRequest(case_id=case.case_id))).case
            assert restored.case_id == case.case_id and restored.therapeutic_area == "oncology"
            assert await download(alice, document_id) == DOCUMENT
            chain = await dpo.VerifyAccessLogChain(pb.VerifyAccessLogChainRequest())
            assert chain.intact and chain.checked_count >= 3


async def _empty_postgres(url: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await connection.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    finally:
        await connection.close()


def small_state(root: Path) -> BackupPlan:
    (root / "objects" / "ab").mkdir(parents=True)
    (root / "objects" / "ab" / "object-1").write_bytes(b"sealed object")
    url = f"sqlite:///{root / 'identity.db'}"
    upgrade_to_head(f"sqlite+aiosqlite:///{root / 'identity.db'}", migrations_dir("identity"))
    return BackupPlan(databases={"identity": url}, directories={"objects": root / "objects"})


def test_a_tampered_truncated_or_foreign_backup_is_refused_and_nothing_is_replaced(tmp_path: Path) -> None:
    plan = small_state(tmp_path / "state")
    key = backup.load_key(tmp_path / "backup.key", create=True)
    made = backup.create_backup(plan, key, tmp_path / "backups")
    assert backup.verify_backup(made, key)["parts"].keys() == {"database:identity", "directory:objects"}
    (tmp_path / "state" / "objects" / "ab" / "object-1").write_bytes(b"newer object")
    before = (tmp_path / "state" / "identity.db").read_bytes()

    other_key = backup.load_key(tmp_path / "other.key", create=True)
    with pytest.raises(BackupError, match="made with key"):
        backup.restore_backup(made, other_key, plan)

    part = made / "dir-objects.enc"
    original = part.read_bytes()
    part.write_bytes(original[:-40] + bytes(b ^ 1 for b in original[-40:]))
    with pytest.raises(BackupError, match="fails authentication"):
        backup.restore_backup(made, key, plan)
    part.write_bytes(original[: len(original) // 2])
    with pytest.raises(BackupError, match="truncated"):
        backup.restore_backup(made, key, plan)
    # Refused before anything was touched.
    assert (tmp_path / "state" / "objects" / "ab" / "object-1").read_bytes() == b"newer object"
    assert (tmp_path / "state" / "identity.db").read_bytes() == before

    part.write_bytes(original)
    backup.restore_backup(made, key, plan)
    assert (tmp_path / "state" / "objects" / "ab" / "object-1").read_bytes() == b"sealed object"

    # A half-written backup never looks complete, and a part swapped for another is refused.
    assert not list((tmp_path / "backups").glob("*.partial"))
    shutil.copy(made / "db-identity.enc", made / "dir-objects.enc")
    with pytest.raises(BackupError, match="fails authentication"):
        backup.verify_backup(made, key)


def test_make_backup_covers_the_dev_stack_and_restore_refuses_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    var = tmp_path / "var"
    var.mkdir()
    for service in SERVICES_WITH_DATABASES:
        upgrade_to_head(f"sqlite+aiosqlite:///{var / (service + '.db')}", migrations_dir(service))
        monkeypatch.delenv(f"{service.upper()}_DATABASE_URL", raising=False)
    (var / "keys").mkdir()
    (var / "keys" / "identity.key.pem").write_text("key material")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    monkeypatch.setenv("DEVSTACK_VAR_DIR", str(var))
    monkeypatch.setenv("DEVSTACK_IDENTITY_PORT", str(listener.getsockname()[1]))
    monkeypatch.setenv("BACKUP_KEY_FILE", str(tmp_path / "offline" / "backup.key"))
    monkeypatch.setenv("BACKUP_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("DOSSIER_OBJECTS_DIR", raising=False)

    assert backup.main(["create"]) == 0
    (made,) = (tmp_path / "backups").iterdir()
    manifest = backup.verify_backup(made, backup.load_key(tmp_path / "offline" / "backup.key"))
    # Temporal has not run here: its database is optional; every service's is there.
    assert set(manifest["parts"]) == {
        *(f"database:{s}" for s in SERVICES_WITH_DATABASES),
        "directory:keys",
        "directory:dossier-objects",
        "directory:billing-archive",
    }
    assert (tmp_path / "offline" / "backup.key").stat().st_mode & 0o077 == 0
    assert backup.main(["verify", str(made)]) == 0

    with listener:
        assert backup.main(["restore", str(made)]) == 2
        assert "stop the platform" in capsys.readouterr().err
    (var / "keys" / "identity.key.pem").unlink()
    assert backup.main(["restore", str(made)]) == 0
    assert (var / "keys" / "identity.key.pem").read_text() == "key material"
    assert backup.main(["restore", str(tmp_path)]) == 2  # not a backup: a clear message, no traceback
