"""The gateway application: `create_app(settings)`; resources live in the lifespan."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import grpc
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.trace import Span
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway.api.payments import router as psp_routes
from services.gateway.api.schemas import Problem
from services.gateway.api.v1 import router as api_v1
from services.gateway.clients import ServiceClients
from services.gateway.problems import (
    grpc_error_handler,
    http_error_handler,
    problem,
    validation_error_handler,
)
from services.gateway.settings import GatewaySettings
from services.gateway.web.contact import router as contact_pages
from services.gateway.web.credentials import router as credential_pages
from services.gateway.web.doctor import router as doctor_pages
from services.gateway.web.onboarding import router as onboarding_pages
from services.gateway.web.patient import router as patient_pages
from services.gateway.web.rights import router as rights_pages
from services.gateway.web.routes import router as web_pages
from services.gateway.web.security import DEFAULT_LIMITS, CsrfProtection, RateLimiter
from services.gateway.web.staff import router as staff_pages
from services.shared.settings import Environment, InternalAuthSettings
from workflows.settings import TemporalSettings
from workflows.temporal_client import connect

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    # Every API answer may carry personal data: never cached (API8).
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # Same-origin only: nothing leaks to other sites, and our own form posts keep their Origin.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Scripts and styles only from our own /static: no inline code can run.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'"
    ),
}


def create_app(
    settings: GatewaySettings | None = None,
    auth: InternalAuthSettings | None = None,
    temporal: TemporalSettings | None = None,
    connect_temporal: bool = True,
) -> FastAPI:
    settings = settings or GatewaySettings()
    auth = auth or InternalAuthSettings()
    temporal = temporal or TemporalSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = await connect(temporal) if connect_temporal else None
        clients = ServiceClients(settings, auth, client, temporal.case_task_queue)
        app.state.settings = settings
        app.state.temporal_namespace = temporal.namespace
        app.state.clients = clients
        app.state.csrf = CsrfProtection(settings.secret_key.encode() or secrets.token_bytes(32))
        app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
        try:
            yield
        finally:
            await clients.close()

    production = settings.environment is Environment.PRODUCTION
    app = FastAPI(
        title="Second opinion gateway",
        version="1",
        lifespan=lifespan,
        # API8: no interactive docs in production.
        docs_url=None if production else "/api/docs",
        redoc_url=None,
        openapi_url=None if production else "/api/openapi.json",
    )
    app.add_exception_handler(grpc.aio.AioRpcError, grpc_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:
            log.error("request failed", exc_info=exc, extra={"fields": {"path": request.url.path}})
            response = problem(
                503, "Service unavailable", "the service is temporarily unavailable, please retry"
            )
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> JSONResponse:
        """Every service's standard health check, as the dev stack and probes see it."""
        statuses: dict[str, str] = {}
        for name, target in (
            ("identity", settings.identity_target),
            ("dossier", settings.dossier_target),
            ("matching", settings.matching_target),
            ("billing", settings.billing_target),
            ("notifications", settings.notifications_target),
        ):
            statuses[name] = await _health(target)
        ready = all(status == "SERVING" for status in statuses.values())
        return JSONResponse({"ready": ready, "services": statuses}, status_code=200 if ready else 503)

    app.include_router(api_v1)
    app.include_router(psp_routes)
    app.include_router(web_pages)
    app.include_router(patient_pages)
    app.include_router(doctor_pages)
    app.include_router(staff_pages)
    app.include_router(onboarding_pages)
    app.include_router(rights_pages)
    app.include_router(contact_pages)
    app.include_router(credential_pages)

    def openapi() -> dict[str, object]:
        if app.openapi_schema:
            return app.openapi_schema
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
        schema["components"]["securitySchemes"] = {
            "session": {"type": "apiKey", "in": "cookie", "name": settings.session_cookie_name},
            "bearer": {"type": "http", "scheme": "bearer"},
        }
        schema["security"] = [{"session": []}, {"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount("/static", StaticFiles(directory=str(Path(__file__).parent / "web" / "static")), name="static")
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls="healthz,readyz", server_request_hook=redact_query_in_span
    )
    return app


# Span attributes the HTTP instrumentation fills with the request's URL or its query.
URL_ATTRIBUTES = ("http.url", "url.full", "http.target")


def redact_query_in_span(span: Span | None, scope: dict[str, Any]) -> None:
    """No query value reaches a trace: an emailed link's token, an invitation, whatever a
    later page adds. The names stay, for debugging. Runs once the server span holds the
    URL, before any route."""
    raw = scope.get("query_string") or b""
    if span is None or not raw or not span.is_recording():
        return
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    query = "&".join(f"{name}=REDACTED" for name, _ in pairs)
    span.set_attribute("url.query", query)
    recorded = getattr(span, "attributes", None) or {}
    for name in URL_ATTRIBUTES:
        value = recorded.get(name)
        if isinstance(value, str) and "?" in value:
            span.set_attribute(name, value.split("?", 1)[0] + "?" + query)


async def _health(target: str) -> str:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            response = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
