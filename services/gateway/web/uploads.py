"""Uploads streamed through the gateway: the body's size is checked against the limit
while it streams in (the announced Content-Length first, then every chunk), before any
multipart parsing; the file then streams on to the dossier in chunks of at most 1 MiB.
A form may carry named optional files besides the main one (the minor's own consent with
the parent's proof, ACC-13): each is held to the same per-file limit, and the body's
limit grows by one file's worth for each."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
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
class ReceivedFile:
    file_name: str
    size: int
    file: IO[bytes]

    def close(self) -> None:
        self.file.close()


@dataclass
class ReceivedUpload(ReceivedFile):
    fields: dict[str, str] = field(default_factory=dict)
    # The optional files that were sent (non-empty), by form field name.
    extra: dict[str, ReceivedFile] = field(default_factory=dict)

    def close(self) -> None:
        super().close()
        for extra in self.extra.values():
            extra.close()


async def receive_upload(
    request: Request, max_file_bytes: int, optional_files: Sequence[str] = ()
) -> ReceivedUpload:
    """Spool the raw body under the limit, then parse it. Raises TooLarge as soon as the
    announced or received size is over the limit (nothing parsed, nothing forwarded).
    The main file is the part named `file`; `optional_files` names the other file parts
    accepted, each empty or under `max_file_bytes`."""
    limit = max_file_bytes * (1 + len(optional_files)) + MULTIPART_OVERHEAD
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
                request.headers, body(), max_files=1 + len(optional_files), max_fields=20
            ).parse()
        except MultiPartException as exc:
            raise BadUpload(str(exc.message)) from exc
    finally:
        spool.close()
    files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
    fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
    kept: list[UploadFile] = []
    try:
        upload = next((v for k, v in files if k == "file"), None) or next(
            (v for k, v in files if k not in optional_files), None
        )
        if upload is None or not upload.size:
            raise BadUpload("choose a non-empty file")
        kept.append(upload)
        extra: dict[str, ReceivedFile] = {}
        for name, part in files:
            # An input left empty still sends an empty part: it is no file.
            if part is upload or name not in optional_files or not part.size or name in extra:
                continue
            kept.append(part)
            extra[name] = _received(part)
        if any((part.size or 0) > max_file_bytes for part in kept):
            raise TooLarge(max_file_bytes)
    except Exception:
        for _, part in files:
            await part.close()
        raise
    for _, part in files:  # the parts not kept (empty inputs, duplicates) are released now
        if not any(part is k for k in kept):
            await part.close()
    main = _received(upload)
    return ReceivedUpload(main.file_name, main.size, main.file, fields, extra)


def _received(upload: UploadFile) -> ReceivedFile:
    upload.file.seek(0)
    return ReceivedFile(upload.filename or "document", upload.size or 0, upload.file)


async def request_stream(
    first: Any, received: ReceivedFile, chunk_message: Callable[[bytes], Any]
) -> AsyncIterator[Any]:
    """The gRPC client stream: the metadata message, then the bytes."""
    yield first
    while chunk := received.file.read(CHUNK):
        yield chunk_message(chunk)
