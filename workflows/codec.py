"""AES-256-GCM payload codec: health data never sits in clear in Temporal's history.

Every payload (workflow inputs and results, activity arguments, signals, updates,
queries, memo, summaries) is serialised by the pydantic converter, then sealed here:

    metadata: encoding=binary/encrypted, encryption-key-id=<key id>
    data:     12-byte random nonce || AES-256-GCM(ciphertext || tag)

The key id and the encoding are bound as associated data, so a payload cannot be
relabelled to another key. Payloads that are not encrypted (written before the codec,
or by a process without it) pass through on decode, so old histories still replay.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class PayloadKeyError(Exception):
    """A payload key is missing, malformed, or a payload names an unknown key."""


@dataclass(frozen=True)
class Keyring:
    active_key_id: str
    keys: dict[str, bytes]

    def __post_init__(self) -> None:
        if self.active_key_id not in self.keys:
            raise PayloadKeyError(f"the active payload key {self.active_key_id!r} is not loaded")
        for key_id, key in self.keys.items():
            if len(key) != KEY_BYTES or not _KEY_ID.match(key_id):
                raise PayloadKeyError(f"payload key {key_id!r} must be 32 bytes under a simple id")


def _key_path(keys_dir: Path, key_id: str) -> Path:
    return keys_dir / f"{key_id}.key"


def create_key(keys_dir: Path, key_id: str) -> bool:
    """Create `<key id>.key` (0600) unless it exists; atomic, safe with racing processes."""
    if not _KEY_ID.match(key_id):
        raise PayloadKeyError(f"invalid payload key id {key_id!r}")
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(_key_path(keys_dir, key_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
    return True


def load_keyring(keys_dir: Path, active_key_id: str, autocreate: bool) -> Keyring:
    if autocreate:
        create_key(keys_dir, active_key_id)
    keys: dict[str, bytes] = {}
    if keys_dir.is_dir():
        for path in sorted(keys_dir.glob("*.key")):
            try:
                keys[path.stem] = base64.b64decode(path.read_bytes().strip(), validate=True)
            except ValueError as error:
                raise PayloadKeyError(f"payload key file {path.name} is not base64") from error
    if active_key_id not in keys:
        raise PayloadKeyError(
            f"payload key {active_key_id!r} not found in {keys_dir}: provision it "
            "(32 random bytes, base64) or enable TEMPORAL_PAYLOAD_KEY_AUTOCREATE outside production"
        )
    return Keyring(active_key_id, keys)


class EncryptionCodec(PayloadCodec):
    def __init__(self, keyring: Keyring) -> None:
        self._keyring = keyring
        self._ciphers = {key_id: AESGCM(key) for key_id, key in keyring.keys.items()}

    @property
    def active_key_id(self) -> str:
        return self._keyring.active_key_id

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(payload) for payload in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        key_id = self._keyring.active_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), _associated_data(key_id))
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(f"payload sealed with unknown key {key_id!r}")
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        return Payload.FromString(cipher.decrypt(nonce, sealed, _associated_data(key_id)))


def _associated_data(key_id: str) -> bytes:
    return ENCODING + b"|" + key_id.encode()
