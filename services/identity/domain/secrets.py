"""Server-side keys for one-time codes, tokens and TOTP secrets, and code generation.

One-time codes come from the CSPRNG (`secrets`), are 6 digits, and are stored as
HMAC-SHA256(key, binding || code) where the binding is the challenge they belong to: a
code copied onto another attempt never matches. The key comes from the settings
(`IDENTITY_CODE_SECRET`), or, in development and tests, is derived from the identity
signing key so that no extra file is needed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

CODE_DIGITS = 6
RECOVERY_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (0/o, 1/l/i)


def new_numeric_code() -> str:
    return f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"


def new_recovery_code() -> str:
    raw = "".join(secrets.choice(RECOVERY_CODE_ALPHABET) for _ in range(10))
    return f"{raw[:5]}-{raw[5:]}"


def normalize_recovery_code(code: str) -> str:
    return code.strip().lower().replace("-", "").replace(" ", "")


def new_url_token() -> str:
    """An opaque token of 256 random bits for links."""
    return secrets.token_urlsafe(32)


class CodeKeys:
    def __init__(self, master: bytes) -> None:
        if len(master) < 32:
            raise ValueError("the code secret needs at least 32 bytes")
        self._mac_key = hmac.new(master, b"identity/codes/v1", hashlib.sha256).digest()
        self._totp_key = hmac.new(master, b"identity/totp-secrets/v1", hashlib.sha256).digest()
        # Wraps the per-subject data keys (crypto-shredding, issue 10).
        self.subject_kek = hmac.new(master, b"identity/subject-keys/v1", hashlib.sha256).digest()

    @classmethod
    def from_setting_or_signing_key(cls, secret: str, signing_key_pem: bytes) -> CodeKeys:
        if secret:
            return cls(secret.encode())
        return cls(hashlib.sha256(b"identity-code-secret:" + signing_key_pem).digest())

    def code_hash(self, binding: str, code: str) -> str:
        return hmac.new(self._mac_key, f"{binding}\x00{code}".encode(), hashlib.sha256).hexdigest()

    def matches(self, stored: str | None, binding: str, code: str) -> bool:
        return stored is not None and hmac.compare_digest(stored, self.code_hash(binding, code))

    def token_hash(self, token: str) -> str:
        return self.code_hash("token", token)

    def redact(self, secret: str) -> str:
        """A keyed digest standing for a secret in idempotency fingerprints: the stored
        fingerprint then cannot be brute-forced offline into the password."""
        return self.code_hash("fingerprint", secret) if secret else ""

    def encrypt_totp_secret(self, secret: str, account_id: str) -> str:
        nonce = secrets.token_bytes(12)
        sealed = AESGCM(self._totp_key).encrypt(nonce, secret.encode(), account_id.encode())
        return base64.b64encode(nonce + sealed).decode()

    def decrypt_totp_secret(self, sealed: str, account_id: str) -> str:
        raw = base64.b64decode(sealed)
        return AESGCM(self._totp_key).decrypt(raw[:12], raw[12:], account_id.encode()).decode()
