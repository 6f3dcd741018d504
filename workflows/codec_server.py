"""The codec server: lets an authenticated coordinator read the sealed payloads of the
case workflows in the Temporal Web UI (`python -m workflows.codec_server`).

It implements Temporal's remote codec protocol: `POST /encode` and `POST /decode` take
and return `{"payloads": [...]}` (the JSON form of temporal.api.common.v1.Payloads).
The browser calls it directly, so CORS admits the UI's origin only.

Authentication: a bearer token checked in constant time against the setting (or the
token file). The Temporal UI sends `Authorization: Bearer <user's access token>` when
its codec setting `passAccessToken` is on (SSO deployments); a UI without SSO (the dev
server) cannot add headers, so the token may also be the first path segment:
`--ui-codec-endpoint http://127.0.0.1:8234/<token>` (a capability URL: keep it local).
Nothing of the payloads is logged: counts and the namespace only.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from workflows.codec import EncryptionCodec, PayloadKeyError
from workflows.settings import CodecServerSettings, TemporalSettings
from workflows.temporal_client import payload_codec

log = logging.getLogger("workflows.codec_server")
MAX_BODY_BYTES = 8 * 1024 * 1024


def resolve_token(settings: CodecServerSettings) -> str:
    """The configured token, else the token file's (created 0600 when missing)."""
    configured = settings.bearer_token.get_secret_value()
    if configured:
        return configured
    path: Path = settings.token_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32) + "\n")
        except FileExistsError:
            pass
    token = path.read_text().strip()
    if len(token) < 16:
        raise SystemExit(f"the codec server token in {path} is too short (16 characters at least)")
    return token


def create_app(settings: CodecServerSettings, codec: EncryptionCodec, token: str) -> Starlette:
    expected = token.encode()

    def authorised(request: Request) -> bool:
        presented = request.path_params.get("token", "")
        header = request.headers.get("authorization", "")
        if not presented and header.lower().startswith("bearer "):
            presented = header[7:].strip()
        return bool(presented) and hmac.compare_digest(presented.encode(), expected)

    async def transcode(request: Request, decode: bool) -> Response:
        if not authorised(request):
            log.warning("codec request refused", extra={"fields": {"reason": "unauthenticated"}})
            return JSONResponse({"error": "unauthenticated"}, status_code=401)
        namespace = request.headers.get("x-namespace", "")
        if namespace and namespace not in settings.namespaces:
            return JSONResponse({"error": "namespace not served"}, status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "too large"}, status_code=413)
        try:
            payloads = json_format.Parse(body or b"{}", Payloads())
        except json_format.ParseError:
            return JSONResponse({"error": 'expected {"payloads": [...]}'}, status_code=400)
        if len(payloads.payloads) > settings.max_payloads:
            return JSONResponse({"error": "too many payloads"}, status_code=413)
        try:
            items = list(payloads.payloads)
            result = await (codec.decode(items) if decode else codec.encode(items))
        except (PayloadKeyError, InvalidTag, ValueError) as error:  # InvalidTag: tampered
            log.warning(
                "codec request failed",
                extra={"fields": {"namespace": namespace, "error": type(error).__name__}},
            )
            return JSONResponse({"error": "payloads could not be processed"}, status_code=400)
        log.info(
            "payloads decoded" if decode else "payloads encoded",
            extra={"fields": {"namespace": namespace, "count": len(result)}},
        )
        return Response(
            json_format.MessageToJson(Payloads(payloads=result), always_print_fields_with_no_presence=True),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def encode(request: Request) -> Response:
        return await transcode(request, decode=False)

    async def decode(request: Request) -> Response:
        return await transcode(request, decode=True)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/healthz", health, methods=["GET"]),
            Route("/encode", encode, methods=["POST"]),
            Route("/decode", decode, methods=["POST"]),
            Route("/{token}/encode", encode, methods=["POST"]),
            Route("/{token}/decode", decode, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=settings.allowed_origins,
                allow_methods=["POST", "OPTIONS"],
                allow_headers=["Content-Type", "Authorization", "X-Namespace"],
                allow_credentials=True,
                max_age=600,
            )
        ],
    )


def main() -> None:
    import uvicorn

    from services.shared.logging import configure_logging

    settings = CodecServerSettings()
    configure_logging("codec-server", settings.log_level)
    token = resolve_token(settings)
    app = create_app(settings, payload_codec(TemporalSettings()), token)
    log.info(
        "codec server listening",
        extra={
            "fields": {"host": settings.host, "port": settings.port, "token_file": str(settings.token_file)}
        },
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
