"""A local PSP speaking the Paybox System protocol, for the dev stack and the tests.

It checks the merchant's HMAC-SHA512 like the real PSP, shows a card page, and answers
with RSA-signed variables: to the browser (redirect to PBX_EFFECTUE / PBX_REFUSE /
PBX_ANNULE) and server to server (PBX_REPONDRE_A). Its key pair is generated at start;
the public key is served at /pubkey.pem and written where the billing service reads it.
Card numbers are only compared with the test cards, never kept or logged.

It also answers Paybox Direct refunds (TYPE 00014 at /PPPS.php): the HMAC-SHA512 is
checked, the capture is found by NUMAPPEL and NUMTRANS, the amount may not exceed what
is left of it, and a NUMQUESTION already answered today gets the same answer again
(a different request under a used number is refused with 00005).

Test cards: 1111 2222 3333 4444 succeeds, 4000 0000 0000 0002 is refused (00105),
4000 0000 0000 0259 abandons (00030); the page's Cancel button abandons too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import html
import itertools
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import httpx
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from services.billing.psp.keys import generate_rsa_key, public_pem
from services.billing.psp.paybox import (
    DIRECT_PATH,
    DIRECT_TYPE_REFUND,
    DIRECT_VERSION,
    ERROR_ABANDONED,
    ERROR_SUCCESS,
    hash_algorithm,
    hmac_signature,
)

log = logging.getLogger(__name__)

SUCCESS_CARD = "1111222233334444"
REFUSED_CARD = "4000000000000002"
ABANDON_CARD = "4000000000000259"
ERROR_REFUSED = "00105"
ERROR_BAD_REQUEST = "00004"
# Paybox Direct answer codes used by the sandbox.
DIRECT_COHERENCE_ERROR = "00002"
DIRECT_QUESTION_REUSED = "00005"
DIRECT_ACCESS_REFUSED = "00006"
DIRECT_WRONG_AMOUNT = "00011"
DIRECT_REQUIRED = (
    "VERSION",
    "TYPE",
    "SITE",
    "RANG",
    "NUMQUESTION",
    "MONTANT",
    "DEVISE",
    "REFERENCE",
    "NUMAPPEL",
    "NUMTRANS",
    "DATEQ",
    "HASH",
    "HMAC",
)
REQUIRED = (
    "PBX_SITE",
    "PBX_RANG",
    "PBX_IDENTIFIANT",
    "PBX_TOTAL",
    "PBX_DEVISE",
    "PBX_CMD",
    "PBX_RETOUR",
    "PBX_HASH",
    "PBX_TIME",
    "PBX_HMAC",
)


@dataclass
class SandboxState:
    hmac_key: bytes
    private_key: RSAPrivateKey
    digest: str
    pending: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # Server-to-server notifications sent: (url, status code or -1).
    deliveries: list[tuple[str, int]] = field(default_factory=list)
    transaction_numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(60_000_000))
    call_numbers: itertools.count[int] = field(default_factory=lambda: itertools.count(70_000_000))
    # Captured transactions: NUMTRANS -> [NUMAPPEL, amount captured, amount refunded].
    captures: dict[str, list[Any]] = field(default_factory=dict)
    # Paybox Direct questions answered: (site, rank, day, NUMQUESTION) -> (request, answer).
    questions: dict[tuple[str, str, str, str], tuple[str, str]] = field(default_factory=dict)
    # Paybox Direct requests received, by the NUMTRANS they name (answered or not).
    direct_requests: list[str] = field(default_factory=list)
    # Refunds actually made: (NUMTRANS, amount) in order.
    refunds: list[tuple[str, int]] = field(default_factory=list)

    def sign(self, data: str) -> str:
        signature = self.private_key.sign(data.encode(), padding.PKCS1v15(), hash_algorithm(self.digest))
        return quote(base64.b64encode(signature).decode(), safe="")

    def answer(self, fields: dict[str, str], error: str) -> str:
        transaction = str(next(self.transaction_numbers)) if error != ERROR_ABANDONED else ""
        call = str(next(self.call_numbers)) if transaction else ""
        if error == ERROR_SUCCESS:
            self.captures[transaction] = [call, int(fields["PBX_TOTAL"]), 0]
        values = {
            "M": fields["PBX_TOTAL"],
            "R": fields["PBX_CMD"],
            "A": f"{secrets.randbelow(10**6):06d}" if error == ERROR_SUCCESS else "",
            "E": error,
            "S": transaction,
            "T": call,
        }
        parts = []
        for item in fields["PBX_RETOUR"].split(";"):
            name, _, code = item.partition(":")
            if code == "K":
                continue
            parts.append(f"{name}={quote(values.get(code, ''), safe='')}")
        data = "&".join(parts)
        return f"{data}&Sign={self.sign(data)}"


def direct_refund(state: SandboxState, pairs: list[tuple[str, str]]) -> str:
    """Answers one Paybox Direct refund question (form-encoded, like the real PSP)."""
    fields = dict(pairs)
    state.direct_requests.append(fields.get("NUMTRANS", ""))
    answer = {
        "NUMTRANS": "",
        "NUMAPPEL": "",
        "NUMQUESTION": fields.get("NUMQUESTION", ""),
        "SITE": fields.get("SITE", ""),
        "RANG": fields.get("RANG", ""),
        "AUTORISATION": "",
        "CODEREPONSE": "",
        "COMMENTAIRE": "",
    }

    def reply(code: str, comment: str) -> str:
        answer["CODEREPONSE"], answer["COMMENTAIRE"] = code, comment
        return urlencode(answer)

    if any(name not in fields for name in DIRECT_REQUIRED):
        return reply(ERROR_BAD_REQUEST, "missing field")
    signed = [(k, v) for k, v in pairs if k != "HMAC"]
    expected = hmac_signature(state.hmac_key, signed)
    if fields["HASH"] != "SHA512" or not hmac.compare_digest(expected, fields["HMAC"].upper()):
        return reply(DIRECT_ACCESS_REFUSED, "invalid HMAC")
    if fields["VERSION"] != DIRECT_VERSION or fields["TYPE"] != DIRECT_TYPE_REFUND:
        return reply(DIRECT_COHERENCE_ERROR, "unsupported question")
    request_text = urlencode(signed)
    day = fields["DATEQ"][:8]
    key = (fields["SITE"], fields["RANG"], day, fields["NUMQUESTION"])
    previous = state.questions.get(key)
    if previous is not None:
        if previous[0] == request_text:
            return previous[1]
        return reply(DIRECT_QUESTION_REUSED, "question number already used")
    capture = state.captures.get(fields["NUMTRANS"])
    if not fields["MONTANT"].isdigit() or fields["DEVISE"] != "978":
        text = reply(DIRECT_WRONG_AMOUNT, "invalid amount or currency")
    elif capture is None or capture[0] != fields["NUMAPPEL"]:
        text = reply(DIRECT_COHERENCE_ERROR, "unknown transaction")
    elif not 0 < int(fields["MONTANT"]) <= capture[1] - capture[2]:
        text = reply(DIRECT_WRONG_AMOUNT, "amount above what is left to refund")
    else:
        amount = int(fields["MONTANT"])
        capture[2] += amount
        state.refunds.append((fields["NUMTRANS"], amount))
        answer["NUMTRANS"] = str(next(state.transaction_numbers))
        answer["NUMAPPEL"] = str(next(state.call_numbers))
        answer["AUTORISATION"] = "XXXXXX"
        text = reply(ERROR_SUCCESS, "refund accepted")
    state.questions[key] = (request_text, text)
    return text


def _page(token: str, fields: dict[str, str]) -> str:
    amount = int(fields["PBX_TOTAL"]) / 100
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Sandbox PSP</title></head>
<body><h1>Sandbox payment</h1><p>Amount: {amount:.2f} EUR, reference {html.escape(fields["PBX_CMD"])}</p>
<form method="post" action="/pay"><input type="hidden" name="token" value="{token}">
<label>Card number <input name="card_number" autocomplete="cc-number"></label>
<label>Expiry <input name="expiry" placeholder="MM/YY"></label>
<label>CVV <input name="cvv"></label><button type="submit">Pay</button></form>
<form method="post" action="/cancel"><input type="hidden" name="token" value="{token}">
<button type="submit">Cancel</button></form>
<p>Test cards: {SUCCESS_CARD} (accepted), {REFUSED_CARD} (refused), {ABANDON_CARD} (abandoned).</p>
</body></html>"""


def create_sandbox_app(
    hmac_key: bytes, private_key: RSAPrivateKey | None = None, digest: str = "sha1"
) -> Starlette:
    state = SandboxState(hmac_key, private_key or generate_rsa_key(), digest)
    client = httpx.AsyncClient(timeout=5.0)

    async def payment_page(request: Request) -> Response:
        form = await request.form()
        pairs = [(str(k), str(v)) for k, v in form.multi_items()]
        fields = dict(pairs)
        if any(name not in fields for name in REQUIRED):
            return PlainTextResponse("missing PBX field", status_code=400)
        signed = [(k, v) for k, v in pairs if k != "PBX_HMAC"]
        expected = hmac_signature(state.hmac_key, signed)
        if fields["PBX_HASH"] != "SHA512" or not hmac.compare_digest(expected, fields["PBX_HMAC"].upper()):
            return PlainTextResponse("invalid HMAC", status_code=400)
        if not fields["PBX_TOTAL"].isdigit() or fields["PBX_DEVISE"] != "978":
            return PlainTextResponse("invalid amount or currency", status_code=400)
        token = secrets.token_urlsafe(16)
        state.pending[token] = pairs
        return HTMLResponse(_page(token, fields))

    async def finish(token: str, error: str) -> Response:
        pairs = state.pending.pop(token, None)
        if pairs is None:
            return PlainTextResponse("unknown or finished payment", status_code=404)
        fields = dict(pairs)
        answer = state.answer(fields, error)
        notify_url = fields.get("PBX_REPONDRE_A")
        if notify_url:
            try:
                response = await client.get(f"{notify_url}?{answer}")
                state.deliveries.append((notify_url, response.status_code))
            except httpx.HTTPError:
                state.deliveries.append((notify_url, -1))
        target = {
            ERROR_SUCCESS: fields.get("PBX_EFFECTUE"),
            ERROR_ABANDONED: fields.get("PBX_ANNULE"),
        }.get(error, fields.get("PBX_REFUSE"))
        if not target:
            return PlainTextResponse(answer)
        return RedirectResponse(f"{target}?{answer}", status_code=303)

    async def pay(request: Request) -> Response:
        form = await request.form()
        card = "".join(ch for ch in str(form.get("card_number", "")) if ch.isdigit())
        outcome = {SUCCESS_CARD: ERROR_SUCCESS, ABANDON_CARD: ERROR_ABANDONED}.get(card, ERROR_REFUSED)
        del card
        return await finish(str(form.get("token", "")), outcome)

    async def cancel(request: Request) -> Response:
        form = await request.form()
        return await finish(str(form.get("token", "")), ERROR_ABANDONED)

    async def direct(request: Request) -> Response:
        body = (await request.body()).decode("ascii", errors="replace")
        pairs = parse_qsl(body, keep_blank_values=True)
        return PlainTextResponse(direct_refund(state, pairs))

    async def pubkey(request: Request) -> Response:
        return Response(public_pem(state.private_key), media_type="application/x-pem-file")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = Starlette(
        routes=[
            Route("/cgi/MYchoix_pagepaiement.cgi", payment_page, methods=["POST"]),
            Route("/pay", pay, methods=["POST"]),
            Route("/cancel", cancel, methods=["POST"]),
            Route("/pubkey.pem", pubkey, methods=["GET"]),
            Route(DIRECT_PATH, direct, methods=["POST"]),
        ],
        lifespan=lifespan,
    )
    app.state.sandbox = state
    return app


def sandbox_state(app: Any) -> SandboxState:
    state: SandboxState = app.state.sandbox
    return state


async def _main() -> None:
    import uvicorn

    from services.billing.psp.keys import load_or_create_secret
    from services.billing.settings import BillingSettings
    from services.shared.logging import configure_logging

    settings = BillingSettings()
    configure_logging("psp-sandbox", settings.log_level)
    hmac_key = bytes.fromhex(settings.psp_hmac_key_hex.get_secret_value()) or load_or_create_secret(
        settings.psp_hmac_key_path
    )
    key = generate_rsa_key()
    settings.psp_public_key_path.parent.mkdir(parents=True, exist_ok=True)
    settings.psp_public_key_path.write_bytes(public_pem(key))
    app = create_sandbox_app(hmac_key, key, settings.psp_signature_digest)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.psp_sandbox_port, log_config=None, access_log=False
    )
    log.info("psp sandbox started", extra={"fields": {"port": settings.psp_sandbox_port}})
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(_main())
