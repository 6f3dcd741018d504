"""The PSP's calls: the server-to-server notification and the browser's return. The raw
signed query string goes to billing as received (billing checks the PSP's signature, the
amount and the reference); the gateway speaks with its own service identity."""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Literal

import grpc
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from secondopinion.billing.v1 import billing_pb2

from services.gateway.api.schemas import PROBLEM_RESPONSES
from services.gateway.dependencies import ClientsDep
from services.gateway.problems import problem

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/payments/psp", tags=["payments"], responses=PROBLEM_RESPONSES)
MAX_PAYLOAD = 4096


async def _forward(
    request: Request, clients: ClientsDep, kind: Any
) -> billing_pb2.HandlePspNotificationResponse | Response:
    raw = request.url.query
    if not raw or len(raw) > MAX_PAYLOAD:
        return problem(400, "Bad request", "a signed PSP query string is expected")
    try:
        handled: billing_pb2.HandlePspNotificationResponse = await clients.billing.HandlePspNotification(
            billing_pb2.HandlePspNotificationRequest(
                idempotency_key=hashlib.sha256(raw.encode()).hexdigest(), kind=kind, raw_payload=raw
            ),
            metadata=clients.as_gateway(),
        )
        return handled
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.FAILED_PRECONDITION):  # fmt: skip
            log.warning("psp message refused", extra={"fields": {"status": error.code().name}})
            return problem(400, "Bad request", error.details() or "refused")
        raise


@router.get(
    "/notification",
    summary="PSP server-to-server payment notification (IPN)",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {}}, "description": "Handled"}},
)
async def psp_notification(request: Request, clients: ClientsDep) -> Response:
    from services.gateway.web.patient import after_psp_message

    handled = await _forward(request, clients, billing_pb2.PSP_MESSAGE_KIND_NOTIFICATION)
    if isinstance(handled, Response):
        return handled
    await after_psp_message(clients, handled)
    return PlainTextResponse("ok")


@router.get(
    "/return/{outcome}",
    summary="The browser's return from the PSP's payment page",
    status_code=303,
    response_class=RedirectResponse,
    responses={303: {"description": "Back to the request's payment page"}},
)
async def psp_return(
    outcome: Literal["accepted", "refused", "cancelled", "pending"], request: Request, clients: ClientsDep
) -> Response:
    """The outcome in the path is only a hint: the signed variables decide."""
    from services.gateway.web.patient import after_psp_message

    handled = await _forward(request, clients, billing_pb2.PSP_MESSAGE_KIND_RETURN)
    if isinstance(handled, Response):
        return handled
    await after_psp_message(clients, handled)
    status = {
        billing_pb2.PAYMENT_STATUS_CAPTURED: "accepted",
        billing_pb2.PAYMENT_STATUS_REFUSED: "refused",
        billing_pb2.PAYMENT_STATUS_ABANDONED: "cancelled",
    }.get(handled.payment_attempt.status, "pending")
    return RedirectResponse(f"/cases/{handled.order.case_id}/pay?payment={status}", status_code=303)
