"""Uploads streamed through the gateway: the body's size is checked against the limit
while it streams in (the announced Content-Length first, then every chunk), before any
multipart parsing; the file then streams on to the dossier in chunks of at most 1 MiB."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, Any

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

CHUNK = 256 * 1024
# Room for the multipart boundaries and the few small fields sent with the file.
MULTIPART_OVERHEAD = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024


class TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is over the {limit}-byte limit")
        self.limit = limit


class BadUpload(Exception):
    """The body is not a multipart form with one non-empty file."""


@dataclass
class ReceivedUpload:
    fields: dict[str, str]
    file_name: str
    size: int
    file: IO[bytes]

    def close(self) -> None:
        self.file.close()


async def receive_upload(request: Request, max_file_bytes: int) -> ReceivedUpload:
    """Spool the raw body under the limit, then parse it. Raises TooLarge as soon as the
    announced or received size is over the limit (nothing parsed, nothing forwarded)."""
    limit = max_file_bytes + MULTIPART_OVERHEAD
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise TooLarge(max_file_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BadUpload("send the file as multipart/form-data")
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed below
    try:
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise TooLarge(max_file_bytes)
            spool.write(chunk)
        spool.seek(0)

        async def body() -> AsyncGenerator[bytes, None]:
            while chunk := spool.read(CHUNK):
                yield chunk

        try:
            form: FormData = await MultiPartParser(
                request.headers, body(), max_files=1, max_fields=20
            ).parse()
        except MultiPartException as exc:
            raise BadUpload(str(exc.message)) from exc
    finally:
        spool.close()
    upload = next((v for v in form.values() if isinstance(v, UploadFile)), None)
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    if upload is None or not upload.size:
        if upload is not None:
            await upload.close()
        raise BadUpload("choose a non-empty file")
    if upload.size > max_file_bytes:
        await upload.close()
        raise TooLarge(max_file_bytes)
    upload.file.seek(0)
    return ReceivedUpload(fields, upload.filename or "document", upload.size, upload.file)


async def request_stream(
    first: Any, received: ReceivedUpload, chunk_message: Callable[[bytes], Any]
) -> AsyncIterator[Any]:
    """The gRPC client stream: the metadata message, then the bytes."""
    yield first
    while chunk := received.file.read(CHUNK):
        yield chunk_message(chunk)
