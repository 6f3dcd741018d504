"""Data-subject rights in the portals (issue 10, PC §14, GDPR-01 to GDPR-08).

- The person's "Mes données / My data" page: their rights requests (status, deadline and
  its extension, the answer) and a form for each right, recorded with the PORTAL channel
  and the identity verified by the session (a fresh code before an erasure). An access or
  portability answer is downloaded there (`/privacy/requests/{id}/export`): after a fresh
  code, streamed from the dossier as the person (who alone may read it; the dossier logs
  it), never cached nor held whole here.
- The DPO's desk: open requests by deadline (overdue, at risk), one request, extending its
  deadline, recording the answer or carrying it out, legal holds, the Temporal UI link.

Thin: identity holds the records and every rule; the rights-request workflow keeps the
deadline, tells the person of an extension and reminds the DPO. The gateway starts that
workflow when a request is filed here and goes through its updates when it runs; when it
cannot be reached the record is still changed in identity and the page says so.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Form
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2, lifecycle_pb2
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from services.gateway.clients import Caller, ServiceClients
from services.gateway.dependencies import ts_or_none
from services.gateway.web.page import ClientsDep, Page, PageDep, fmt_date, http_status, new_key
from services.gateway.web.patient import content_disposition
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code
from workflows.lifecycle.models import (
    REQUEST_NOT_LOADED,
    AnswerInput,
    ExtendInput,
    RightsRequestInput,
    RightsRequestView,
)
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.workflows import retention_workflow_id, rights_request_workflow_id

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
Csrf = Annotated[str, Form()]

# The rights a person exercises from the form (erasure has its own page, behind a fresh code).
PORTAL_KINDS = (
    "access",
    "rectification",
    "restriction",
    "portability",
    "objection",
    "post_mortem_directives",
    "designate_doctor_for_indirect_access",
    "complaint",
)
ERASURE = "erasure"
DESIGNATION = "designate_doctor_for_indirect_access"
OPEN_STATUSES = (
    lifecycle_pb2.RIGHTS_REQUEST_STATUS_RECEIVED,
    lifecycle_pb2.RIGHTS_REQUEST_STATUS_IN_PROGRESS,
    lifecycle_pb2.RIGHTS_REQUEST_STATUS_EXTENDED,
)
# Answered, or answered for now (an erasure postponed while a case is in progress): no
# deadline runs any more.
ANSWERED_STATUSES = ("answered", "postponed")
OUTCOMES = ("granted", "partially_granted_restricted", "refused", "identity_not_verified")
EXTENSION_REASONS = ("complexity", "number_of_requests")
HOLD_REASONS = ("litigation", "judicial_request", "regulator_inquiry", "indemnity_dispute")
# Carried out by the workflow (export, restriction, erasure), then answered by it.
FULFILLABLE = ("access", "portability", "erasure", "restriction")
EXPORT_KINDS = ("access", "portability")
# The workflow reminds the DPO 7 days before the deadline: the desk flags the same window.
AT_RISK_WITHIN = timedelta(days=7)
MAX_DETAILS = 10_000
MAX_REFERENCE = 128
PAGE_SIZE = 200
# A page waits this long for the workflow to take an update, then says it is unreachable.
UPDATE_RPC_TIMEOUT = timedelta(seconds=15)
# The answer archive as the browser gets it: a download, never rendered, never cached.
ANSWER_MEDIA = {
    dossier_pb2.DOCUMENT_CONTENT_TYPE_ZIP: "application/zip",
    dossier_pb2.DOCUMENT_CONTENT_TYPE_PDF: "application/pdf",
}


# --- views ------------------------------------------------------------------------------------


def extension_months(request: lifecycle_pb2.RightsRequest) -> int:
    """Months added to the one-month deadline (identity stores due = received + 1 + n)."""
    received, due = ts_or_none(request, "received_at"), ts_or_none(request, "due_at")
    if received is None or due is None or not request.HasField("extended_at"):
        return 0
    return max(0, (due.year - received.year) * 12 + due.month - received.month - 1)


def request_view(request: lifecycle_pb2.RightsRequest, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    due = ts_or_none(request, "due_at")
    status = pb_enum_to_code(lifecycle_pb2.RightsRequestStatus, request.status)
    open_ = status not in ANSWERED_STATUSES
    return {
        "request_id": request.request_id,
        "reference": request.request_id[:8].upper(),
        "subject_id": request.subject_id,
        "kind": pb_enum_to_code(lifecycle_pb2.RightsRequestKind, request.kind),
        "channel": pb_enum_to_code(lifecycle_pb2.RightsRequestChannel, request.channel),
        "verification": pb_enum_to_code(
            lifecycle_pb2.IdentityVerificationMethod, request.identity_verification
        ),
        "status": status,
        "received_at": fmt_date(ts_or_none(request, "received_at"), with_time=True),
        "due_at": fmt_date(due),
        "extended_at": fmt_date(ts_or_none(request, "extended_at")),
        "extension_months": extension_months(request),
        "answered_at": fmt_date(ts_or_none(request, "answered_at"), with_time=True),
        "outcome": pb_enum_to_code(lifecycle_pb2.RightsRequestOutcome, request.outcome)
        if request.outcome
        else "",
        "answer_document_id": request.answer_document_id,
        "recorded_by_staff": bool(request.recorded_by_account_id),
        "details": request.details,
        "doctor_rpps": request.designated_doctor_rpps_number,
        "doctor_name": request.designated_doctor_display_name,
        "open": open_,
        "overdue": open_ and due is not None and due < now,
        "at_risk": open_ and due is not None and now <= due < now + AT_RISK_WITHIN,
    }


def hold_view(hold: lifecycle_pb2.LegalHold) -> dict[str, Any]:
    return {
        "legal_hold_id": hold.legal_hold_id,
        "subject_id": hold.subject_id,
        "reason": pb_enum_to_code(lifecycle_pb2.LegalHoldReason, hold.reason),
        "reference": hold.external_reference,
        "placed_at": fmt_date(ts_or_none(hold, "placed_at"), with_time=True),
        "released_at": fmt_date(ts_or_none(hold, "released_at"), with_time=True),
    }


# --- the rights-request workflow ----------------------------------------------------------------


class WorkflowRefused(Exception):
    """The workflow's validator refused the change (its message is shown to the DPO)."""


class WorkflowBusy(Exception):
    """The workflow runs but did not take the update in time (its worker is down?)."""


def lifecycle_task_queue() -> str:
    return LifecycleSettings().task_queue


async def start_workflow(clients: ServiceClients, request_id: str) -> bool:
    """Starts the request's workflow (deadline, reminders, extension notices); the running
    one is kept. False when Temporal cannot be reached: the record stays in identity."""
    if clients.temporal is None:
        return False
    try:
        # Signal-with-start: a workflow already running keeps its run and re-reads the
        # request at once (the DPO may just have changed it in identity).
        await clients.temporal.start_workflow(
            "RightsRequestWorkflow",
            RightsRequestInput(request_id=request_id),
            id=rights_request_workflow_id(request_id),
            task_queue=lifecycle_task_queue(),
            start_signal="changed",
        )
    except RPCError as error:
        log.warning(
            "rights-request workflow not started",
            extra={"fields": {"request_id": request_id, "status": str(error.status)}},
        )
        return False
    return True


async def workflow_update(
    clients: ServiceClients, request_id: str, name: str, payload: Any, result_type: type | None
) -> bool:
    """Runs an update of the request's workflow; False when no workflow runs for it."""
    if clients.temporal is None:
        return False
    handle = clients.temporal.get_workflow_handle(rights_request_workflow_id(request_id))
    args = () if payload is None else (payload,)
    try:
        if result_type is None:
            # Long work (an export, an erasure): accepted now, carried out by the workflow.
            await handle.start_update(
                name, *args, wait_for_stage=WorkflowUpdateStage.ACCEPTED, rpc_timeout=UPDATE_RPC_TIMEOUT
            )
        else:
            await handle.execute_update(name, *args, result_type=result_type, rpc_timeout=UPDATE_RPC_TIMEOUT)
    except WorkflowUpdateRPCTimeoutOrCancelledError as error:
        raise WorkflowBusy(name) from error
    except WorkflowUpdateFailedError as error:
        cause = error.cause
        if isinstance(cause, ApplicationError) and cause.type == REQUEST_NOT_LOADED:
            raise WorkflowBusy(name) from error  # just started: it has not read the request yet
        raise WorkflowRefused(str(getattr(cause, "message", "") or cause or error)) from error
    except RPCError as error:
        if error.status is not RPCStatusCode.NOT_FOUND:
            log.warning(
                "rights-request workflow update failed",
                extra={"fields": {"request_id": request_id, "update": name, "status": str(error.status)}},
            )
        return False
    return True


async def poke_retention(clients: ServiceClients, subject_id: str) -> None:
    """A hold placed or released: the subject's retention workflow re-reads its clock now."""
    if clients.temporal is None:
        return
    # No retention workflow yet: the daily sweep starts it when a clock runs out.
    with contextlib.suppress(RPCError):
        await clients.temporal.get_workflow_handle(retention_workflow_id(subject_id)).signal("poke")


def temporal_link(p: Page, request_id: str) -> str:
    settings = p.request.app.state.settings
    namespace = p.request.app.state.temporal_namespace
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(namespace, safe='')}"
        f"/workflows/{quote(rights_request_workflow_id(request_id), safe='')}"
    )


# --- the person's side --------------------------------------------------------------------------


def require_person(p: Page) -> Caller | Response:
    """The person (or legal representative) behind a patient account."""
    if p.caller is None:
        return p.to_login()
    if p.caller.role != "patient":
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


async def _own_requests(clients: ServiceClients, caller: Caller) -> list[dict[str, Any]]:
    listed = await clients.identity.ListRightsRequests(
        identity_pb2.ListRightsRequestsRequest(subject_id=caller.account_id, page_size=PAGE_SIZE),
        metadata=caller.metadata,
    )
    now = datetime.now(UTC)
    views = [request_view(r, now) for r in listed.rights_requests]
    # Open ones first (closest deadline first, as identity lists them), then the answered.
    return [v for v in views if v["open"]] + [v for v in views if not v["open"]]


def _privacy_page(p: Page, requests: list[dict[str, Any]], status: int = 200, **form: Any) -> Response:
    return p.render(
        "privacy.html",
        status=status,
        requests=requests,
        kinds=PORTAL_KINDS,
        form_key=new_key(),
        form=form,
        stepped_up=bool(p.caller and p.caller.stepped_up),
        filed=p.request.query_params.get("filed") == "1",
        error=form.get("error", ""),
    )


@router.get("/privacy", response_class=HTMLResponse)
async def privacy_page(p: PageDep, clients: ClientsDep) -> Response:
    """GDPR-01 to GDPR-08: the person's requests and a form for each right."""
    caller = require_person(p)
    if isinstance(caller, Response):
        return caller
    try:
        requests = await _own_requests(clients, caller)
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return _privacy_page(p, requests)


@router.get("/privacy/erasure", response_class=HTMLResponse)
async def erasure_page(p: PageDep) -> Response:
    """GDPR-03: an erasure is filed only after a fresh code (as the report is read)."""
    caller = require_person(p)
    if isinstance(caller, Response):
        return caller
    if not caller.stepped_up:
        return p.redirect(f"/step-up?next={quote('/privacy/erasure', safe='')}")
    return p.render("privacy_erasure.html", form_key=new_key(), form={})


async def _file(
    p: Page,
    clients: ServiceClients,
    caller: Caller,
    kind: str,
    form_key: str,
    details: str,
    doctor_rpps: str,
    doctor_name: str,
) -> Response:
    request = identity_pb2.RecordRightsRequestRequest(
        idempotency_key=f"rights:{caller.account_id}:{form_key}",
        subject_id=caller.account_id,
        kind=code_to_pb_enum(lifecycle_pb2.RightsRequestKind, kind),
        channel=lifecycle_pb2.RIGHTS_REQUEST_CHANNEL_PORTAL,
        identity_verification=lifecycle_pb2.IDENTITY_VERIFICATION_METHOD_STEP_UP
        if caller.stepped_up
        else lifecycle_pb2.IDENTITY_VERIFICATION_METHOD_AUTHENTICATED_SESSION,
        details=details,
    )
    if kind == DESIGNATION:
        request.designated_doctor_rpps_number = doctor_rpps
        request.designated_doctor_display_name = doctor_name
    try:
        recorded = await clients.identity.RecordRightsRequest(request, metadata=caller.metadata)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return await _refiled(p, clients, caller, kind, details, doctor_rpps, doctor_name, error)
        return p.service_error(error)
    request_id = recorded.rights_request.request_id
    await start_workflow(clients, request_id)
    return p.redirect(f"/privacy/requests/{request_id}?filed=1")


async def _refiled(
    p: Page,
    clients: ServiceClients,
    caller: Caller,
    kind: str,
    details: str,
    doctor_rpps: str,
    doctor_name: str,
    error: grpc.aio.AioRpcError,
) -> Response:
    """The form again, as typed, with identity's reason (a bad RPPS number, too long...)."""
    message = p.t("form_error", detail=error.details() or "")
    if kind == ERASURE:
        form = {"details": details}
        return p.render("privacy_erasure.html", status=400, form_key=new_key(), form=form, error=message)
    requests = await _own_requests(clients, caller)
    return _privacy_page(
        p,
        requests,
        status=400,
        kind=kind,
        details=details,
        doctor_rpps=doctor_rpps,
        doctor_name=doctor_name,
        error=message,
    )


@router.post("/privacy/requests")
async def file_request(
    p: PageDep,
    clients: ClientsDep,
    kind: Annotated[str, Form(max_length=64)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    details: Annotated[str, Form()] = "",
    doctor_rpps: Annotated[str, Form(max_length=32)] = "",
    doctor_name: Annotated[str, Form(max_length=400)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Recorded with the PORTAL channel and the session's verified identity (GDPR-07)."""
    caller = p.posted_by(require_person(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if kind == ERASURE and not caller.stepped_up:
        return p.redirect(f"/step-up?next={quote('/privacy/erasure', safe='')}")
    if kind not in (*PORTAL_KINDS, ERASURE):
        return p.message(400, error=p.t("form_error", detail=p.t("rights_choose_kind")))
    if len(form_key) < 8:
        return p.message(400, error=p.t("form_error", detail=p.t("rights_reload_form")))
    if len(details) > MAX_DETAILS:
        return p.message(400, error=p.t("form_error", detail=p.t("rights_details_too_long", n=MAX_DETAILS)))
    if kind == DESIGNATION and not (doctor_rpps.strip() and doctor_name.strip()):
        requests = await _own_requests(clients, caller)
        return _privacy_page(
            p,
            requests,
            status=400,
            kind=kind,
            details=details,
            doctor_rpps=doctor_rpps,
            doctor_name=doctor_name,
            error=p.t("form_error", detail=p.t("rights_doctor_needed")),
        )
    return await _file(
        p, clients, caller, kind, form_key, details.strip(), doctor_rpps.strip(), doctor_name.strip()
    )


@router.get("/privacy/requests/{request_id}", response_class=HTMLResponse)
async def own_request_page(request_id: str, p: PageDep, clients: ClientsDep) -> Response:
    """One request: its status, deadline and extension, the answer (the extension email links here)."""
    caller = require_person(p)
    if isinstance(caller, Response):
        return caller
    try:
        found = await clients.identity.GetRightsRequest(
            identity_pb2.GetRightsRequestRequest(request_id=request_id), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    view = request_view(found.rights_request)
    if found.rights_request.subject_id != caller.account_id:
        return p.not_found()  # identity already refuses; never shown to another person
    return p.render(
        "privacy_request.html",
        r=view,
        export_kind=view["kind"] in EXPORT_KINDS,
        export_url=export_path(request_id) if view["answer_document_id"] else "",
        stepped_up=caller.stepped_up,
        filed=p.request.query_params.get("filed") == "1",
    )


def export_path(request_id: str) -> str:
    return f"/privacy/requests/{quote(request_id, safe='')}/export"


@router.get("/privacy/requests/{request_id}/export")
async def download_export(request_id: str, p: PageDep, clients: ClientsDep) -> Response:
    """GDPR-01 / GDPR-05: the archive answering the person's access or portability request.
    A fresh code first (ACC-06), as for a report; the request must be theirs; the dossier
    checks the document is theirs and logs the download (SEC-01). The first stream message
    is read before answering, so a refusal is a proper page, never a broken download; the
    rest streams through chunk by chunk."""
    caller = require_person(p)
    if isinstance(caller, Response):
        return caller
    if not caller.stepped_up:
        return p.redirect(f"/step-up?next={quote(export_path(request_id), safe='')}")
    try:
        found = await clients.identity.GetRightsRequest(
            identity_pb2.GetRightsRequestRequest(request_id=request_id), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    request = found.rights_request
    if request.subject_id != caller.account_id or not request.answer_document_id:
        return p.not_found()
    call = clients.dossier.DownloadDocument(
        dossier_pb2.DownloadDocumentRequest(document_id=request.answer_document_id),
        metadata=caller.metadata,
        timeout=clients.transfer_timeout,
    )
    try:
        first: Any = await call.read()
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return p.message(409, error=p.t("rights_export_not_ready"))  # its malware scan is pending
        return p.not_found() if _is_missing(error) else p.service_error(error)
    if first is grpc.aio.EOF or first.WhichOneof("part") != "metadata":
        call.cancel()
        return p.not_found()
    meta = first.metadata
    if meta.purpose != dossier_pb2.DOCUMENT_PURPOSE_RIGHTS_REQUEST_ANSWER:
        call.cancel()
        return p.not_found()  # this link serves rights-request answers only

    async def body() -> Any:
        async for message in call:
            yield message.chunk

    response = StreamingResponse(
        body(),
        media_type=ANSWER_MEDIA.get(meta.content_type, "application/octet-stream"),
        headers={
            "Content-Disposition": content_disposition("attachment", meta.file_name),
            "Content-Length": str(meta.size_bytes),
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; sandbox",
        },
    )
    return p.finish(response)


def _is_missing(error: grpc.aio.AioRpcError) -> bool:
    return error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


@router.post("/privacy/erasure")
async def file_erasure(
    p: PageDep,
    clients: ClientsDep,
    form_key: Annotated[str, Form(max_length=64)] = "",
    details: Annotated[str, Form()] = "",
    confirm: Annotated[str, Form(max_length=3)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """GDPR-03: filed after a fresh code; the answer says what the law makes us keep."""
    caller = p.posted_by(require_person(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if not caller.stepped_up:
        return p.redirect(f"/step-up?next={quote('/privacy/erasure', safe='')}")
    if confirm != "yes" or len(form_key) < 8 or len(details) > MAX_DETAILS:
        detail = p.t("confirm_needed") if confirm != "yes" else p.t("rights_details_too_long", n=MAX_DETAILS)
        return p.render(
            "privacy_erasure.html",
            status=400,
            form_key=new_key(),
            form={"details": details[:MAX_DETAILS]},
            error=p.t("form_error", detail=detail),
        )
    return await _file(p, clients, caller, ERASURE, form_key, details.strip(), "", "")


# --- the DPO's desk -----------------------------------------------------------------------------


def require_dpo(p: Page) -> Caller | Response:
    if p.caller is None:
        return p.to_login()
    if p.caller.role != "dpo":
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


@router.get("/dpo", response_class=HTMLResponse)
async def dpo_desk(p: PageDep, clients: ClientsDep) -> Response:
    """Open requests, closest deadline first, overdue and at-risk flagged; active holds."""
    caller = require_dpo(p)
    if isinstance(caller, Response):
        return caller
    try:
        listed = await clients.identity.ListRightsRequests(
            identity_pb2.ListRightsRequestsRequest(statuses=OPEN_STATUSES, page_size=PAGE_SIZE),
            metadata=caller.metadata,
        )
        holds = await clients.identity.ListLegalHolds(
            identity_pb2.ListLegalHoldsRequest(page_size=PAGE_SIZE), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    now = datetime.now(UTC)
    requests = [
        {**request_view(r, now), "temporal_url": temporal_link(p, r.request_id)}
        for r in listed.rights_requests
    ]
    return p.render(
        "dpo_desk.html",
        requests=requests,
        overdue=sum(1 for v in requests if v["overdue"]),
        at_risk=sum(1 for v in requests if v["at_risk"]),
        holds=[hold_view(h) for h in holds.legal_holds],
        hold_reasons=HOLD_REASONS,
        form_key=new_key(),
        done=_done(p),
    )


DONE_NOTICES = {
    "extended": "rights_done_extended",
    "extended_no_workflow": "rights_done_extended_no_workflow",
    "answered": "rights_done_answered",
    "fulfilling": "rights_done_fulfilling",
    "held": "rights_done_held",
    "released": "rights_done_released",
    "provisional": "rights_done_provisional",
}


def _done(p: Page) -> str:
    key = DONE_NOTICES.get(p.request.query_params.get("done", ""))
    return p.t(key) if key else ""


@dataclass(frozen=True, slots=True)
class Loaded:
    request: lifecycle_pb2.RightsRequest
    view: dict[str, Any]


async def _load(p: Page, clients: ServiceClients, caller: Caller, request_id: str) -> Loaded | Response:
    try:
        found = await clients.identity.GetRightsRequest(
            identity_pb2.GetRightsRequestRequest(request_id=request_id), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    return Loaded(found.rights_request, request_view(found.rights_request))


async def _open_request(
    p: Page, clients: ServiceClients, caller: Caller, request_id: str
) -> Loaded | Response:
    """The request the DPO acts on; its page with a 409 when it is answered already."""
    loaded = await _load(p, clients, caller, request_id)
    if isinstance(loaded, Response) or loaded.view["open"]:
        return loaded
    return await _request_page(p, clients, caller, request_id, 409, p.t("rights_already_answered"))


async def _update(
    p: Page, clients: ServiceClients, caller: Caller, request_id: str, name: str, payload: Any, result: Any
) -> Any:
    """A desk action through the request's workflow: its result (falsy when no workflow runs
    for the request), or the request's page saying why the workflow refused or is unreachable."""
    try:
        return await workflow_update(clients, request_id, name, payload, result)
    except WorkflowRefused as refused:
        return await _request_page(
            p, clients, caller, request_id, 409, p.t("form_error", detail=str(refused))
        )
    except WorkflowBusy:
        return await _request_page(p, clients, caller, request_id, 503, p.t("rights_workflow_unreachable"))


@router.get("/dpo/rights-requests/{request_id}", response_class=HTMLResponse)
async def dpo_request_page(request_id: str, p: PageDep, clients: ClientsDep) -> Response:
    """One request (the DPO's reminder email links here)."""
    caller = require_dpo(p)
    if isinstance(caller, Response):
        return caller
    return await _request_page(p, clients, caller, request_id)


async def _request_page(
    p: Page, clients: ServiceClients, caller: Caller, request_id: str, status: int = 200, error: str = ""
) -> Response:
    loaded = await _load(p, clients, caller, request_id)
    if isinstance(loaded, Response):
        return loaded
    view = loaded.view
    try:
        holds = await clients.identity.ListLegalHolds(
            identity_pb2.ListLegalHoldsRequest(
                subject_id=view["subject_id"], include_released=True, page_size=PAGE_SIZE
            ),
            metadata=caller.metadata,
        )
        account = await clients.identity.GetAccount(
            identity_pb2.GetAccountRequest(account_id=view["subject_id"]), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as failure:
        if failure.code() != grpc.StatusCode.NOT_FOUND:
            return p.service_error(failure)
        holds, account = identity_pb2.ListLegalHoldsResponse(), identity_pb2.GetAccountResponse()
    return p.render(
        "dpo_request.html",
        status=status,
        error=error,
        r=view,
        subject_email=account.account.email,
        holds=[hold_view(h) for h in holds.legal_holds],
        temporal_url=temporal_link(p, request_id),
        temporal_connected=clients.temporal is not None,
        can_answer=view["open"],
        can_extend=view["open"] and view["extension_months"] < 2,
        months_left=2 - view["extension_months"],
        can_fulfil=view["open"] and view["kind"] in FULFILLABLE,
        outcomes=OUTCOMES,
        extension_reasons=EXTENSION_REASONS,
        hold_reasons=HOLD_REASONS,
        form_key=new_key(),
        done=_done(p),
    )


@router.post("/dpo/rights-requests/{request_id}/extend")
async def extend_request(
    request_id: str,
    p: PageDep,
    clients: ClientsDep,
    months: Annotated[str, Form(max_length=2)] = "",
    reason: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Up to two more months (GDPR art. 12.3); the workflow tells the person."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if months not in ("1", "2") or reason not in EXTENSION_REASONS:
        return p.message(400, error=p.t("form_error", detail=p.t("rights_extension_invalid")))
    loaded = await _open_request(p, clients, caller, request_id)
    if isinstance(loaded, Response):
        return loaded
    told = await _update(
        p,
        clients,
        caller,
        request_id,
        "extend",
        ExtendInput(reason=reason.upper(), months=int(months)),
        datetime,
    )
    if isinstance(told, Response):
        return told
    if not told:
        # No workflow runs for it: identity records the extension, then the workflow is
        # started, reads it and tells the person (its first notice).
        current = loaded.view["extension_months"]
        try:
            await clients.identity.ExtendRightsRequestDeadline(
                identity_pb2.ExtendRightsRequestDeadlineRequest(
                    idempotency_key=f"extend:{request_id}:{current}+{months}",
                    request_id=request_id,
                    reason=code_to_pb_enum(identity_pb2.DeadlineExtensionReason, reason),
                    extension_months=int(months),
                ),
                metadata=caller.metadata,
            )
        except grpc.aio.AioRpcError as error:
            return await _action_error(p, clients, caller, request_id, error)
        told = await start_workflow(clients, request_id)
    done = "extended" if told else "extended_no_workflow"
    return p.redirect(f"/dpo/rights-requests/{request_id}?done={done}")


async def _action_error(
    p: Page, clients: ServiceClients, caller: Caller, request_id: str, error: grpc.aio.AioRpcError
) -> Response:
    if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
        status = 400 if error.code() == grpc.StatusCode.INVALID_ARGUMENT else 409
        detail = p.t("form_error", detail=error.details() or "")
        return await _request_page(p, clients, caller, request_id, status, detail)
    return p.service_error(error)


@router.post("/dpo/rights-requests/{request_id}/answer")
async def answer_request(
    request_id: str,
    p: PageDep,
    clients: ClientsDep,
    outcome: Annotated[str, Form(max_length=64)] = "",
    answer_document_id: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Records the answer given (the workflow then stops its reminders)."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if outcome not in OUTCOMES:
        return p.message(400, error=p.t("form_error", detail=p.t("rights_outcome_invalid")))
    loaded = await _open_request(p, clients, caller, request_id)
    if isinstance(loaded, Response):
        return loaded
    document_id = answer_document_id.strip()
    answer = AnswerInput(outcome=outcome.upper(), answer_document_id=document_id)
    answered = await _update(p, clients, caller, request_id, "answer", answer, RightsRequestView)
    if isinstance(answered, Response):
        return answered
    if not answered:
        try:
            await clients.identity.RecordRightsRequestAnswer(
                identity_pb2.RecordRightsRequestAnswerRequest(
                    idempotency_key=f"answer:{request_id}",
                    request_id=request_id,
                    outcome=code_to_pb_enum(lifecycle_pb2.RightsRequestOutcome, outcome),
                    answer_document_id=document_id,
                ),
                metadata=caller.metadata,
            )
        except grpc.aio.AioRpcError as error:
            return await _action_error(p, clients, caller, request_id, error)
        # A workflow started now reads the answer and moves on to the record's retention.
        await start_workflow(clients, request_id)
    return p.redirect(f"/dpo/rights-requests/{request_id}?done=answered")


@router.post("/dpo/rights-requests/{request_id}/fulfil")
async def fulfil_request(request_id: str, p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    """Access and portability: the FHIR export; restriction; erasure (what the law keeps is
    restricted and the answer says so). Carried out and answered by the workflow."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    loaded = await _open_request(p, clients, caller, request_id)
    if isinstance(loaded, Response):
        return loaded
    if loaded.view["kind"] not in FULFILLABLE:
        return await _request_page(p, clients, caller, request_id, 409, p.t("rights_not_fulfillable"))
    accepted = await _update(p, clients, caller, request_id, "fulfil", None, None)
    if isinstance(accepted, Response):
        return accepted
    if not accepted:
        started = await start_workflow(clients, request_id)
        message = p.t("rights_workflow_started_retry") if started else p.t("rights_workflow_unreachable")
        return await _request_page(p, clients, caller, request_id, 503, message)
    return p.redirect(f"/dpo/rights-requests/{request_id}?done=fulfilling")


@router.post("/dpo/legal-holds")
async def place_hold(
    p: PageDep,
    clients: ClientsDep,
    subject_id: Annotated[str, Form(max_length=64)] = "",
    reason: Annotated[str, Form(max_length=64)] = "",
    external_reference: Annotated[str, Form(max_length=MAX_REFERENCE)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    back_to: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Every retention clock of the subject stops while the hold is in force (RET-02)."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    subject_id = subject_id.strip()
    if not subject_id or reason not in HOLD_REASONS or len(form_key) < 8:
        return p.message(400, error=p.t("form_error", detail=p.t("hold_invalid")))
    try:
        await clients.identity.PlaceLegalHold(
            identity_pb2.PlaceLegalHoldRequest(
                idempotency_key=f"hold:{form_key}",
                subject_id=subject_id,
                reason=code_to_pb_enum(lifecycle_pb2.LegalHoldReason, reason),
                external_reference=external_reference.strip(),
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return p.message(404, error=p.t("hold_subject_not_found"))
        return p.service_error(error)
    await poke_retention(clients, subject_id)
    return p.redirect(_back(back_to, "held"))


@router.post("/dpo/provisional-credentials")
async def issue_provisional_credentials(
    p: PageDep,
    clients: ClientsDep,
    account_id: Annotated[str, Form(max_length=64)] = "",
    new_phone_number: Annotated[str, Form(max_length=32)] = "",
    identity_checked: Annotated[str, Form(max_length=8)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """ACC-08/ACC-09 at the person's request by email to the DPO: the password is
    deactivated and a link plus an SMS code set a new one; a new number when the phone was
    lost or stolen with the credentials (identity checks the number and who may set it)."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    account_id = account_id.strip()
    if not account_id or len(form_key) < 8:
        return p.message(400, error=p.t("form_error", detail=p.t("dpo_account_id")))
    if identity_checked != "yes":
        return p.message(400, error=p.t("dpo_identity_not_checked"))
    try:
        await clients.identity.IssueProvisionalCredentials(
            identity_pb2.IssueProvisionalCredentialsRequest(
                idempotency_key=f"provisional:{form_key}",
                account_id=account_id,
                new_phone_number=new_phone_number.strip(),
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return p.message(404, error=p.t("dpo_account_not_found"))
        if error.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.PERMISSION_DENIED,
        ):
            return p.message(http_status(error), error=p.t("form_error", detail=error.details() or ""))
        return p.service_error(error)
    return p.redirect("/dpo?done=provisional#credentials")


def _back(request_id: str, done: str) -> str:
    """Back to the request the form was on (a bare id), or to the desk."""
    clean = request_id.strip()
    if clean and all(c.isalnum() or c == "-" for c in clean):
        return f"/dpo/rights-requests/{clean}?done={done}"
    return f"/dpo?done={done}#holds"


@router.post("/dpo/legal-holds/release")
async def release_hold(
    p: PageDep,
    clients: ClientsDep,
    legal_hold_id: Annotated[str, Form(max_length=64)] = "",
    back_to: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """On release, whatever fell due meanwhile is processed at once (the workflow is poked)."""
    caller = p.posted_by(require_dpo(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if not legal_hold_id.strip():
        return p.message(400, error=p.t("form_error", detail=p.t("hold_invalid")))
    try:
        released = await clients.identity.ReleaseLegalHold(
            identity_pb2.ReleaseLegalHoldRequest(
                idempotency_key=f"release:{legal_hold_id.strip()}", legal_hold_id=legal_hold_id.strip()
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
            return p.message(409, error=p.t("form_error", detail=error.details() or ""))
        return p.not_found() if _is_missing(error) else p.service_error(error)
    await poke_retention(clients, released.legal_hold.subject_id)
    return p.redirect(_back(back_to, "released"))
