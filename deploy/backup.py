"""Encrypted backups and verified restores of the platform's state (SEC-04).

A backup is a folder `backup-<UTC time>-<random>/` holding one encrypted file per
database (SQLite: an online snapshot through SQLite's backup API; PostgreSQL: `pg_dump
-Fc`) and per directory (object stores, keys: a tar stream), plus an encrypted manifest
with each part's SHA-256. Nothing in it is readable without the backup key, which lives
outside the state it protects (`BACKUP_KEY_FILE`, outside `var/`): a lost machine must
not take the key with it, and a stolen backup must not leak health data.

Encryption: AES-256-GCM over 1 MiB chunks, a random 8-byte nonce prefix per file plus a
chunk counter; the associated data binds the part's name, the chunk's index and whether
it is the last, so chunks cannot be reordered, swapped between parts or cut off.

A restore first decrypts and checks every part into a staging folder; only when all of
them verify does it replace anything. A tampered, truncated or foreign backup is refused
with the target left as it was. It refuses to run while the stack is serving.

    python -m deploy.backup create            # make backup
    python -m deploy.backup verify PATH
    python -m deploy.backup restore PATH      # make restore BACKUP=PATH (stack stopped)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from services.shared.settings import REPO_ROOT

MAGIC = b"SOBACKUP1"
CHUNK_BYTES = 1024 * 1024
MANIFEST = "manifest.enc"
FORMAT_VERSION = 1


class BackupError(Exception):
    """A backup cannot be made, read or restored; the message says why."""


class BackupSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BACKUP_", extra="ignore")

    # The key protecting every backup (32 random bytes, base64). Kept outside the state it
    # protects; created on the first backup (0600) and to be copied somewhere offline.
    key_file: Path = Path.home() / ".config" / "secondopinion" / "backup.key"
    # Where `make backup` writes and `make restore` reads by default.
    backup_dir: Path = REPO_ROOT / "backups"


@dataclass(frozen=True)
class BackupPlan:
    """What makes up the platform's state: databases by name (SQLAlchemy URLs) and
    directories by name. The same plan is used to take and to restore a backup."""

    databases: Mapping[str, str]
    directories: Mapping[str, Path]
    # host:port pairs that must be closed for a restore (the stack is stopped).
    service_addresses: tuple[tuple[str, int], ...] = field(default=())
    # Databases that may not exist yet (Temporal's before its first start): skipped when
    # absent from the machine at backup time or from the backup at restore time.
    optional: frozenset[str] = field(default=frozenset())


# --- keys ----------------------------------------------------------------------------------------


def load_key(path: Path, *, create: bool = False) -> bytes:
    if not path.exists():
        if not create:
            raise BackupError(f"backup key not found at {path}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(base64.b64encode(AESGCM.generate_key(bit_length=256)) + b"\n")
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except ValueError as exc:
        raise BackupError(f"the backup key at {path} is not base64") from exc
    if len(key) != 32:
        raise BackupError(f"the backup key at {path} must hold 32 bytes")
    return key


def key_id(key: bytes) -> str:
    """Names a key without revealing it, so a restore can say which key it needs."""
    return hashlib.sha256(b"secondopinion-backup-key-id" + key).hexdigest()[:16]


# --- encrypted part format -------------------------------------------------------------------------


def _aad(name: str, index: int, last: bool) -> bytes:
    return f"{name}|{index}|{int(last)}".encode()


class EncryptingWriter:
    """A write-only file object: plaintext in, sealed chunks out (and a SHA-256 of the
    plaintext, recorded in the manifest)."""

    def __init__(self, out: IO[bytes], key: bytes, name: str) -> None:
        self._out = out
        self._aead = AESGCM(key)
        self._name = name
        self._prefix = secrets.token_bytes(8)
        self._buffer = bytearray()
        self._index = 0
        self.sha256 = hashlib.sha256()
        self.size = 0
        out.write(MAGIC + self._prefix)

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.sha256.update(data)
        self.size += len(data)
        while len(self._buffer) > CHUNK_BYTES:
            self._seal(bytes(self._buffer[:CHUNK_BYTES]), last=False)
            del self._buffer[:CHUNK_BYTES]
        return len(data)

    def close(self) -> None:
        self._seal(bytes(self._buffer), last=True)
        self._buffer.clear()

    def _seal(self, plaintext: bytes, *, last: bool) -> None:
        nonce = self._prefix + self._index.to_bytes(4, "big")
        sealed = self._aead.encrypt(nonce, plaintext, _aad(self._name, self._index, last))
        self._out.write(len(sealed).to_bytes(4, "big") + bytes([int(last)]) + sealed)
        self._index += 1


def decrypt_chunks(source: IO[bytes], key: bytes, name: str) -> Iterator[bytes]:
    """The plaintext of one part, chunk by chunk; any alteration raises BackupError."""
    header = source.read(len(MAGIC) + 8)
    if header[: len(MAGIC)] != MAGIC:
        raise BackupError(f"{name}: not a backup part")
    prefix = header[len(MAGIC) :]
    aead = AESGCM(key)
    index = 0
    while True:
        head = source.read(5)
        if len(head) < 5:
            raise BackupError(f"{name}: truncated (no final chunk)")
        length, last = int.from_bytes(head[:4], "big"), bool(head[4])
        sealed = source.read(length)
        if len(sealed) != length:
            raise BackupError(f"{name}: truncated")
        try:
            yield aead.decrypt(prefix + index.to_bytes(4, "big"), sealed, _aad(name, index, last))
        except Exception as exc:  # InvalidTag: altered, reordered, or another key
            raise BackupError(f"{name}: chunk {index} fails authentication (altered or wrong key)") from exc
        index += 1
        if last:
            if source.read(1):
                raise BackupError(f"{name}: data after the final chunk")
            return


class _ChunkReader:
    """A read-only file object over decrypted chunks (for tarfile's stream mode)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = b""
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self.sha256.update(chunk)
            self._buffer += chunk
        if size < 0:
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out


# --- taking a backup --------------------------------------------------------------------------------


def _tool(name: str) -> str:
    """PostgreSQL's client programs (Debian: postgresql-client), by absolute path."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found: install the PostgreSQL client programs")
    return found


def _stderr(process: subprocess.CompletedProcess[bytes]) -> str:
    return process.stderr.decode(errors="replace").strip()


def _libpq_dsn(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def _backend(url: str) -> str:
    name = make_url(url).get_backend_name()
    if name not in ("sqlite", "postgresql"):
        raise BackupError(f"unsupported database backend {name!r}")
    return name


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise BackupError("an in-memory SQLite database cannot be backed up")
    return Path(database)


def _copy_into(source: IO[bytes], writer: EncryptingWriter) -> None:
    while chunk := source.read(CHUNK_BYTES):
        writer.write(chunk)


def _backup_database(name: str, url: str, key: bytes, folder: Path, scratch: Path) -> dict[str, Any]:
    backend = _backend(url)
    part = f"db-{name}.enc"
    with (folder / part).open("wb") as out:
        writer = EncryptingWriter(out, key, part)
        if backend == "sqlite":
            source = _sqlite_path(url)
            if not source.exists():
                raise BackupError(f"database {name}: {source} does not exist")
            snapshot = scratch / f"{name}.sqlite"
            # The backup API copies a consistent snapshot while services keep writing.
            with sqlite3.connect(source) as live, sqlite3.connect(snapshot) as copy:
                live.backup(copy)
            live.close()
            copy.close()
            with snapshot.open("rb") as plain:
                _copy_into(plain, writer)
            snapshot.unlink()
        else:
            command = [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges"]
            dump = subprocess.Popen(  # noqa: S603 - fixed arguments, no shell
                [*command, "--dbname", _libpq_dsn(url)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert dump.stdout is not None
            _copy_into(dump.stdout, writer)
            _, errors = dump.communicate()
            if dump.returncode != 0:
                raise BackupError(f"pg_dump of {name} failed: {errors.decode(errors='replace').strip()}")
        writer.close()
    return {"part": part, "kind": backend, "sha256": writer.sha256.hexdigest(), "bytes": writer.size}


def _backup_directory(name: str, path: Path, key: bytes, folder: Path) -> dict[str, Any]:
    part = f"dir-{name}.enc"
    with (folder / part).open("wb") as out:
        writer = EncryptingWriter(out, key, part)
        with tarfile.open(fileobj=writer, mode="w|") as archive:  # type: ignore[call-overload]
            if path.exists():
                archive.add(path, arcname=".")
        writer.close()
    return {"part": part, "kind": "directory", "sha256": writer.sha256.hexdigest(), "bytes": writer.size}


def create_backup(plan: BackupPlan, key: bytes, destination: Path, *, now: datetime | None = None) -> Path:
    """One complete backup under `destination`; a half-made one never looks complete."""
    taken_at = now or datetime.now(UTC)
    destination.mkdir(parents=True, exist_ok=True)
    name = f"backup-{taken_at:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    partial = destination / f"{name}.partial"
    partial.mkdir(mode=0o700)
    parts: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="so-backup-") as scratch:
            for db_name, url in plan.databases.items():
                if db_name in plan.optional and _backend(url) == "sqlite" and not _sqlite_path(url).exists():
                    continue
                parts[f"database:{db_name}"] = _backup_database(db_name, url, key, partial, Path(scratch))
        for dir_name, path in plan.directories.items():
            parts[f"directory:{dir_name}"] = _backup_directory(dir_name, path, key, partial)
        manifest = {
            "format": FORMAT_VERSION,
            "taken_at": taken_at.isoformat(),
            "key_id": key_id(key),
            "parts": parts,
        }
        with (partial / MANIFEST).open("wb") as out:
            writer = EncryptingWriter(out, key, MANIFEST)
            writer.write(json.dumps(manifest, sort_keys=True).encode())
            writer.close()
        # The key id in clear lets a restore name the key it needs before trying it.
        (partial / "key-id").write_text(key_id(key) + "\n")
        final = destination / name
        partial.rename(final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


# --- verifying and restoring -------------------------------------------------------------------------


def read_manifest(backup: Path, key: bytes) -> dict[str, Any]:
    if not (backup / MANIFEST).exists():
        raise BackupError(f"{backup} is not a complete backup (no manifest)")
    expected = (backup / "key-id").read_text().strip() if (backup / "key-id").exists() else ""
    if expected and expected != key_id(key):
        raise BackupError(f"this backup was made with key {expected}; the key given is {key_id(key)}")
    with (backup / MANIFEST).open("rb") as source:
        manifest: dict[str, Any] = json.loads(b"".join(decrypt_chunks(source, key, MANIFEST)))
    if manifest.get("format") != FORMAT_VERSION:
        raise BackupError(f"unknown backup format {manifest.get('format')!r}")
    return manifest


def _stage_part(backup: Path, key: bytes, entry: dict[str, Any], staging: Path) -> Path:
    """Decrypt one part into the staging folder and check its SHA-256."""
    part = str(entry["part"])
    with (backup / part).open("rb") as source:
        chunks = decrypt_chunks(source, key, part)
        if entry["kind"] == "directory":
            target = staging / part.removesuffix(".enc")
            target.mkdir()
            reader = _ChunkReader(chunks)
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                archive.extractall(target, filter="data")  # refuses absolute paths, links out, devices
            reader.read()  # drain: the digest covers the whole stream
            digest = reader.sha256.hexdigest()
        else:
            target = staging / part.removesuffix(".enc")
            digest_state = hashlib.sha256()
            with target.open("wb") as out:
                for chunk in chunks:
                    digest_state.update(chunk)
                    out.write(chunk)
            digest = digest_state.hexdigest()
    if digest != entry["sha256"]:
        raise BackupError(f"{part}: content does not match the manifest")
    return target


def verify_backup(backup: Path, key: bytes) -> dict[str, Any]:
    """Decrypts and checks every part (into a temporary folder, removed afterwards)."""
    manifest = read_manifest(backup, key)
    with tempfile.TemporaryDirectory(prefix="so-verify-") as staging:
        for entry in manifest["parts"].values():
            _stage_part(backup, key, entry, Path(staging))
    return manifest


def _refuse_if_serving(plan: BackupPlan) -> None:
    for host, port in plan.service_addresses:
        with socket.socket() as probe:
            probe.settimeout(0.5)
            if probe.connect_ex((host, port)) == 0:
                raise BackupError(
                    f"something is listening on {host}:{port}: stop the platform before a restore"
                )


def _restore_postgres(url: str, dump: Path) -> None:
    dsn = _libpq_dsn(url)
    # An empty schema first: the restored database is exactly the backup, nothing newer.
    reset = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [_tool("psql"), "--quiet", "--no-psqlrc", "--set", "ON_ERROR_STOP=1", "--dbname", dsn, "--command",
         "DROP SCHEMA IF EXISTS public CASCADE; CREATE SCHEMA public;"],
        capture_output=True,
    )  # fmt: skip
    if reset.returncode != 0:
        raise BackupError(
            f"cannot reset {make_url(url).database}: {reset.stderr.decode(errors='replace').strip()}"
        )
    loaded = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", dsn, str(dump)],
        capture_output=True,
    )
    if loaded.returncode != 0:
        raise BackupError(f"pg_restore into {make_url(url).database} failed: {_stderr(loaded)}")


def _restore_sqlite(url: str, snapshot: Path) -> None:
    target = _sqlite_path(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(snapshot, f"{target}.restoring")
    os.replace(f"{target}.restoring", target)


def _restore_directory(path: Path, staged: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    incoming = path.with_name(path.name + ".restoring")
    shutil.rmtree(incoming, ignore_errors=True)
    shutil.copytree(staged, incoming, symlinks=False)
    if path.exists():
        shutil.rmtree(path)
    os.replace(incoming, path)


def restore_backup(backup: Path, key: bytes, plan: BackupPlan) -> dict[str, Any]:
    """Everything verified first; then every database and directory of the plan replaced.
    Parts the plan does not name are refused: a restore never guesses where data goes."""
    _refuse_if_serving(plan)
    manifest = read_manifest(backup, key)
    databases = {
        n: url
        for n, url in plan.databases.items()
        if n not in plan.optional or f"database:{n}" in manifest["parts"]
    }
    wanted = {f"database:{n}" for n in databases} | {f"directory:{n}" for n in plan.directories}
    missing = sorted(wanted - set(manifest["parts"]))
    if missing:
        raise BackupError(f"the backup lacks {', '.join(missing)}")
    # Staged next to the state (same filesystem, so the final moves are cheap).
    anchor = next(iter(plan.directories.values()), Path(tempfile.gettempdir())).parent
    anchor.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".so-restore-", dir=anchor) as staging_name:
        staging = Path(staging_name)
        os.chmod(staging, 0o700)
        staged = {
            label: _stage_part(backup, key, manifest["parts"][label], staging) for label in sorted(wanted)
        }
        for db_name, url in databases.items():
            if manifest["parts"][f"database:{db_name}"]["kind"] != _backend(url):
                raise BackupError(f"database {db_name}: the backup holds another backend than the target")
        for db_name, url in databases.items():
            snapshot = staged[f"database:{db_name}"]
            if _backend(url) == "sqlite":
                _restore_sqlite(url, snapshot)
            else:
                _restore_postgres(url, snapshot)
        for dir_name, path in plan.directories.items():
            _restore_directory(path, staged[f"directory:{dir_name}"])
    return manifest


# --- the dev stack's plan and the command line ------------------------------------------------------


def devstack_plan() -> BackupPlan:
    """The state `make run` keeps: each service's database, Temporal's, the object stores
    and the keys (mail caught, logs, exports in progress and scratch files are not state)."""
    from deploy.devstack import Devstack, DevstackSettings

    settings = DevstackSettings()
    stack = Devstack(settings)
    databases = {service: stack.database_url(service) for service in stack.service_ports()}
    databases["temporal"] = f"sqlite:///{settings.var_dir / 'temporal.db'}"
    var = settings.var_dir
    directories = {
        "keys": var / "keys",
        "dossier-objects": Path(os.environ.get("DOSSIER_OBJECTS_DIR", var / "dossier-objects")),
        "billing-archive": var / "billing-archive",
    }
    ports = [*stack.service_ports().values(), settings.temporal_port, settings.gateway_port]
    return BackupPlan(
        databases, directories, tuple(("127.0.0.1", port) for port in ports), optional=frozenset({"temporal"})
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.backup", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("create", help="take an encrypted backup of the dev stack's state")
    for name in ("verify", "restore"):
        sub = commands.add_parser(name, help=f"{name} a backup folder")
        sub.add_argument("backup", type=Path)
    args = parser.parse_args(argv)
    settings = BackupSettings()
    try:
        if args.command == "create":
            key = load_key(settings.key_file, create=True)
            made = create_backup(devstack_plan(), key, settings.backup_dir)
            print(f"backup written to {made} (key {key_id(key)} at {settings.key_file}: keep a copy offline)")
        elif args.command == "verify":
            manifest = verify_backup(args.backup, load_key(settings.key_file))
            print(f"{args.backup}: {len(manifest['parts'])} parts verified, taken {manifest['taken_at']}")
        else:
            manifest = restore_backup(args.backup, load_key(settings.key_file), devstack_plan())
            print(f"restored {len(manifest['parts'])} parts taken {manifest['taken_at']}")
    except BackupError as error:
        print(f"backup: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
