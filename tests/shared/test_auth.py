"""Internal identity tokens: signed, short-lived, issuer-scoped."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.shared.auth import (
    AUDIENCE,
    InvalidTokenError,
    Role,
    TokenSigner,
    TokenVerifier,
    generate_keypair,
)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for issuer in ("identity", "worker"):
        generate_keypair(tmp_path, issuer)
    return tmp_path


def test_identity_token_round_trip(keys: Path) -> None:
    token, expires_at = TokenSigner.from_keys_dir(keys, "identity", 60).mint("acc-1", Role.PATIENT, "sess-1")
    principal = TokenVerifier.from_keys_dir(keys).verify(token)
    assert (principal.subject, principal.role, principal.session_id) == ("acc-1", Role.PATIENT, "sess-1")
    assert principal.issuer == "identity"
    assert expires_at - time.time() <= 61


def test_private_key_file_is_private(keys: Path) -> None:
    assert (keys / "identity.key.pem").stat().st_mode & 0o077 == 0


def test_only_identity_may_speak_for_people(keys: Path) -> None:
    with pytest.raises(InvalidTokenError):
        TokenSigner.from_keys_dir(keys, "worker").mint("acc-1", Role.COORDINATOR)
    # Forged by hand with the worker's real key: still refused by the verifier.
    private = TokenSigner.from_keys_dir(keys, "worker")._key
    now = int(time.time())
    forged = jwt.encode(
        {
            "iss": "worker",
            "sub": "x",
            "role": "coordinator",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 60,
            "jti": "j",
        },
        private,
        algorithm="EdDSA",
        headers={"kid": "worker"},
    )
    with pytest.raises(InvalidTokenError, match="may not speak"):
        TokenVerifier.from_keys_dir(keys).verify(forged)


def test_untrusted_key_expired_and_tampered_tokens_are_refused(keys: Path) -> None:
    verifier = TokenVerifier.from_keys_dir(keys)
    rogue = TokenSigner("identity", Ed25519PrivateKey.generate(), 60)
    with pytest.raises(InvalidTokenError):
        verifier.verify(rogue.mint("acc-1", Role.ADMINISTRATOR)[0])
    expired_signer = TokenSigner.from_keys_dir(keys, "identity", 10)
    token, _ = expired_signer.mint("acc-1", Role.PATIENT)
    header, payload, signature = token.split(".")
    with pytest.raises(InvalidTokenError):
        verifier.verify(f"{header}.{payload}x.{signature}")
    with pytest.raises(InvalidTokenError):
        verifier.verify("not-a-token")
    now = int(time.time())
    stale = jwt.encode(
        {"iss": "identity", "sub": "a", "role": "patient", "aud": AUDIENCE, "iat": now - 100, "exp": now - 50,
         "jti": "j"},
        expired_signer._key,
        algorithm="EdDSA",
        headers={"kid": "identity"},
    )  # fmt: skip
    with pytest.raises(InvalidTokenError):
        verifier.verify(stale)
    long_lived = jwt.encode(
        {"iss": "identity", "sub": "a", "role": "patient", "aud": AUDIENCE, "iat": now, "exp": now + 86400,
         "jti": "j"},
        expired_signer._key,
        algorithm="EdDSA",
        headers={"kid": "identity"},
    )  # fmt: skip
    with pytest.raises(InvalidTokenError, match="too long"):
        verifier.verify(long_lived)


def test_a_service_token_always_names_its_issuer(keys: Path) -> None:
    worker = TokenSigner.from_keys_dir(keys, "worker")
    with pytest.raises(InvalidTokenError):
        worker.mint("gateway", Role.SERVICE)
    now = int(time.time())
    impersonation = jwt.encode(
        {
            "iss": "worker",
            "sub": "ops",
            "role": "service",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 60,
            "jti": "j",
        },
        worker._key,
        algorithm="EdDSA",
        headers={"kid": "worker"},
    )
    with pytest.raises(InvalidTokenError, match="own issuer"):
        TokenVerifier.from_keys_dir(keys).verify(impersonation)
    own, _ = TokenSigner.from_keys_dir(keys, "identity").mint("identity", Role.SERVICE)
    assert TokenVerifier.from_keys_dir(keys).verify(own).is_service
