"""The object-store path on both implementations: a local folder and a real S3-protocol
server (moto's standalone server, started here on a free port) through the minio SDK."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from moto.server import ThreadedMotoServer

from services.shared.objectstore import (
    LocalDirectoryStore,
    ObjectLockedError,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
    S3Store,
)

CHUNK = 1024 * 1024


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalDirectoryStore(tmp_path / "objects")
    endpoint = request.getfixturevalue("s3_endpoint")
    s3 = S3Store(
        endpoint, "testing", "testing", f"bucket-{os.urandom(4).hex()}", secure=False, region="eu-west-3",
        object_lock=True,
    )  # fmt: skip
    await s3.ensure_bucket()
    return s3


async def chunks(data: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join([chunk async for chunk in store.get(key)])


async def test_streams_a_multipart_object_round_trip(store: ObjectStore) -> None:
    data = os.urandom(19 * CHUNK + 123)  # several S3 parts of 8 MiB
    stored = await store.put("cases/abc/doc-1", chunks(data))
    assert stored.size == len(data)
    assert await store.exists("cases/abc/doc-1")
    assert hashlib.sha256(await read_all(store, "cases/abc/doc-1")).digest() == hashlib.sha256(data).digest()
    await store.delete("cases/abc/doc-1")
    assert not await store.exists("cases/abc/doc-1")


async def test_missing_object_is_a_clear_error(store: ObjectStore) -> None:
    with pytest.raises(ObjectNotFoundError):
        await read_all(store, "nothing/here")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/absolute", "a//b", "", "a/./b", "x" * 600, "é"])
async def test_path_tricks_in_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(ObjectStoreError):
        await store.put(key, chunks(b"data"))


async def test_a_stream_cut_half_way_leaves_no_object(store: ObjectStore) -> None:
    async def cut() -> AsyncIterator[bytes]:
        yield os.urandom(CHUNK)
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await store.put("cases/abc/cut", cut())
    assert not await store.exists("cases/abc/cut")


async def test_retention_makes_an_object_write_once(store: ObjectStore) -> None:
    until = datetime.now(UTC) + timedelta(days=1)
    await store.put("invoices/2026/F-0001", chunks(b"%PDF-invoice"), retain_until=until)
    with pytest.raises(ObjectLockedError):
        await store.delete("invoices/2026/F-0001")
    if isinstance(store, LocalDirectoryStore):
        with pytest.raises(ObjectLockedError):
            await store.put("invoices/2026/F-0001", chunks(b"forged"))
    assert await read_all(store, "invoices/2026/F-0001") == b"%PDF-invoice"
