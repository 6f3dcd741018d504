"""The referent doctor's portal: offers to accept or decline, assigned cases with their
deadlines, the file (forms, documents shown in the browser), requests for information or
a new document, and the report (written and/or uploaded, then submitted)."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.matching.v1 import matching_pb2

from services.gateway import workflow_bridge
from services.gateway.clients import Caller, ServiceClients
from services.gateway.dependencies import ts_or_none
from services.gateway.web import jsonforms
from services.gateway.web.page import ClientsDep, Page, PageDep, fmt_date, new_key
from services.gateway.web.patient import (
    _is_missing,
    case_view,
    documents_view,
    get_overview,
    messages_view,
    stream_upload,
)
from services.shared.protoconv import code_to_pb_enum
from workflows.case.models import InformationRequested, OfferAnswered, ReportAccepted, SubmitReport

router = APIRouter(include_in_schema=False)
Csrf = Annotated[str, Form()]


def require_doctor(p: Page) -> Caller | Response:
    if p.caller is None:
        return p.to_login()
    if p.caller.role != "referent_doctor":
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


@router.get("/doctor", response_class=HTMLResponse)
async def doctor_home(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_doctor(p)
    if isinstance(caller, Response):
        return caller
    offers, cases = await asyncio.gather(  # matching and one dossier read
        clients.matching.ListOffers(
            matching_pb2.ListOffersRequest(statuses=[matching_pb2.OFFER_STATUS_PENDING], page_size=50),
            metadata=caller.metadata,
        ),
        clients.dossier.ListCases(
            dossier_pb2.ListCasesRequest(scope=dossier_pb2.CASE_LIST_SCOPE_ASSIGNED_TO_ME, page_size=50),
            metadata=caller.metadata,
        ),
    )
    return p.render(
        "doctor_home.html",
        offers=[
            {
                "offer_id": o.offer_id,
                "therapeutic_area": o.therapeutic_area,
                "respond_by": fmt_date(ts_or_none(o, "respond_by"), with_time=True),
                "review_deadline": fmt_date(ts_or_none(o, "review_deadline_at")),
            }
            for o in offers.offers
        ],
        cases=sorted(
            (case_view(c) for c in cases.cases),
            key=lambda c: (c["deadline_at"] is None, c["deadline_at"] or 0),
        ),
        just_logged_in=p.request.query_params.get("login") == "1",
    )


@router.post("/doctor/offers/{offer_id}/answer")
async def answer_offer(
    offer_id: str,
    p: PageDep,
    clients: ClientsDep,
    answer: Annotated[str, Form(pattern="^(accept|decline)$")],
    reason: Annotated[str, Form(max_length=40)] = "unavailable",
    csrf_token: Csrf = "",
) -> Response:
    caller = p.posted_by(require_doctor(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        if answer == "accept":
            accepted = await clients.matching.AcceptOffer(
                matching_pb2.AcceptOfferRequest(idempotency_key=f"accept:{offer_id}", offer_id=offer_id),
                metadata=caller.metadata,
            )
            offer, assignment = accepted.offer, accepted.assignment
            signal = OfferAnswered(
                offer_id=offer_id, accepted=True, assignment_id=assignment.assignment_id,
                doctor_account_id=caller.account_id,
            )  # fmt: skip
        else:
            declined = await clients.matching.DeclineOffer(
                matching_pb2.DeclineOfferRequest(
                    idempotency_key=f"decline:{offer_id}",
                    offer_id=offer_id,
                    reason=code_to_pb_enum(matching_pb2.DeclineReason, reason)
                    or matching_pb2.DECLINE_REASON_OTHER,
                ),
                metadata=caller.metadata,
            )
            offer = declined.offer
            signal = OfferAnswered(offer_id=offer_id, accepted=False)
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    await workflow_bridge.signal(clients, offer.case_id, "offer_answered", signal)
    return p.redirect("/doctor?answered=" + answer)


def _answers_view(form: dossier_pb2.CaseFormOverview) -> dict[str, Any] | None:
    """A form as the doctor reads it: the latest submitted answers laid out by the form's
    current definition (both come with the case overview)."""
    if not form.HasField("answers") or not form.HasField("definition"):
        return None
    title, groups = jsonforms.layout(
        form.definition.definition_json, json.loads(form.answers.answers_json or "{}")
    )
    return {"title": title, "groups": groups, "version": form.answers.version,
            "under_mandate": form.answers.entered_under_mandate}  # fmt: skip


@router.get("/doctor/cases/{case_id}", response_class=HTMLResponse)
async def doctor_case(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_doctor(p)
    if isinstance(caller, Response):
        return caller
    try:
        # One dossier call, logged as one read: the file, the forms' answers, the draft.
        found = await get_overview(clients, caller, case_id, form_answers=True)
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    mine = [r for r in found.reports if r.author_account_id == caller.account_id]
    draft = next((r for r in mine if r.status == dossier_pb2.REPORT_STATUS_DRAFT), None)
    return p.render(
        "doctor_case.html",
        case=case_view(found.case),
        forms=[f for f in (_answers_view(form) for form in found.forms) if f],
        documents=documents_view(found.documents),
        messages=messages_view(found.messages, caller.account_id),
        notes=found.notes.text,
        draft=draft,
        draft_body=draft.body if draft is not None else "",
        sealed=any(r.status == dossier_pb2.REPORT_STATUS_SEALED for r in mine),
        message_key=new_key(),
        max_upload_bytes=p.request.app.state.settings.max_upload_bytes,
        submitted=p.request.query_params.get("submitted") == "1",
    )


@router.post("/doctor/cases/{case_id}/messages")
async def doctor_message(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    body: Annotated[str, Form(min_length=1, max_length=20_000)],
    message_key: Annotated[str, Form(min_length=8, max_length=64)],
    kind: Annotated[str, Form(pattern="^(general|information_request|document_request)$")] = "general",
    csrf_token: Csrf = "",
) -> Response:
    """CASE-06: the doctor writes, or asks for more information or a new document; a
    request pauses the review clock (the workflow is told)."""
    caller = p.posted_by(require_doctor(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        sent = await clients.dossier.SendMessage(
            dossier_pb2.SendMessageRequest(
                idempotency_key=f"message:{message_key}", case_id=case_id,
                kind=code_to_pb_enum(dossier_pb2.MessageKind, kind), body=body,
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    if kind != "general":
        await workflow_bridge.signal(
            clients,
            case_id,
            "information_requested",
            InformationRequested(request_id=sent.message.message_id, doctor_account_id=caller.account_id),
        )
    return p.redirect(f"/doctor/cases/{case_id}#messages")


@router.post("/doctor/documents/{document_id}/flag")
async def flag_document(
    document_id: str,
    p: PageDep,
    clients: ClientsDep,
    case_id: Annotated[str, Form(max_length=64)],
    reason: Annotated[str, Form(pattern="^(unreadable|incomplete)$")],
    csrf_token: Csrf = "",
) -> Response:
    caller = p.posted_by(require_doctor(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        await clients.dossier.FlagDocument(
            dossier_pb2.FlagDocumentRequest(
                idempotency_key=f"flag:{document_id}:{reason}", document_id=document_id,
                reason=code_to_pb_enum(dossier_pb2.DocumentFlagReason, reason),
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.redirect(f"/doctor/cases/{case_id}#documents")


@router.post("/doctor/cases/{case_id}/report/file")
async def upload_report_file(case_id: str, request: Request, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_doctor(p)
    if isinstance(caller, Response):
        return caller
    result = await stream_upload(p, clients, caller, case_id, dossier_pb2.DOCUMENT_PURPOSE_REPORT)
    if isinstance(result, Response):
        return result
    try:
        await clients.dossier.SaveReportDraft(
            dossier_pb2.SaveReportDraftRequest(
                idempotency_key=f"report-file:{result}", case_id=case_id, attachment_document_id=result,
                body=await _draft_body(clients, caller, case_id),
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.redirect(f"/doctor/cases/{case_id}#report")


async def _draft_body(clients: ServiceClients, caller: Caller, case_id: str) -> str:
    listed = await clients.dossier.ListCaseReports(
        dossier_pb2.ListCaseReportsRequest(case_id=case_id), metadata=caller.metadata
    )
    draft = next(
        (r for r in listed.reports if r.status == dossier_pb2.REPORT_STATUS_DRAFT
         and r.author_account_id == caller.account_id),
        None,
    )  # fmt: skip
    if draft is None:
        return ""
    full = await clients.dossier.GetReport(
        dossier_pb2.GetReportRequest(report_id=draft.report_id), metadata=caller.metadata
    )
    return str(full.report.body)


@router.post("/doctor/cases/{case_id}/report")
async def save_report(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    body: Annotated[str, Form(max_length=20_000)],
    form_key: Annotated[str, Form(min_length=8, max_length=64)],
    action: Annotated[str, Form(pattern="^(save|submit)$")] = "save",
    attachment_document_id: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """DOC-04: the draft is saved in the dossier; submitting asks the workflow, which seals
    and delivers it once its checks pass."""
    caller = p.posted_by(require_doctor(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        saved = await clients.dossier.SaveReportDraft(
            dossier_pb2.SaveReportDraftRequest(
                idempotency_key=f"report:{form_key}", case_id=case_id, body=body,
                attachment_document_id=attachment_document_id,
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    if action == "submit":
        try:
            await workflow_bridge.update(
                clients,
                case_id,
                "submit_report",
                SubmitReport(doctor_account_id=caller.account_id, report_id=saved.report.report_id),
                ReportAccepted,
            )
        except workflow_bridge.WorkflowRefused as refused:
            return p.message(409, error=p.t("form_error", detail=str(refused)))
        return p.redirect(f"/doctor/cases/{case_id}?submitted=1#report")
    return p.redirect(f"/doctor/cases/{case_id}#report")
