"""A local PSP speaking the Paybox System protocol, for the dev stack and the tests.

It checks the merchant's HMAC-SHA512 like the real PSP, shows a card page, and answers
with RSA-signed variables: to the browser (redirect to PBX_EFFECTUE / PBX_REFUSE /
PBX_ANNULE) and server to server (PBX_REPONDRE_A). Its key pair is generated at start;
the public key is served at /pubkey.pem and written where the billing service reads it.
Card numbers are only compared with the test cards, never kept or logged.

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
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from services.billing.psp.keys import generate_rsa_key, public_pem
from services.billing.psp.paybox import ERROR_ABANDONED, ERROR_SUCCESS, hash_algorithm, hmac_signature

log = logging.getLogger(__name__)

SUCCESS_CARD = "1111222233334444"
REFUSED_CARD = "4000000000000002"
ABANDON_CARD = "4000000000000259"
ERROR_REFUSED = "00105"
ERROR_BAD_REQUEST = "00004"
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

    def sign(self, data: str) -> str:
        signature = self.private_key.sign(data.encode(), padding.PKCS1v15(), hash_algorithm(self.digest))
        return quote(base64.b64encode(signature).decode(), safe="")

    def answer(self, fields: dict[str, str], error: str) -> str:
        transaction = str(next(self.transaction_numbers)) if error != ERROR_ABANDONED else ""
        values = {
            "M": fields["PBX_TOTAL"],
            "R": fields["PBX_CMD"],
            "A": f"{secrets.randbelow(10**6):06d}" if error == ERROR_SUCCESS else "",
            "E": error,
            "S": transaction,
        }
        parts = []
        for item in fields["PBX_RETOUR"].split(";"):
            name, _, code = item.partition(":")
            if code == "K":
                continue
            parts.append(f"{name}={quote(values.get(code, ''), safe='')}")
        data = "&".join(parts)
        return f"{data}&Sign={self.sign(data)}"


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
