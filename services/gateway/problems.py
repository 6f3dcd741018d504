"""RFC 9457 problem details for every error; gRPC statuses mapped to HTTP statuses."""

from __future__ import annotations

import grpc
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"

GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}
# Upstream failures the person can do nothing about: a retryable 503, never a 500.
UNAVAILABLE_DETAIL = "the service is temporarily unavailable, please retry"


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def grpc_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, grpc.aio.AioRpcError)
    status = GRPC_TO_HTTP.get(exc.code())
    if status is None:
        return problem(503, "Service unavailable", UNAVAILABLE_DETAIL, {"Retry-After": "5"})
    headers = {"Retry-After": "60"} if status == 429 else None
    # Service messages are written to be shown (no personal data in them).
    return problem(status, exc.code().name.replace("_", " ").capitalize(), exc.details() or "", headers)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = ", ".join(".".join(str(part) for part in error["loc"]) for error in exc.errors())
    return problem(422, "Invalid request", f"invalid or missing fields: {fields}")


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return problem(exc.status_code, str(exc.detail), str(exc.detail), dict(exc.headers or {}))
