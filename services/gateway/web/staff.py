"""The coordinator's portal (cases at risk and escalated, the Temporal UI, documents
received by post, data entered under the personal-assistant mandate, the abuse queue)
and the referring doctor's (invite a patient)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import grpc
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from google.protobuf.duration_pb2 import Duration
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.gateway import workflow_bridge
from services.gateway.clients import Caller
from services.gateway.web.page import ClientsDep, Page, PageDep, fmt_date, new_key
from services.gateway.web.patient import (
    FORM_KINDS,
    _form_page,
    _is_missing,
    case_view,
    documents_view,
    get_case,
    save_form,
    stream_upload,
)
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code
from workflows.case.models import case_workflow_id

router = APIRouter(include_in_schema=False)
Csrf = Annotated[str, Form()]
AT_RISK_WITHIN_SECONDS = 24 * 3600


def require_role(p: Page, role: str) -> Caller | Response:
    if p.caller is None:
        return p.to_login()
    if p.caller.role != role:
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


def temporal_link(p: Page, case_id: str) -> str:
    settings = p.request.app.state.settings
    namespace = p.request.app.state.temporal_namespace
    return (
        f"{settings.temporal_ui_url.rstrip('/')}/namespaces/{quote(namespace, safe='')}"
        f"/workflows/{quote(case_workflow_id(case_id), safe='')}"
    )


async def _scope(p: Page, clients: Any, caller: Caller, scope: Any) -> tuple[list[dict[str, Any]], bool]:
    """(cases, available): a listing the dossier does not serve yet is said so, not hidden."""
    request = dossier_pb2.ListCasesRequest(scope=scope, page_size=100)
    if scope == dossier_pb2.CASE_LIST_SCOPE_AT_RISK:
        request.at_risk_within.CopyFrom(Duration(seconds=AT_RISK_WITHIN_SECONDS))
    try:
        listed = await clients.dossier.ListCases(request, metadata=caller.metadata)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED):
            return [], False
        raise
    return [{**case_view(c), "temporal_url": temporal_link(p, c.case_id)} for c in listed.cases], True


@router.get("/coordination", response_class=HTMLResponse)
async def coordination_home(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    # One after the other: each listing appends to the dossier's access-log chain.
    at_risk, at_risk_ok = await _scope(p, clients, caller, dossier_pb2.CASE_LIST_SCOPE_AT_RISK)
    escalated, escalated_ok = await _scope(p, clients, caller, dossier_pb2.CASE_LIST_SCOPE_ESCALATED)
    abuse = await clients.dossier.ListAbuseReports(
        dossier_pb2.ListAbuseReportsRequest(status=dossier_pb2.ABUSE_REPORT_STATUS_OPEN, page_size=100),
        metadata=caller.metadata,
    )
    return p.render(
        "coordination.html",
        at_risk=at_risk,
        at_risk_available=at_risk_ok,
        escalated=escalated,
        escalated_available=escalated_ok,
        abuse=[
            {
                "abuse_report_id": a.abuse_report_id,
                "case_id": a.case_id,
                "target": pb_enum_to_code(dossier_pb2.AbuseTargetKind, a.target_kind),
                "category": pb_enum_to_code(dossier_pb2.AbuseCategory, a.category),
                "reported_at": fmt_date(a.reported_at.ToDatetime(), with_time=True),
            }
            for a in abuse.abuse_reports
        ],
        just_logged_in=p.request.query_params.get("login") == "1",
    )


@router.get("/coordination/cases/{case_id}", response_class=HTMLResponse)
async def coordination_case(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    try:
        case = await get_case(clients, caller, case_id)
        documents = await clients.dossier.ListDocuments(
            dossier_pb2.ListDocumentsRequest(case_id=case_id), metadata=caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    return p.render(
        "coordination_case.html",
        case=case_view(case),
        documents=documents_view(documents.documents),
        temporal_url=temporal_link(p, case_id),
        upload_key=new_key(),
        max_upload_bytes=p.request.app.state.settings.max_upload_bytes,
        mandate="personal_assistant" in caller.habilitations,
    )


@router.post("/coordination/cases/{case_id}/postal")
async def add_postal_document(case_id: str, request: Request, p: PageDep, clients: ClientsDep) -> Response:
    """CASE-04: a document received by post, marked as such in the file."""
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    result = await stream_upload(
        p, clients, caller, case_id, dossier_pb2.DOCUMENT_PURPOSE_MEDICAL_RECORD, postal=True
    )
    if isinstance(result, Response):
        return result
    return p.redirect(f"/coordination/cases/{case_id}#documents")


@router.post("/coordination/cases/{case_id}/retry")
async def retry_case(case_id: str, p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    """Tells the workflow a coordinator fixed what blocked it (matching, an outage...)."""
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    try:
        await get_case(clients, caller, case_id)  # access check, logged
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    sent = await workflow_bridge.signal(clients, case_id, "coordinator_retry")
    return p.message(
        200 if sent else 503,
        notice=p.t("retry_sent") if sent else "",
        error="" if sent else p.t("unavailable"),
    )


@router.get("/coordination/cases/{case_id}/forms/{kind}", response_class=HTMLResponse)
async def mandate_form(case_id: str, kind: str, p: PageDep, clients: ClientsDep) -> Response:
    """CASE-14: the personal assistant fills the form in for the patient; the dossier
    refuses without the habilitation and the patient's mandate, and traces it."""
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    if kind not in FORM_KINDS:
        return p.not_found()
    try:
        return await _form_page(p, clients, caller, case_id, kind, action_base="/coordination/cases")
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)


@router.post("/coordination/cases/{case_id}/forms/{kind}")
async def mandate_form_submit(case_id: str, kind: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    if kind not in FORM_KINDS:
        return p.not_found()
    return await save_form(p, clients, caller, case_id, kind, "/coordination/cases")


@router.post("/coordination/abuse/{abuse_report_id}/resolve")
async def resolve_abuse(
    abuse_report_id: str,
    p: PageDep,
    clients: ClientsDep,
    resolution: Annotated[
        str, Form(pattern="^(no_action|content_hidden|author_warned|account_closure_requested)$")
    ],
    csrf_token: Csrf = "",
) -> Response:
    caller = require_role(p, "coordinator")
    if isinstance(caller, Response):
        return caller
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    try:
        await clients.dossier.ResolveAbuseReport(
            dossier_pb2.ResolveAbuseReportRequest(
                idempotency_key=f"resolve:{abuse_report_id}", abuse_report_id=abuse_report_id,
                resolution=code_to_pb_enum(dossier_pb2.AbuseResolution, resolution),
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    return p.redirect("/coordination#abuse")


# --- referring doctor (ACC-15) ----------------------------------------------------------------


@router.get("/referrals", response_class=HTMLResponse)
async def referrals_page(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_role(p, "referring_doctor")
    if isinstance(caller, Response):
        return caller
    listed = await clients.identity.ListReferrals(
        identity_pb2.ListReferralsRequest(page_size=100), metadata=caller.metadata
    )
    return p.render(
        "referrals.html",
        prospects=[
            {
                "name": f"{x.first_name} {x.last_name}",
                "status": pb_enum_to_code(identity_pb2.ProspectStatus, x.status),
                "sent_at": fmt_date(x.last_invitation_sent_at.ToDatetime()),
            }
            for x in listed.prospects
        ],
        form_key=new_key(),
        just_logged_in=p.request.query_params.get("login") == "1",
    )


@router.post("/referrals")
async def invite_patient(
    p: PageDep,
    clients: ClientsDep,
    first_name: Annotated[str, Form(min_length=1, max_length=100)],
    last_name: Annotated[str, Form(min_length=1, max_length=100)],
    form_key: Annotated[str, Form(min_length=8, max_length=64)],
    email: Annotated[str, Form(max_length=320)] = "",
    phone_number: Annotated[str, Form(max_length=32)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Name and email or phone only: never health data (ACC-15, SEC-08)."""
    caller = require_role(p, "referring_doctor")
    if isinstance(caller, Response):
        return caller
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    request = identity_pb2.ReferProspectRequest(
        idempotency_key=f"refer:{form_key}", first_name=first_name, last_name=last_name, locale=p.locale
    )
    if email:
        request.email = email
    elif phone_number:
        request.phone_number = phone_number
    else:
        return p.message(400, error=p.t("form_error", detail=p.t("email_or_phone")))
    try:
        await clients.identity.ReferProspect(request, metadata=caller.metadata)
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.redirect("/referrals?invited=1")
