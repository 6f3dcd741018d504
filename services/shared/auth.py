"""Signed, short-lived internal identity tokens (EdDSA / Ed25519 JWTs).

Every internal gRPC call carries `authorization: Bearer <token>`. A token names its
subject, role and session, and is signed by an issuer whose public key every service
holds. The identity service is the only issuer that may mint tokens for people; other
issuers (the gateway, the workflow worker, the seeding tool) may only mint tokens for
themselves with the `service` role. Nothing is ever taken from an unsigned header.

A person's token also carries the account's active habilitations (claim `hab`, SEC-05,
CASE-14), read by identity when it mints the token: a grant or a revocation takes effect
at the account's next token, so within the token lifetime (5 minutes by default). A token
without the claim holds none; only identity's person tokens may carry it.
"""

from __future__ import annotations

import contextvars
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

AUDIENCE = "secondopinion.internal"
# A verifier refuses tokens that claim to live longer than this, whatever their issuer says.
MAX_TOKEN_LIFETIME_SECONDS = 3600
CLOCK_LEEWAY_SECONDS = 5


class Role(StrEnum):
    PATIENT = "patient"
    REFERRING_DOCTOR = "referring_doctor"
    REFERENT_DOCTOR = "referent_doctor"
    COORDINATOR = "coordinator"
    DPO = "dpo"
    ADMINISTRATOR = "administrator"
    PARTNER_USER = "partner_user"
    SERVICE = "service"


HUMAN_ROLES = frozenset(role for role in Role if role is not Role.SERVICE)
IDENTITY_ISSUER = "identity"
HABILITATIONS_CLAIM = "hab"
MAX_HABILITATIONS = 16


class Habilitation(StrEnum):
    """Permissions granted to staff on top of their role (SEC-05, RET-07, CASE-14); the
    values are the token claim's spelling and the API's codes."""

    HEALTH_DATA = "health_data"
    ARCHIVE_ACCESS = "archive_access"
    PERSONAL_ASSISTANT = "personal_assistant"
    RIGHTS_REQUESTS = "rights_requests"


def roles_issuer_may_mint(issuer: str) -> frozenset[Role]:
    """Trust policy: identity speaks for people (and for itself), every other issuer only
    for itself. A service token's subject is always its issuer (checked both ways)."""
    return HUMAN_ROLES | {Role.SERVICE} if issuer == IDENTITY_ISSUER else frozenset({Role.SERVICE})


class InvalidTokenError(Exception):
    """The token is missing, malformed, expired, forged or from an untrusted issuer."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified internal token."""

    subject: str
    role: Role
    session_id: str
    issuer: str
    token_id: str
    expires_at: float
    # Active habilitations when the token was minted (values of `Habilitation`; a value
    # this code does not know yet is kept as is and grants nothing).
    habilitations: frozenset[str] = frozenset()

    @property
    def is_service(self) -> bool:
        return self.role is Role.SERVICE

    def holds(self, habilitation: Habilitation) -> bool:
        return habilitation.value in self.habilitations


def generate_keypair(keys_dir: Path, issuer: str) -> None:
    """Write `<issuer>.key.pem` (0600) and `<issuer>.pub.pem`, unless they exist."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    private_path = keys_dir / f"{issuer}.key.pem"
    public_path = keys_dir / f"{issuer}.pub.pem"
    if private_path.exists() and public_path.exists():
        return
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class TokenSigner:
    def __init__(self, issuer: str, private_key: Ed25519PrivateKey, ttl_seconds: int = 300) -> None:
        if ttl_seconds > MAX_TOKEN_LIFETIME_SECONDS:
            raise ValueError("token lifetime above the platform maximum")
        self.issuer = issuer
        self._key = private_key
        self._ttl = ttl_seconds

    @classmethod
    def from_keys_dir(cls, keys_dir: Path, issuer: str, ttl_seconds: int = 300) -> TokenSigner:
        key = serialization.load_pem_private_key((keys_dir / f"{issuer}.key.pem").read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidTokenError(f"{issuer} key is not Ed25519")
        return cls(issuer, key, ttl_seconds)

    def mint(
        self,
        subject: str,
        role: Role,
        session_id: str = "",
        habilitations: Iterable[Habilitation | str] = (),
    ) -> tuple[str, float]:
        """Return a token and its expiry (epoch seconds)."""
        if role not in roles_issuer_may_mint(self.issuer):
            raise InvalidTokenError(f"issuer {self.issuer} may not mint role {role}")
        if role is Role.SERVICE and subject != self.issuer:
            raise InvalidTokenError("a service token names its own issuer")
        held = sorted({str(Habilitation(h)) for h in habilitations})
        if held and role is Role.SERVICE:
            raise InvalidTokenError("habilitations are granted to people, not services")
        now = int(time.time())
        expires_at = now + self._ttl
        claims: dict[str, object] = {
            "iss": self.issuer,
            "sub": subject,
            "role": role.value,
            "sid": session_id,
            "aud": AUDIENCE,
            "iat": now,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
        }
        if held:
            claims[HABILITATIONS_CLAIM] = held
        token = jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": self.issuer})
        return token, float(expires_at)


class ServiceTokenProvider:
    """Mints and caches a service token for one process, renewed before it expires."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer
        self._token = ""
        self._expires_at = 0.0

    def __call__(self) -> str:
        if time.time() > self._expires_at - 30:
            self._token, self._expires_at = self._signer.mint(self._signer.issuer, Role.SERVICE)
        return self._token


class TokenVerifier:
    def __init__(self, public_keys: dict[str, Ed25519PublicKey]) -> None:
        self._keys = dict(public_keys)

    @classmethod
    def from_keys_dir(cls, keys_dir: Path) -> TokenVerifier:
        keys = trusted_public_keys(keys_dir)
        if not keys:
            raise InvalidTokenError(f"no trusted public keys in {keys_dir}")
        return cls(keys)

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError("malformed token") from exc
        issuer = header.get("kid")
        if header.get("alg") != "EdDSA" or not isinstance(issuer, str) or issuer not in self._keys:
            raise InvalidTokenError("untrusted token issuer")
        try:
            claims = jwt.decode(
                token,
                self._keys[issuer],
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=issuer,
                leeway=CLOCK_LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidTokenError(f"token rejected: {type(exc).__name__}") from exc
        if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME_SECONDS:
            raise InvalidTokenError("token lifetime too long")
        try:
            role = Role(str(claims.get("role")))
        except ValueError as exc:
            raise InvalidTokenError("unknown role") from exc
        if role not in roles_issuer_may_mint(issuer):
            raise InvalidTokenError("issuer may not speak for that role")
        if role is Role.SERVICE and claims["sub"] != issuer:
            raise InvalidTokenError("a service token must name its own issuer")
        habilitations = _habilitations_claim(claims, issuer, role)
        return Principal(
            subject=str(claims["sub"]),
            role=role,
            session_id=str(claims.get("sid", "")),
            issuer=issuer,
            token_id=str(claims["jti"]),
            expires_at=float(claims["exp"]),
            habilitations=habilitations,
        )


def _habilitations_claim(claims: dict[str, object], issuer: str, role: Role) -> frozenset[str]:
    """The `hab` claim: absent means none; only identity's person tokens may carry it."""
    value = claims.get(HABILITATIONS_CLAIM)
    if value is None:
        return frozenset()
    if issuer != IDENTITY_ISSUER or role is Role.SERVICE:
        raise InvalidTokenError("only identity's person tokens carry habilitations")
    if (
        not isinstance(value, list)
        or len(value) > MAX_HABILITATIONS
        or not all(isinstance(item, str) and 0 < len(item) <= 64 for item in value)
    ):
        raise InvalidTokenError("malformed habilitations claim")
    return frozenset(value)


def trusted_public_keys(keys_dir: Path) -> dict[str, Ed25519PublicKey]:
    """`<issuer>.pub.pem` files of a keys folder, by issuer (the tokens' `kid`)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(keys_dir.glob("*.pub.pem")):
        key = serialization.load_pem_public_key(path.read_bytes())
        if isinstance(key, Ed25519PublicKey):
            keys[path.name.removesuffix(".pub.pem")] = key
    return keys


# The verified caller of the RPC being served (set by the server interceptor).
current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "current_principal", default=None
)
# The token to send on outgoing calls made while serving a person's request (gateway).
outgoing_token: contextvars.ContextVar[str | None] = contextvars.ContextVar("outgoing_token", default=None)
