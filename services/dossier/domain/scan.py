"""Malware scanning behind one interface (SEC-07), with a ClamAV (clamd) implementation
speaking the INSTREAM protocol over a unix socket or TCP. A scanner that cannot be
reached gives no verdict: the document stays quarantined and is scanned again later."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

SCAN_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class ScanVerdict:
    clean: bool
    signature: str = ""


class ScannerUnavailable(Exception):
    """No verdict (scanner down, timeout, protocol error)."""


class MalwareScanner(Protocol):
    async def scan(self, chunks: AsyncIterator[bytes]) -> ScanVerdict: ...


class ClamdScanner:
    """clamd's INSTREAM: `zINSTREAM\\0`, then <u32 length><bytes> chunks, then a zero length."""

    def __init__(self, address: str, timeout: float = 60.0) -> None:
        self._address = address
        self._timeout = timeout

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._address.startswith("/"):
            return await asyncio.open_unix_connection(self._address)
        host, _, port = self._address.rpartition(":")
        return await asyncio.open_connection(host, int(port))

    async def scan(self, chunks: AsyncIterator[bytes]) -> ScanVerdict:
        try:
            return await asyncio.wait_for(self._scan(chunks), self._timeout)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ScannerUnavailable(type(exc).__name__) from exc

    async def _scan(self, chunks: AsyncIterator[bytes]) -> ScanVerdict:
        reader, writer = await self._connect()
        try:
            writer.write(b"zINSTREAM\0")
            async for chunk in chunks:
                for start in range(0, len(chunk), SCAN_CHUNK):
                    part = chunk[start : start + SCAN_CHUNK]
                    writer.write(struct.pack(">I", len(part)) + part)
                    await writer.drain()
            writer.write(struct.pack(">I", 0))
            await writer.drain()
            reply = (await reader.readuntil(b"\0")).rstrip(b"\0").decode("utf-8", "replace")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        # "stream: OK" | "stream: <signature> FOUND" | "INSTREAM size limit exceeded. ERROR"
        if reply.endswith(" FOUND"):
            signature = reply.removeprefix("stream:").removesuffix(" FOUND").strip()
            return ScanVerdict(clean=False, signature=signature[:200])
        if reply.endswith(": OK") or reply == "stream: OK":
            return ScanVerdict(clean=True)
        raise ScannerUnavailable("clamd gave no verdict")

    async def ping(self) -> bool:
        try:
            reader, writer = await asyncio.wait_for(self._connect(), 2)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(b"zPING\0")
            await writer.drain()
            return (await asyncio.wait_for(reader.readuntil(b"\0"), 2)) == b"PONG\0"
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()
