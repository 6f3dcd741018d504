"""Secrets of the PSP protocol and the coverage codes, kept in files in development."""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey, generate_private_key


def load_or_create_secret(path: Path, size: int = 64) -> bytes:
    """A random secret stored hexadecimal in a 0600 file, created once (first writer wins)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(size))
    return bytes.fromhex(path.read_text().strip())


def secret_from(hex_value: str, path: Path, size: int = 64) -> bytes:
    return bytes.fromhex(hex_value) if hex_value else load_or_create_secret(path, size)


def generate_rsa_key() -> RSAPrivateKey:
    return generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(path: Path) -> RSAPublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the PSP public key is not an RSA key")
    return key
