"""Object storage behind one interface: a local directory (embedded default) or any
S3-compatible store through the `minio` SDK. Objects are streamed, never held whole.

Callers encrypt before storing (see the dossier service); this layer only moves bytes,
refuses path tricks in keys and honours write-once retention (S3 Object Lock in
compliance mode where the store has it, a retention record in the local store).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, cast

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")
S3_PART_SIZE = 8 * 1024 * 1024
READ_CHUNK = 256 * 1024


class ObjectStoreError(Exception):
    pass


class ObjectNotFoundError(ObjectStoreError):
    pass


class ObjectLockedError(ObjectStoreError):
    """The object is under retention: it cannot be overwritten or deleted yet."""


def check_key(key: str) -> str:
    if len(key) > 512 or not KEY_PATTERN.match(key) or any(part in {".", ".."} for part in key.split("/")):
        raise ObjectStoreError("invalid object key")
    return key


@dataclass(frozen=True, slots=True)
class StoredObject:
    key: str
    size: int


class ObjectStore(Protocol):
    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, retain_until: datetime | None = None
    ) -> StoredObject: ...

    def get(self, key: str) -> AsyncIterator[bytes]: ...

    async def delete(self, key: str) -> None: ...

    async def exists(self, key: str) -> bool: ...


class LocalDirectoryStore:
    """Embedded default: one file per object under a root folder, written atomically."""

    def __init__(self, root: Path) -> None:
        self._root = root.resolve()
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self._root / check_key(key)).resolve()
        if self._root not in path.parents:
            raise ObjectStoreError("invalid object key")
        return path

    def _retention_path(self, path: Path) -> Path:
        return path.with_name(path.name + ".retention.json")

    def _locked_until(self, path: Path) -> datetime | None:
        retention = self._retention_path(path)
        if not retention.exists():
            return None
        until = datetime.fromisoformat(json.loads(retention.read_text())["retain_until"])
        return until if until > datetime.now(UTC) else None

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, retain_until: datetime | None = None
    ) -> StoredObject:
        path = self._path(key)
        if path.exists() and self._locked_until(path):
            raise ObjectLockedError("object is under retention")
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
        size = 0
        try:
            with temp.open("wb") as handle:
                async for chunk in chunks:
                    await asyncio.to_thread(handle.write, chunk)
                    size += len(chunk)
            os.replace(temp, path)
        finally:
            # A stream cut half-way leaves nothing behind.
            temp.unlink(missing_ok=True)
        if retain_until is not None:
            self._retention_path(path).write_text(json.dumps({"retain_until": retain_until.isoformat()}))
        return StoredObject(key=key, size=size)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        path = self._path(key)
        if not path.exists():
            raise ObjectNotFoundError(key)
        with path.open("rb") as handle:
            while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        path = self._path(key)
        if self._locked_until(path):
            raise ObjectLockedError("object is under retention")
        path.unlink(missing_ok=True)
        self._retention_path(path).unlink(missing_ok=True)

    async def exists(self, key: str) -> bool:
        return self._path(key).exists()


class _QueueReader:
    """A blocking file-like object fed by an async producer, for minio's put_object."""

    def __init__(self) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._buffer = b""
        self._done = False

    def feed(self, chunk: bytes | None) -> None:
        self._queue.put(chunk)

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._buffer) < size):
            chunk = self._queue.get()
            if chunk is None:
                self._done = True
            else:
                self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data


class S3Store:
    """Any S3-compatible store through the minio SDK (MinIO, Scaleway, OVH, AWS...)."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        *,
        secure: bool = True,
        region: str | None = None,
        object_lock: bool = False,
    ) -> None:
        from minio import Minio

        self._client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )
        self._bucket = bucket
        self._object_lock = object_lock

    async def ensure_bucket(self) -> None:
        def create() -> None:
            if not self._client.bucket_exists(self._bucket):
                self._client.make_bucket(self._bucket, object_lock=self._object_lock)

        await asyncio.to_thread(create)

    async def put(
        self, key: str, chunks: AsyncIterator[bytes], *, retain_until: datetime | None = None
    ) -> StoredObject:
        from minio.commonconfig import COMPLIANCE
        from minio.retention import Retention

        check_key(key)
        reader = _QueueReader()
        upload = asyncio.create_task(
            asyncio.to_thread(
                self._client.put_object,
                self._bucket,
                key,
                cast("BinaryIO", reader),
                length=-1,
                part_size=S3_PART_SIZE,
            )
        )
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(reader.feed, chunk)
                if upload.done():
                    break
        except BaseException:
            # Cut stream: end the upload with what it has, then remove the object so no
            # half-written file stays behind. Multipart parts are aborted by minio on error.
            await asyncio.to_thread(reader.feed, None)
            await asyncio.gather(upload, return_exceptions=True)
            await asyncio.to_thread(self._remove_quietly, key)
            raise
        await asyncio.to_thread(reader.feed, None)
        result = await upload
        if retain_until is not None and self._object_lock:
            # Retention is set on the stored version right after the upload: the SDK sends
            # no Content-MD5 on streamed parts over plain HTTP, which Object Lock PUTs need.
            await asyncio.to_thread(
                self._client.set_object_retention,
                self._bucket,
                key,
                Retention(COMPLIANCE, retain_until),
                result.version_id,
            )
        return StoredObject(key=key, size=size)

    def _remove_current_version(self, key: str) -> None:
        """Remove the stored version itself: in a versioned (locked) bucket a plain delete
        would only add a delete marker and leave the bytes behind."""
        from minio.error import S3Error

        try:
            version_id = self._client.stat_object(self._bucket, key).version_id
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                return
            raise
        self._client.remove_object(self._bucket, key, version_id)

    def _remove_quietly(self, key: str) -> None:
        # Best effort: the upload already failed, the caller gets that error.
        with contextlib.suppress(Exception):
            self._remove_current_version(key)

    async def get(self, key: str) -> AsyncIterator[bytes]:
        from minio.error import S3Error

        check_key(key)
        try:
            response = await asyncio.to_thread(self._client.get_object, self._bucket, key)
        except S3Error as exc:
            if exc.code == "NoSuchKey":
                raise ObjectNotFoundError(key) from exc
            raise
        try:
            iterator = response.stream(READ_CHUNK)
            while chunk := await asyncio.to_thread(next, iterator, b""):
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def delete(self, key: str) -> None:
        from minio.error import S3Error

        check_key(key)
        try:
            await asyncio.to_thread(self._remove_current_version, key)
        except S3Error as exc:
            if exc.code in {"AccessDenied", "InvalidRequest"}:
                raise ObjectLockedError("object is under retention") from exc
            raise

    async def exists(self, key: str) -> bool:
        from minio.error import S3Error

        check_key(key)
        try:
            await asyncio.to_thread(self._client.stat_object, self._bucket, key)
        except S3Error as exc:
            if exc.code in {"NoSuchKey", "NoSuchObject"}:
                return False
            raise
        return True
