"""Envelope encryption of documents and sealed text (SEC-02, SEC-03).

Each document object gets its own random 256-bit data key. The bytes are encrypted with
AES-256-GCM in chunks (a "STREAM"-like construction): every chunk has its own random
96-bit nonce and is authenticated with the object id, its index and a final-chunk flag as
associated data, so chunks cannot be reordered, moved to another object, or dropped from
the end. The data key is wrapped by a master key; the master key's id and version sit in
the object header (and beside the wrapped key in the database, which is what a master-key
rotation rewrites: rotation re-wraps data keys, it never re-encrypts objects).

Short clinical text kept in the database (form answers, notes, messages, report bodies)
was first sealed directly under the master key with its table and row id as associated
data (format 1).

Per-subject keys (crypto-shredding, RET-02, GDPR-03): every subject (the account that
files) has its own random key, wrapped by the master key (`subject_keys` table). New
document data keys are wrapped by the subject's key instead of the master key, and new
text is sealed under its own random key wrapped by the subject's key (format 2). Purging
the subject deletes its key: whatever copy of that data survives anywhere (a backup, a
forgotten object) can no longer be decrypted. The unwrapped subject keys a request needs
live only in that request's context (`use_subject_key`), never in a process-wide cache.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from collections.abc import AsyncIterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"SODOC\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_FILE = re.compile(r"^(?P<id>[A-Za-z0-9_-]{1,48})\.v(?P<version>\d{1,6})\.key$")
TEXT_FORMAT = 1
SUBJECT_TEXT_FORMAT = 2
WRAPPED_KEY_BYTES = NONCE_BYTES + 32 + TAG_BYTES

# Subject keys unwrapped for the current request (a task's context, gone with it).
_SUBJECT_KEYS: ContextVar[dict[str, bytes] | None] = ContextVar("dossier_subject_keys", default=None)


def use_subject_key(subject_id: str, key: bytes) -> None:
    """Make a subject's key available to the rest of the current request."""
    current = _SUBJECT_KEYS.get() or {}
    _SUBJECT_KEYS.set({**current, subject_id: key})


def forget_subject_key(subject_id: str) -> None:
    current = dict(_SUBJECT_KEYS.get() or {})
    current.pop(subject_id, None)
    _SUBJECT_KEYS.set(current)


def subject_key(subject_id: str) -> bytes:
    key = (_SUBJECT_KEYS.get() or {}).get(subject_id)
    if key is None:
        raise CryptoError("the subject's data key is not available (never loaded, or destroyed)")
    return key


def wrap_for_subject(data_key: bytes, object_id: str, subject_id: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(subject_key(subject_id)).encrypt(
        nonce, data_key, _subject_aad(object_id, subject_id)
    )


def unwrap_for_subject(wrapped: bytes, object_id: str, subject_id: str) -> bytes:
    try:
        return AESGCM(subject_key(subject_id)).decrypt(
            wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _subject_aad(object_id, subject_id)
        )
    except InvalidTag:
        raise CryptoError("the data key does not unwrap with the subject's key") from None


def _subject_aad(object_id: str, subject_id: str) -> bytes:
    return f"sdek|{object_id}|{subject_id}".encode()


class CryptoError(Exception):
    """Ciphertext that does not authenticate, an unknown master key, a malformed header."""


@dataclass(frozen=True, slots=True)
class MasterKeyRef:
    key_id: str
    version: int


class Keyring:
    """Master keys by (id, version); the active one wraps new data keys."""

    def __init__(self, keys: dict[MasterKeyRef, bytes], active: MasterKeyRef) -> None:
        if active not in keys:
            raise CryptoError("the active master key is not in the keyring")
        for key in keys.values():
            if len(key) != 32:
                raise CryptoError("master keys are 256-bit")
        self._keys = dict(keys)
        self.active = active

    @classmethod
    def load(cls, folder: Path, active_id: str, create_if_missing: bool) -> Keyring:
        keys: dict[MasterKeyRef, bytes] = {}
        if folder.exists():
            for path in sorted(folder.iterdir()):
                match = KEY_FILE.match(path.name)
                if match:
                    ref = MasterKeyRef(match["id"], int(match["version"]))
                    keys[ref] = base64.b64decode(path.read_text().strip(), validate=True)
        versions = [ref for ref in keys if ref.key_id == active_id]
        if not versions:
            if not create_if_missing:
                raise CryptoError(f"no master key {active_id!r} in the master keys folder")
            ref = create_master_key(folder, active_id)
            keys[ref] = base64.b64decode((folder / f"{ref.key_id}.v{ref.version}.key").read_text())
            versions = [ref]
        return cls(keys, max(versions, key=lambda ref: ref.version))

    def key(self, ref: MasterKeyRef) -> bytes:
        try:
            return self._keys[ref]
        except KeyError:
            raise CryptoError(f"master key {ref.key_id} v{ref.version} is not available") from None

    def wrap(self, data_key: bytes, object_id: str) -> tuple[MasterKeyRef, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self.key(self.active)).encrypt(nonce, data_key, _wrap_aad(object_id, self.active))
        return self.active, nonce + sealed

    def unwrap(self, wrapped: bytes, object_id: str, ref: MasterKeyRef) -> bytes:
        try:
            return AESGCM(self.key(ref)).decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _wrap_aad(object_id, ref)
            )
        except InvalidTag:
            raise CryptoError("the data key does not unwrap") from None

    def rewrap(self, wrapped: bytes, object_id: str, ref: MasterKeyRef) -> tuple[MasterKeyRef, bytes]:
        return self.wrap(self.unwrap(wrapped, object_id, ref), object_id)

    # --- sealed text -------------------------------------------------------------
    def seal_text(self, text: str, context: str, subject: str = "") -> bytes:
        """Seal under the subject's key (format 2) when a subject is named, else under
        the master key (format 1: data that belongs to no subject)."""
        if subject:
            return _seal_for_subject(text, context, subject)
        ref = self.active
        nonce = os.urandom(NONCE_BYTES)
        head = (
            struct.pack(">BB", TEXT_FORMAT, len(ref.key_id))
            + ref.key_id.encode()
            + struct.pack(">I", ref.version)
        )
        sealed = AESGCM(self.key(ref)).encrypt(nonce, text.encode("utf-8"), head + context.encode())
        return head + nonce + sealed

    def open_text(self, blob: bytes, context: str) -> str:
        try:
            fmt, id_length = struct.unpack(">BB", blob[:2])
            if fmt == SUBJECT_TEXT_FORMAT:
                return _open_for_subject(blob, context)
            key_id = blob[2 : 2 + id_length].decode()
            (version,) = struct.unpack(">I", blob[2 + id_length : 6 + id_length])
        except (struct.error, UnicodeDecodeError):
            raise CryptoError("malformed sealed text") from None
        if fmt != TEXT_FORMAT:
            raise CryptoError("unknown sealed text format")
        head = blob[: 6 + id_length]
        nonce = blob[6 + id_length : 6 + id_length + NONCE_BYTES]
        try:
            plain = AESGCM(self.key(MasterKeyRef(key_id, version))).decrypt(
                nonce, blob[6 + id_length + NONCE_BYTES :], head + context.encode()
            )
        except InvalidTag:
            raise CryptoError("sealed text does not authenticate") from None
        return plain.decode("utf-8")


def _seal_for_subject(text: str, context: str, subject_id: str) -> bytes:
    head = struct.pack(">BB", SUBJECT_TEXT_FORMAT, len(subject_id)) + subject_id.encode()
    field_key = new_data_key()
    aad = head + context.encode()
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = wrap_nonce + AESGCM(subject_key(subject_id)).encrypt(wrap_nonce, field_key, aad)
    nonce = os.urandom(NONCE_BYTES)
    return head + wrapped + nonce + AESGCM(field_key).encrypt(nonce, text.encode("utf-8"), aad)


def _open_for_subject(blob: bytes, context: str) -> str:
    id_length = blob[1]
    head = blob[: 2 + id_length]
    try:
        subject_id = blob[2 : 2 + id_length].decode()
    except UnicodeDecodeError:
        raise CryptoError("malformed sealed text") from None
    aad = head + context.encode()
    wrapped = blob[len(head) : len(head) + WRAPPED_KEY_BYTES]
    rest = blob[len(head) + WRAPPED_KEY_BYTES :]
    try:
        field_key = AESGCM(subject_key(subject_id)).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        plain = AESGCM(field_key).decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], aad)
    except InvalidTag:
        raise CryptoError("sealed text does not authenticate") from None
    return plain.decode("utf-8")


def create_master_key(folder: Path, key_id: str) -> MasterKeyRef:
    """Write the next version of `key_id` (0600) and return its reference."""
    folder.mkdir(parents=True, exist_ok=True)
    versions = [
        int(match["version"])
        for path in folder.iterdir()
        if (match := KEY_FILE.match(path.name)) and match["id"] == key_id
    ]
    ref = MasterKeyRef(key_id, max(versions, default=0) + 1)
    fd = os.open(folder / f"{key_id}.v{ref.version}.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(os.urandom(32)).decode())
    return ref


def _wrap_aad(object_id: str, ref: MasterKeyRef) -> bytes:
    return f"dek|{object_id}|{ref.key_id}|{ref.version}".encode()


def _chunk_aad(object_id: str, index: int, final: bool) -> bytes:
    return b"chunk|" + object_id.encode() + struct.pack(">QB", index, 1 if final else 0)


@dataclass(frozen=True, slots=True)
class EncryptedObjectHeader:
    object_id: str
    master_key: MasterKeyRef
    wrapped_key: bytes
    chunk_size: int
    # Set when the data key is wrapped by this subject's key (which the master key wraps).
    subject_key_id: str = ""

    def encode(self) -> bytes:
        extra = {"subject_key_id": self.subject_key_id} if self.subject_key_id else {}
        body = json.dumps(
            {
                **extra,
                "object_id": self.object_id,
                "master_key_id": self.master_key.key_id,
                "master_key_version": self.master_key.version,
                "wrapped_key": base64.b64encode(self.wrapped_key).decode(),
                "chunk_size": self.chunk_size,
                "cipher": "AES-256-GCM",
            },
            sort_keys=True,
        ).encode()
        return MAGIC + struct.pack(">I", len(body)) + body


async def encrypt_stream(
    plaintext: AsyncIterator[bytes], header: EncryptedObjectHeader, data_key: bytes
) -> AsyncIterator[bytes]:
    """Header, then one authenticated record per `chunk_size` plaintext bytes (the last
    record carries the final flag, even when empty)."""
    aead = AESGCM(data_key)
    size = header.chunk_size
    yield header.encode()
    buffer = bytearray()
    index = 0
    async for piece in plaintext:
        buffer += piece
        while len(buffer) > size:  # keep at least one chunk back: it may be the final one
            nonce = os.urandom(NONCE_BYTES)
            chunk = bytes(buffer[:size])
            del buffer[:size]
            yield nonce + aead.encrypt(nonce, chunk, _chunk_aad(header.object_id, index, False))
            index += 1
    nonce = os.urandom(NONCE_BYTES)
    yield nonce + aead.encrypt(nonce, bytes(buffer), _chunk_aad(header.object_id, index, True))


def parse_header(blob: bytes) -> tuple[dict[str, object], int] | None:
    """The header's fields and length, or None when more bytes are needed."""
    if len(blob) < len(MAGIC) + 4:
        return None
    if not blob.startswith(MAGIC):
        raise CryptoError("not an encrypted document object")
    (length,) = struct.unpack(">I", blob[len(MAGIC) : len(MAGIC) + 4])
    if length > 64 * 1024:
        raise CryptoError("malformed object header")
    end = len(MAGIC) + 4 + length
    if len(blob) < end:
        return None
    fields = json.loads(blob[len(MAGIC) + 4 : end])
    if not isinstance(fields, dict):
        raise CryptoError("malformed object header")
    return fields, end


async def decrypt_stream(
    ciphertext: AsyncIterator[bytes], object_id: str, data_key: bytes
) -> AsyncIterator[bytes]:
    """Plaintext chunks; raises CryptoError on any tampering, reordering or truncation."""
    aead = AESGCM(data_key)
    buffer = bytearray()
    record = 0
    index = 0
    header_done = False
    async for piece in ciphertext:
        buffer += piece
        if not header_done:
            parsed = parse_header(bytes(buffer[: 64 * 1024 + 10]))
            if parsed is None:
                continue
            fields, end = parsed
            if fields.get("object_id") != object_id:
                raise CryptoError("the object belongs to another document")
            chunk_size = fields.get("chunk_size")
            if not isinstance(chunk_size, int) or chunk_size <= 0:
                raise CryptoError("malformed object header")
            record = NONCE_BYTES + chunk_size + TAG_BYTES
            del buffer[:end]
            header_done = True
        while len(buffer) > record:
            yield _open_record(aead, bytes(buffer[:record]), object_id, index, False)
            del buffer[:record]
            index += 1
    if not header_done or len(buffer) < NONCE_BYTES + TAG_BYTES:
        raise CryptoError("the object is truncated")
    yield _open_record(aead, bytes(buffer), object_id, index, True)


def _open_record(aead: AESGCM, blob: bytes, object_id: str, index: int, final: bool) -> bytes:
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _chunk_aad(object_id, index, final))
    except InvalidTag:
        raise CryptoError("the object was altered or truncated") from None


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
