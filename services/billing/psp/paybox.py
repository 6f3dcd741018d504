"""Hosted payment in the style of Paybox System (Verifone/BNP e-transactions).

Request: the form fields are joined as `name=value&...` and signed with HMAC-SHA512
under the merchant's key (PBX_HMAC, uppercase hex). Answer (browser return and the
server-to-server notification alike): the variables asked for in PBX_RETOUR, then
`Sign=` last: an RSA signature (base64, URL-encoded) of everything before `&Sign=`,
verified with the PSP's public key. No card variable is ever asked for.

Refunds go server to server in the style of Paybox Direct: a form-encoded request
(VERSION 00104, TYPE 00014, the capture's NUMAPPEL and NUMTRANS, a NUMQUESTION unique
per day) signed with the same HMAC-SHA512 merchant key, answered with CODEREPONSE.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha512
from typing import Protocol
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

CURRENCY_CODES = {"EUR": "978"}
# What the answer carries: amount, our reference, authorisation number, error code, the
# PSP's transaction number, signature last. Deliberately no card variable.
# The call number (T, NUMAPPEL) and transaction number (S, NUMTRANS) name the capture in
# a later Paybox Direct refund (TYPE 00014).
RETURN_VARIABLES = "Mt:M;Ref:R;Auto:A;Erreur:E;Trans:S;Appel:T;Sign:K"
ERROR_SUCCESS = "00000"
ERROR_ABANDONED = "00030"  # the buyer left the payment page (timeout or cancel)
LANGUAGES = {"fr": "FRA", "en": "GBR"}
MAX_PAYLOAD = 4096
# Paybox Direct: version 00104 (HMAC authentication), question type 00014 = refund.
DIRECT_PATH = "/PPPS.php"
DIRECT_VERSION = "00104"
DIRECT_TYPE_REFUND = "00014"
DIRECT_TIMEOUT_SECONDS = 10.0
DIRECT_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


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
    call_number: str = ""

    @property
    def succeeded(self) -> bool:
        return self.error_code == ERROR_SUCCESS

    @property
    def abandoned(self) -> bool:
        return self.error_code == ERROR_ABANDONED


class PaymentServiceProvider(Protocol):
    def hosted_form(self, request: HostedPaymentRequest) -> HostedForm: ...

    def verify(self, raw_payload: str) -> PspMessage: ...

    async def refund(self, request: RefundRequest) -> RefundAnswer: ...


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


@dataclass(frozen=True)
class RefundRequest:
    """A refund of (part of) a captured transaction. `question_number` is unique per day
    and site; a request re-sent after a crash carries the same number and date, so the
    PSP treats it as the same question."""

    question_number: int
    reference: str
    amount_cents: int
    currency: str
    call_number: str
    transaction_id: str
    requested_at: datetime


@dataclass(frozen=True)
class RefundAnswer:
    """The PSP's answer: `response_code` "00000" is success; `unreachable` when no answer."""

    response_code: str
    transaction_id: str = ""
    call_number: str = ""
    authorization: str = ""
    unreachable: bool = False

    @property
    def succeeded(self) -> bool:
        return self.response_code == ERROR_SUCCESS and not self.unreachable


def default_direct_url(payment_url: str) -> str:
    parts = urlsplit(payment_url)
    return urlunsplit((parts.scheme, parts.netloc, DIRECT_PATH, "", ""))


def direct_refund_fields(site: str, rang: str, request: RefundRequest) -> list[tuple[str, str]]:
    currency = CURRENCY_CODES.get(request.currency)
    if currency is None:
        raise ValueError("unsupported currency")
    if not 0 < request.question_number < 10**10 or not 0 < request.amount_cents < 10**10:
        raise ValueError("question number or amount out of range")
    return [
        ("VERSION", DIRECT_VERSION),
        ("TYPE", DIRECT_TYPE_REFUND),
        ("SITE", site),
        ("RANG", rang),
        ("NUMQUESTION", f"{request.question_number:010d}"),
        ("MONTANT", f"{request.amount_cents:010d}"),
        ("DEVISE", currency),
        ("REFERENCE", request.reference),
        ("NUMAPPEL", request.call_number),
        ("NUMTRANS", request.transaction_id),
        ("DATEQ", request.requested_at.astimezone(UTC).strftime("%d%m%Y%H%M%S")),
        ("HASH", "SHA512"),
    ]


async def post_direct(
    url: str, fields: list[tuple[str, str]], request: RefundRequest, site: str, rang: str
) -> RefundAnswer:
    """Posts a signed Paybox Direct request; the answer must echo our question, site and rank."""
    try:
        async with httpx.AsyncClient(timeout=DIRECT_TIMEOUT_SECONDS) as client:
            response = await client.post(url, content=urlencode(fields), headers=DIRECT_HEADERS)
    except httpx.HTTPError:
        return RefundAnswer("", unreachable=True)
    if response.status_code != 200 or len(response.content) > MAX_PAYLOAD:
        return RefundAnswer("", unreachable=True)
    values = dict(parse_qsl(response.text.strip(), keep_blank_values=True))
    code = values.get("CODEREPONSE", "")
    if (
        values.get("NUMQUESTION", "").lstrip("0") != str(request.question_number)
        or values.get("SITE") != site
        or values.get("RANG") != rang
        or not code.isdigit()
        or len(code) != 5
    ):
        raise InvalidPspMessage("the PSP's refund answer does not match the question")
    return RefundAnswer(
        response_code=code,
        transaction_id=values.get("NUMTRANS", "")[:40],
        call_number=values.get("NUMAPPEL", "")[:40],
        authorization=values.get("AUTORISATION", "")[:20],
    )


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
        direct_url: str = "",
    ) -> None:
        self._payment_url = payment_url
        # Paybox Direct (server-to-server requests); by default beside the payment page.
        self._direct_url = direct_url or default_direct_url(payment_url)
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
            call_number=values.get("Appel", "")[:40],
        )

    async def refund(self, request: RefundRequest) -> RefundAnswer:
        """A Paybox Direct refund (TYPE 00014) of a captured transaction, server to server."""
        fields = direct_refund_fields(self._site, self._rang, request)
        fields.append(("HMAC", hmac_signature(self._hmac_key(), fields)))
        return await post_direct(self._direct_url, fields, request, self._site, self._rang)
