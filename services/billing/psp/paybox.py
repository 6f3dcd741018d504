"""Hosted payment in the style of Paybox System (Verifone/BNP e-transactions).

Request: the form fields are joined as `name=value&...` and signed with HMAC-SHA512
under the merchant's key (PBX_HMAC, uppercase hex). Answer (browser return and the
server-to-server notification alike): the variables asked for in PBX_RETOUR, then
`Sign=` last: an RSA signature (base64, URL-encoded) of everything before `&Sign=`,
verified with the PSP's public key. No card variable is ever asked for.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha512
from typing import Protocol
from urllib.parse import parse_qsl, unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

CURRENCY_CODES = {"EUR": "978"}
# What the answer carries: amount, our reference, authorisation number, error code, the
# PSP's transaction number, signature last. Deliberately no card variable.
RETURN_VARIABLES = "Mt:M;Ref:R;Auto:A;Erreur:E;Trans:S;Sign:K"
ERROR_SUCCESS = "00000"
ERROR_ABANDONED = "00030"  # the buyer left the payment page (timeout or cancel)
LANGUAGES = {"fr": "FRA", "en": "GBR"}
MAX_PAYLOAD = 4096


class InvalidPspMessage(Exception):
    """The answer is malformed or its signature does not verify."""


@dataclass(frozen=True)
class HostedPaymentRequest:
    reference: str
    amount_cents: int
    currency: str
    locale: str
    created_at: datetime


@dataclass(frozen=True)
class HostedForm:
    action_url: str
    fields: list[tuple[str, str]]


@dataclass(frozen=True)
class PspMessage:
    reference: str
    amount_cents: int
    authorization: str
    error_code: str
    transaction_id: str

    @property
    def succeeded(self) -> bool:
        return self.error_code == ERROR_SUCCESS

    @property
    def abandoned(self) -> bool:
        return self.error_code == ERROR_ABANDONED


class PaymentServiceProvider(Protocol):
    def hosted_form(self, request: HostedPaymentRequest) -> HostedForm: ...

    def verify(self, raw_payload: str) -> PspMessage: ...


def hash_algorithm(name: str) -> hashes.HashAlgorithm:
    return {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha512": hashes.SHA512()}[name]  # noqa: S303


def hmac_signature(key: bytes, fields: list[tuple[str, str]]) -> str:
    message = "&".join(f"{name}={value}" for name, value in fields)
    return hmac.new(key, message.encode(), sha512).hexdigest().upper()


def split_signed(raw_payload: str) -> tuple[str, bytes]:
    """(signed part, signature bytes) of an answer; `Sign` must come last."""
    if len(raw_payload) > MAX_PAYLOAD or not raw_payload.isascii():
        raise InvalidPspMessage("payload too long or not ASCII")
    signed, separator, signature = raw_payload.rpartition("&Sign=")
    if not separator or not signed or "&" in signature:
        raise InvalidPspMessage("the signature must be the last variable")
    try:
        return signed, base64.b64decode(unquote(signature), validate=True)
    except ValueError as exc:
        raise InvalidPspMessage("the signature is not base64") from exc


class PayboxSystem:
    """The adapter: signs hosted-payment requests, verifies answers."""

    def __init__(
        self,
        *,
        payment_url: str,
        site: str,
        rang: str,
        identifiant: str,
        hmac_key: Callable[[], bytes],
        public_key: Callable[[], RSAPublicKey],
        return_base_url: str,
        signature_digest: str = "sha1",
    ) -> None:
        self._payment_url = payment_url
        self._site = site
        self._rang = rang
        self._identifiant = identifiant
        self._hmac_key = hmac_key
        self._public_key = public_key
        self._return_base = return_base_url.rstrip("/")
        self._digest = signature_digest

    def hosted_form(self, request: HostedPaymentRequest) -> HostedForm:
        currency = CURRENCY_CODES.get(request.currency)
        if currency is None:
            raise ValueError("unsupported currency")
        fields = [
            ("PBX_SITE", self._site),
            ("PBX_RANG", self._rang),
            ("PBX_IDENTIFIANT", self._identifiant),
            ("PBX_TOTAL", str(request.amount_cents)),
            ("PBX_DEVISE", currency),
            ("PBX_CMD", request.reference),
            ("PBX_RETOUR", RETURN_VARIABLES),
            ("PBX_HASH", "SHA512"),
            ("PBX_TIME", request.created_at.replace(microsecond=0).isoformat()),
            ("PBX_LANGUE", LANGUAGES.get(request.locale, "FRA")),
            ("PBX_EFFECTUE", f"{self._return_base}/return/accepted"),
            ("PBX_REFUSE", f"{self._return_base}/return/refused"),
            ("PBX_ANNULE", f"{self._return_base}/return/cancelled"),
            ("PBX_ATTENTE", f"{self._return_base}/return/pending"),
            ("PBX_REPONDRE_A", f"{self._return_base}/notification"),
        ]
        fields.append(("PBX_HMAC", hmac_signature(self._hmac_key(), fields)))
        return HostedForm(self._payment_url, fields)

    def verify(self, raw_payload: str) -> PspMessage:
        signed, signature = split_signed(raw_payload)
        try:
            self._public_key().verify(
                signature, signed.encode(), padding.PKCS1v15(), hash_algorithm(self._digest)
            )
        except InvalidSignature as exc:
            raise InvalidPspMessage("the PSP signature does not verify") from exc
        values = dict(parse_qsl(signed, keep_blank_values=True, strict_parsing=True))
        try:
            amount = int(values["Mt"])
            reference = values["Ref"]
            error = values["Erreur"]
        except (KeyError, ValueError) as exc:
            raise InvalidPspMessage("amount, reference or error code missing") from exc
        if amount < 0 or not error.isdigit() or len(error) != 5:
            raise InvalidPspMessage("amount or error code malformed")
        return PspMessage(
            reference=reference,
            amount_cents=amount,
            authorization=values.get("Auto", "")[:20],
            error_code=error,
            transaction_id=values.get("Trans", "")[:40],
        )
