"""The patient's portal: requests, the checkout (notice, consents, forms, documents,
payment), the timeline, messaging, the report behind a fresh code, invoices, the account
(texts and consents given, access history, withdrawal, closure). Thin: the services hold
every rule; pages turn forms into RPCs and statuses into messages."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import grpc
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from secondopinion.billing.v1 import billing_pb2
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2

from services.dossier.catalog import therapeutic_area_codes
from services.gateway import workflow_bridge
from services.gateway.clients import Caller, ServiceClients
from services.gateway.dependencies import ts_or_none
from services.gateway.web import jsonforms
from services.gateway.web.page import (
    ClientsDep,
    Page,
    PageDep,
    client_info,
    fmt_date,
    http_status,
    new_key,
)
from services.gateway.web.uploads import BadUpload, TooLarge, receive_upload, request_stream
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code
from workflows.case.models import (
    ApplyCoverageCode,
    CoverageApplied,
    InformationProvided,
    PaymentNotified,
)

router = APIRouter(include_in_schema=False)

TIMELINE = (
    "submitted",
    "awaiting_payment",
    "awaiting_assignment",
    "in_review",
    "report_delivered",
    "closed",
)
CHECKOUT_STATUSES = ("draft", "submitted", "awaiting_payment")
FORM_KINDS = {"pre_form": dossier_pb2.FORM_KIND_PRE_FORM, "pathology": dossier_pb2.FORM_KIND_PATHOLOGY}
NOTICE_BY_CAPACITY = {
    "self": identity_pb2.LEGAL_TEXT_KIND_NOTICE_SELF,
    "legal_representative_of_minor": identity_pb2.LEGAL_TEXT_KIND_NOTICE_LEGAL_REPRESENTATIVE,
    "legal_representative_of_ward": identity_pb2.LEGAL_TEXT_KIND_NOTICE_LEGAL_REPRESENTATIVE,
    "mandated_person": identity_pb2.LEGAL_TEXT_KIND_NOTICE_MANDATED_PERSON,
}
CONTENT_TYPES = {
    dossier_pb2.DOCUMENT_CONTENT_TYPE_PDF: "application/pdf",
    dossier_pb2.DOCUMENT_CONTENT_TYPE_JPEG: "image/jpeg",
    dossier_pb2.DOCUMENT_CONTENT_TYPE_PNG: "image/png",
    dossier_pb2.DOCUMENT_CONTENT_TYPE_DICOM: "application/dicom",
}
# Shown in the browser; anything else is downloaded.
INLINE_TYPES = ("application/pdf", "image/jpeg", "image/png")
Csrf = Annotated[str, Form()]


# --- helpers --------------------------------------------------------------------------------


def case_view(case: dossier_pb2.Case) -> dict[str, Any]:
    return {
        "case_id": case.case_id,
        "reference": case.case_reference or case.case_id[:8].upper(),
        "therapeutic_area": case.therapeutic_area,
        "status": pb_enum_to_code(dossier_pb2.CaseStatus, case.status),
        "purpose": pb_enum_to_code(dossier_pb2.CasePurpose, case.purpose),
        "filing_capacity": pb_enum_to_code(dossier_pb2.FilingCapacity, case.filing_capacity),
        "choice_mode": pb_enum_to_code(dossier_pb2.DoctorChoiceMode, case.doctor_choice_mode),
        "beneficiary_id": case.beneficiary_id,
        "filer_account_id": case.filer_account_id,
        "assigned_doctor_ids": list(case.assigned_doctor_ids),
        "created_at": fmt_date(case.created_at.ToDatetime()),
        "deadline_at": ts_or_none(case, "deadline_at"),
        "entered_under_mandate": case.entered_under_mandate,
    }


def content_disposition(disposition: str, file_name: str) -> str:
    """RFC 6266: an ASCII fallback and the exact UTF-8 name (RFC 5987 encoding)."""
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in file_name) or "file"
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name, safe='')}"


def safe_next(target: str) -> str:
    """Only our own paths (never another site) after a step-up."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/dashboard"
    return target


async def get_case(clients: ServiceClients, caller: Caller, case_id: str) -> dossier_pb2.Case:
    response = await clients.dossier.GetCase(
        dossier_pb2.GetCaseRequest(case_id=case_id), metadata=caller.metadata
    )
    return response.case


async def _optional(call: Any, *codes: grpc.StatusCode) -> Any:
    """A read whose absence is an answer (no order yet, no answers yet...)."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        if error.code() in (codes or (grpc.StatusCode.NOT_FOUND,)):
            return None
        raise


def _is_missing(error: grpc.aio.AioRpcError) -> bool:
    return error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


def documents_view(documents: Any) -> list[dict[str, Any]]:
    return [
        {
            "document_id": d.document_id,
            "file_name": d.file_name,
            "status": pb_enum_to_code(dossier_pb2.DocumentStatus, d.status),
            "source": pb_enum_to_code(dossier_pb2.DocumentSource, d.source),
            "purpose": pb_enum_to_code(dossier_pb2.DocumentPurpose, d.purpose),
            "content_type": CONTENT_TYPES.get(d.content_type, ""),
            "size_kb": max(1, d.size_bytes // 1024),
            "uploaded_at": fmt_date(d.uploaded_at.ToDatetime(), with_time=True),
        }
        for d in documents
    ]


def messages_view(messages: Any, me: str) -> list[dict[str, Any]]:
    answered = {m.in_reply_to_message_id for m in messages if m.in_reply_to_message_id}
    return [
        {
            "message_id": m.message_id,
            "mine": m.sender_account_id == me,
            "kind": pb_enum_to_code(dossier_pb2.MessageKind, m.kind),
            "body": m.body,
            "hidden": m.hidden,
            "sent_at": fmt_date(m.sent_at.ToDatetime(), with_time=True),
            "read": any(r.account_id != m.sender_account_id for r in m.read_receipts),
            "open_request": m.kind
            in (dossier_pb2.MESSAGE_KIND_INFORMATION_REQUEST, dossier_pb2.MESSAGE_KIND_DOCUMENT_REQUEST)
            and m.message_id not in answered,
            "attachments": list(m.attachment_document_ids),
        }
        for m in messages
    ]


def require_patient(p: Page) -> Caller | Response:
    if p.caller is None:
        return p.to_login()
    if p.caller.role != "patient":
        return p.redirect(p.role_home())
    return p.onboarding() or p.caller


# --- dashboard and new request ----------------------------------------------------------------


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    listed = await clients.dossier.ListCases(
        dossier_pb2.ListCasesRequest(scope=dossier_pb2.CASE_LIST_SCOPE_MINE, page_size=50),
        metadata=caller.metadata,
    )
    return p.render(
        "dashboard.html",
        cases=[case_view(case) for case in listed.cases],
        just_logged_in=p.request.query_params.get("login") == "1",
    )


@router.get("/cases/new", response_class=HTMLResponse)
async def new_case_form(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    listed = await clients.matching.ListReferentDoctors(
        matching_pb2.ListReferentDoctorsRequest(page_size=100), metadata=caller.metadata
    )
    doctors = [
        {
            "doctor_id": d.doctor_id,
            "display_name": d.display_name,
            "areas": ", ".join(p.t("area_" + area) for area in d.therapeutic_areas),
        }
        for d in listed.doctors
    ]
    from services.gateway.web.onboarding import list_beneficiaries

    return p.render(
        "case_new.html",
        areas=sorted(therapeutic_area_codes()),
        doctors=doctors,
        idempotency_key=new_key(),
        beneficiaries=await list_beneficiaries(clients, caller),
        notice=p.t("beneficiary_attached") if p.request.query_params.get("attached") == "1" else "",
    )


@router.post("/cases/new")
async def new_case_submit(
    p: PageDep,
    clients: ClientsDep,
    therapeutic_area: Annotated[str, Form(max_length=64)],
    purpose: Annotated[str, Form(max_length=40)],
    doctor_choice_mode: Annotated[str, Form(max_length=20)],
    idempotency_key: Annotated[str, Form(min_length=8, max_length=100)],
    chosen_doctor_ids: Annotated[list[str] | None, Form()] = None,
    beneficiary: Annotated[str, Form(max_length=64)] = "self",
    csrf_token: Csrf = "",
) -> Response:
    """For oneself, or for a person attached with their proof (ACC-03): the capacity comes
    from identity's record of that person, never from the form."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if limited := p.too_many("case_submission"):
        return limited
    filing_capacity, beneficiary_id = "self", ""
    if beneficiary != "self":
        from services.gateway.web.onboarding import list_beneficiaries

        found = [
            b
            for b in await list_beneficiaries(clients, caller)
            if b["beneficiary_id"] == beneficiary and b["status"] == "active"
        ]
        if not found:
            return p.message(400, error=p.t("form_error", detail=p.t("beneficiary")))
        filing_capacity, beneficiary_id = found[0]["capacity"], beneficiary
    try:
        created = await clients.dossier.CreateCase(
            dossier_pb2.CreateCaseRequest(
                idempotency_key=idempotency_key,
                beneficiary_id=beneficiary_id,
                filing_capacity=code_to_pb_enum(dossier_pb2.FilingCapacity, filing_capacity),
                therapeutic_area=therapeutic_area,
                purpose=code_to_pb_enum(dossier_pb2.CasePurpose, purpose),
                doctor_choice_mode=code_to_pb_enum(dossier_pb2.DoctorChoiceMode, doctor_choice_mode),
                chosen_doctor_ids=chosen_doctor_ids or [],
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    case = created.case
    if case.status != dossier_pb2.CASE_STATUS_DRAFT:
        # Filed straight away: the workflow takes it from here (checkout, payment...).
        await workflow_bridge.start(clients, case.case_id, case.therapeutic_area, doctor_choice_mode)
    return p.redirect(f"/cases/{case.case_id}")


# --- the case page ------------------------------------------------------------------------------


async def get_overview(
    clients: ServiceClients, caller: Caller, case_id: str, *, form_answers: bool = False
) -> dossier_pb2.GetCaseOverviewResponse:
    """What a case page shows, in one dossier call logged as one read of the case."""
    response: dossier_pb2.GetCaseOverviewResponse = await clients.dossier.GetCaseOverview(
        dossier_pb2.GetCaseOverviewRequest(case_id=case_id, include_form_answers=form_answers),
        metadata=caller.metadata,
    )
    return response


async def _checklist(
    clients: ServiceClients, caller: Caller, overview: dossier_pb2.GetCaseOverviewResponse
) -> dict[str, Any]:
    """The checkout steps: identity (consents, terms) and billing (the order), concurrently;
    the forms come with the case overview."""
    md = caller.metadata
    case = overview.case
    consent, terms, order = await asyncio.gather(
        _optional(
            clients.identity.GetConsentStatus(
                identity_pb2.GetConsentStatusRequest(
                    account_id=caller.account_id, beneficiary_id=case.beneficiary_id
                ),
                metadata=md,
            )
        ),
        _optional(
            clients.identity.CheckLatestTermsAccepted(
                identity_pb2.CheckLatestTermsAcceptedRequest(account_id=caller.account_id), metadata=md
            )
        ),
        _optional(clients.billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id), metadata=md)),
    )
    submitted = {
        form.kind
        for form in overview.forms
        if any(v.status == dossier_pb2.FORM_ANSWERS_STATUS_SUBMITTED for v in form.versions)
    }
    order_status = pb_enum_to_code(billing_pb2.OrderStatus, order.order.status) if order else ""
    return {
        "consents": bool(consent)
        and consent.notice_accepted
        and identity_pb2.CONSENT_KIND_HEALTH_DATA_PROCESSING in consent.given_consents,
        "terms": bool(terms) and terms.accepted,
        "pre_form": dossier_pb2.FORM_KIND_PRE_FORM in submitted,
        "pathology": dossier_pb2.FORM_KIND_PATHOLOGY in submitted,
        "paid": order_status in ("paid", "covered"),
        "order_status": order_status,
    }


async def _no_checklist() -> dict[str, Any]:
    return {}


@router.get("/cases/{case_id}", response_class=HTMLResponse)
async def case_page(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    try:
        found = await get_overview(clients, caller, case_id)
    except grpc.aio.AioRpcError as error:
        if _is_missing(error):
            return p.not_found()
        raise
    case = found.case
    status_code = pb_enum_to_code(dossier_pb2.CaseStatus, case.status)
    # Once the dossier granted access: the checkout's identity and billing reads and the
    # workflow's state, concurrently.
    checklist, state = await asyncio.gather(
        _checklist(clients, caller, found) if status_code in CHECKOUT_STATUSES else _no_checklist(),
        workflow_bridge.query_state(clients, case_id),
    )
    view = case_view(case)
    expected: datetime | None = view["deadline_at"] or (state.expected_delivery_at if state else None)
    status = view["status"]
    current = TIMELINE.index(status) if status in TIMELINE else -1
    if status == "awaiting_information":
        current = TIMELINE.index("in_review")
    timeline = [
        {"status": s, "state": "done" if i < current else "current" if i == current else "todo"}
        for i, s in enumerate(TIMELINE)
    ]
    thread = messages_view(found.messages, caller.account_id)
    open_request = next((m for m in thread if m["open_request"]), None)
    return p.render(
        "case.html",
        case=view,
        timeline=timeline,
        expected=fmt_date(expected),
        checklist=checklist,
        in_checkout=status in CHECKOUT_STATUSES,
        documents=documents_view(found.documents),
        messages=thread,
        open_request=open_request,
        has_report=any(r.status == dossier_pb2.REPORT_STATUS_SEALED for r in found.reports),
        notes=found.notes.text,
        max_upload_bytes=p.request.app.state.settings.max_upload_bytes,
        message_key=new_key(),
    )


# --- notice and consents (CNS-03, CNS-04) --------------------------------------------------------


async def _current_text(clients: ServiceClients, kind: Any, locale: str) -> identity_pb2.LegalText | None:
    try:
        found = await clients.identity.GetCurrentLegalText(
            identity_pb2.GetCurrentLegalTextRequest(kind=kind, locale=locale), metadata=clients.as_gateway()
        )
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return found.text


@router.get("/cases/{case_id}/consents", response_class=HTMLResponse)
async def consents_form(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    try:
        case = await get_case(clients, caller, case_id)
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    view = case_view(case)
    notice = await _current_text(clients, NOTICE_BY_CAPACITY[view["filing_capacity"]], p.locale)
    terms_check = await clients.identity.CheckLatestTermsAccepted(
        identity_pb2.CheckLatestTermsAcceptedRequest(account_id=caller.account_id), metadata=caller.metadata
    )
    terms = None
    if not terms_check.accepted:
        terms = await _current_text(clients, identity_pb2.LEGAL_TEXT_KIND_TERMS, p.locale)
    status = await clients.identity.GetConsentStatus(
        identity_pb2.GetConsentStatusRequest(
            account_id=caller.account_id, beneficiary_id=case.beneficiary_id
        ),
        metadata=caller.metadata,
    )
    return p.render(
        "consents.html",
        case=view,
        legal_notice=notice,
        terms=terms,
        notice_accepted=status.notice_accepted,
        given=[pb_enum_to_code(identity_pb2.ConsentKind, c) for c in status.given_consents],
        form_key=new_key(),
    )


@router.post("/cases/{case_id}/consents")
async def consents_submit(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    form_key: Annotated[str, Form(min_length=8, max_length=64)],
    notice_text_id: Annotated[str, Form(max_length=64)] = "",
    notice_sha256: Annotated[str, Form(max_length=64)] = "",
    terms_text_id: Annotated[str, Form(max_length=64)] = "",
    terms_sha256: Annotated[str, Form(max_length=64)] = "",
    accept_terms: Annotated[str, Form(max_length=3)] = "",
    accept_notice: Annotated[str, Form(max_length=3)] = "",
    consent_health_data: Annotated[str, Form(max_length=3)] = "",
    consent_report_to_physician: Annotated[str, Form(max_length=3)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """Each box is its own act with its own evidence record (CNS-04): the terms, the notice,
    the health-data consent, and (optional) sending the report to the treating physician."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        case = await get_case(clients, caller, case_id)
        info = client_info(p.request)
        beneficiary = case.beneficiary_id
        md = caller.metadata
        if accept_terms == "yes" and terms_text_id:
            await clients.identity.AcceptLegalText(
                identity_pb2.AcceptLegalTextRequest(
                    idempotency_key=f"terms:{form_key}", text_id=terms_text_id,
                    text_sha256_hex=terms_sha256, client=info,
                ),
                metadata=md,
            )  # fmt: skip
        if accept_notice == "yes" and notice_text_id:
            await clients.identity.AcceptLegalText(
                identity_pb2.AcceptLegalTextRequest(
                    idempotency_key=f"notice:{form_key}", text_id=notice_text_id,
                    text_sha256_hex=notice_sha256, beneficiary_id=beneficiary, client=info,
                ),
                metadata=md,
            )  # fmt: skip
        for box, kind in (
            (consent_health_data, identity_pb2.CONSENT_KIND_HEALTH_DATA_PROCESSING),
            (consent_report_to_physician, identity_pb2.CONSENT_KIND_REPORT_TO_TREATING_PHYSICIAN),
        ):
            if box == "yes" and notice_text_id:
                await clients.identity.GiveConsent(
                    identity_pb2.GiveConsentRequest(
                        idempotency_key=f"consent:{kind}:{form_key}", kind=kind, text_id=notice_text_id,
                        text_sha256_hex=notice_sha256, beneficiary_id=beneficiary, client=info,
                    ),
                    metadata=md,
                )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    await workflow_bridge.signal(clients, case_id, "checkout_changed", _checkout("consents"))
    return p.redirect(f"/cases/{case_id}")


def _checkout(what: str) -> Any:
    from workflows.case.models import CheckoutChanged

    return CheckoutChanged(what=what)


# --- forms (CASE-02, CASE-03) ----------------------------------------------------------------


async def _form_page(
    p: Page, clients: ServiceClients, caller: Caller, case_id: str, kind: str, error: str = "",
    answers: dict[str, Any] | None = None, status: int = 200, action_base: str = "/cases",
) -> Response:  # fmt: skip
    case = await get_case(clients, caller, case_id)
    definition = await clients.dossier.GetFormDefinition(
        dossier_pb2.GetFormDefinitionRequest(kind=FORM_KINDS[kind], therapeutic_area=case.therapeutic_area),
        metadata=caller.metadata,
    )
    latest_status = ""
    if answers is None:
        latest = await _optional(
            clients.dossier.GetFormAnswers(
                dossier_pb2.GetFormAnswersRequest(case_id=case_id, kind=FORM_KINDS[kind]),
                metadata=caller.metadata,
            )
        )
        answers = json.loads(latest.answers.answers_json or "{}") if latest else {}
        if latest:
            latest_status = pb_enum_to_code(dossier_pb2.FormAnswersStatus, latest.answers.status)
    title, groups = jsonforms.layout(definition.definition.definition_json, answers)
    return p.render(
        "form.html",
        status=status,
        case=case_view(case),
        kind=kind,
        title=title,
        groups=groups,
        error=error,
        latest_status=latest_status,
        form_key=new_key(),
        action=f"{action_base}/{case_id}/forms/{kind}",
    )


@router.get("/cases/{case_id}/forms/{kind}", response_class=HTMLResponse)
async def form_page(case_id: str, kind: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    if kind not in FORM_KINDS:
        return p.not_found()
    try:
        return await _form_page(p, clients, caller, case_id, kind)
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)


async def save_form(
    p: Page, clients: ServiceClients, caller: Caller, case_id: str, kind: str, action_base: str
) -> Response:
    """Shared by the patient and the personal assistant (staff under mandate, CASE-14):
    the dossier traces who entered the answers and under which mandate."""
    form = await p.request.form()
    if not p.csrf_ok(str(form.get("csrf_token", ""))):
        return p.forbidden()
    pairs = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
    form_key = str(form.get("form_key", ""))[:64] or new_key()
    submit = form.get("action") == "submit"
    try:
        case = await get_case(clients, caller, case_id)
        definition = await clients.dossier.GetFormDefinition(
            dossier_pb2.GetFormDefinitionRequest(
                kind=FORM_KINDS[kind], therapeutic_area=case.therapeutic_area
            ),
            metadata=caller.metadata,
        )
        answers = jsonforms.answers_from_form(definition.definition.definition_json, pairs)
        payload = json.dumps(answers, ensure_ascii=False)
        if submit:
            await clients.dossier.SubmitFormAnswers(
                dossier_pb2.SubmitFormAnswersRequest(
                    idempotency_key=f"submit:{form_key}", case_id=case_id, kind=FORM_KINDS[kind],
                    answers_json=payload,
                ),
                metadata=caller.metadata,
            )  # fmt: skip
        else:
            await clients.dossier.SaveFormDraft(
                dossier_pb2.SaveFormDraftRequest(
                    idempotency_key=f"draft:{form_key}", case_id=case_id, kind=FORM_KINDS[kind],
                    answers_json=payload,
                ),
                metadata=caller.metadata,
            )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return await _form_page(
                p, clients, caller, case_id, kind,
                error=p.t("form_error", detail=error.details() or ""), answers=answers, status=400,
                action_base=action_base,
            )  # fmt: skip
        return p.service_error(error)
    if submit:
        await workflow_bridge.signal(clients, case_id, "checkout_changed", _checkout("forms"))
        return p.redirect(f"{action_base}/{case_id}")
    return await _form_page(p, clients, caller, case_id, kind, action_base=action_base)


@router.post("/cases/{case_id}/forms/{kind}")
async def form_submit(case_id: str, kind: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    if kind not in FORM_KINDS:
        return p.not_found()
    return await save_form(p, clients, caller, case_id, kind, "/cases")


# --- documents (CASE-04) -------------------------------------------------------------------------


def upload_refused(p: Page, status: int, message: str) -> Response:
    """Upload errors answer the script (JSON) or the plain form (a page)."""
    if "application/json" in p.request.headers.get("accept", ""):
        from fastapi.responses import JSONResponse

        return p.finish(JSONResponse({"error": message}, status_code=status))
    return p.message(status, error=message)


async def stream_upload(
    p: Page, clients: ServiceClients, caller: Caller, case_id: str, purpose: Any, postal: bool = False
) -> Response | str:
    """The upload route's body, shared by patients, doctors (report file) and coordinators
    (documents received by post). Returns the new document id or an error response."""
    if not p.origin_ok():
        return p.forbidden()
    if limited := p.too_many("upload"):
        return limited
    limit = p.request.app.state.settings.max_upload_bytes
    try:
        received = await receive_upload(p.request, limit)
    except TooLarge:
        return upload_refused(p, 413, p.t("upload_too_large", mb=limit // (1024 * 1024) or 1))
    except BadUpload as exc:
        return upload_refused(p, 400, p.t("form_error", detail=str(exc)))
    try:
        submitted = received.fields.get("csrf_token") or p.request.headers.get("x-csrf-token")
        if not p.csrf_ok(submitted):
            return p.forbidden()
        key = received.fields.get("upload_key", "")[:64] or new_key()
        try:
            if postal:
                day = received.fields.get("received_on", "")
                try:
                    when = datetime.fromisoformat(day) if day else datetime.now()
                except ValueError:
                    return upload_refused(p, 400, p.t("form_error", detail="received_on"))
                from google.protobuf.timestamp_pb2 import Timestamp

                stamp = Timestamp()
                stamp.FromDatetime(min(when, datetime.now()))
                first_postal = dossier_pb2.AddPostalDocumentRequest(
                    idempotency_key=f"postal:{key}",
                    metadata=dossier_pb2.PostalDocumentMetadata(
                        case_id=case_id, file_name=received.file_name,
                        declared_size_bytes=received.size, received_at=stamp,
                    ),
                )  # fmt: skip
                posted = await clients.dossier.AddPostalDocument(
                    request_stream(
                        first_postal, received, lambda b: dossier_pb2.AddPostalDocumentRequest(chunk=b)
                    ),
                    metadata=caller.metadata,
                    timeout=clients.transfer_timeout,
                )
                return str(posted.document.document_id)
            first = dossier_pb2.UploadDocumentRequest(
                idempotency_key=f"upload:{key}",
                metadata=dossier_pb2.UploadDocumentMetadata(
                    case_id=case_id, purpose=purpose, file_name=received.file_name,
                    declared_size_bytes=received.size,
                    replaces_document_id=received.fields.get("replaces_document_id", "")[:64],
                ),
            )  # fmt: skip
            uploaded = await clients.dossier.UploadDocument(
                request_stream(first, received, lambda b: dossier_pb2.UploadDocumentRequest(chunk=b)),
                metadata=caller.metadata,
                timeout=clients.transfer_timeout,
            )
            return str(uploaded.document.document_id)
        except grpc.aio.AioRpcError as error:
            status = http_status(error)
            if status == 404:
                return upload_refused(p, 404, p.t("not_found"))
            if status >= 500:
                return upload_refused(p, 503, p.t("unavailable"))
            return upload_refused(p, status, p.t("upload_refused", detail=error.details() or ""))
    finally:
        received.close()


@router.post("/cases/{case_id}/documents")
async def upload_document(case_id: str, request: Request, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    result = await stream_upload(p, clients, caller, case_id, dossier_pb2.DOCUMENT_PURPOSE_MEDICAL_RECORD)
    if isinstance(result, Response):
        return result
    return p.redirect(f"/cases/{case_id}#documents")


@router.get("/documents/{document_id}")
async def download_document(document_id: str, p: PageDep, clients: ClientsDep) -> Response:
    """Documents shown in the browser (PDF, images) or downloaded (DICOM); patients give a
    fresh code first (ACC-06). The first stream message is read before answering, so a
    refusal becomes a proper status, never a broken download."""
    if p.caller is None:
        return p.to_login()
    caller = p.caller
    if caller.role == "patient" and not caller.stepped_up:
        return p.redirect(f"/step-up?next=/documents/{document_id}")
    call = clients.dossier.DownloadDocument(
        dossier_pb2.DownloadDocumentRequest(document_id=document_id),
        metadata=caller.metadata,
        timeout=clients.transfer_timeout,
    )
    try:
        first: Any = await call.read()
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    if first is grpc.aio.EOF or first.WhichOneof("part") != "metadata":
        return p.not_found()
    meta = first.metadata
    media = CONTENT_TYPES.get(meta.content_type, "application/octet-stream")
    inline = media in INLINE_TYPES and p.request.query_params.get("download") != "1"

    async def body() -> Any:
        async for message in call:
            yield message.chunk

    response = StreamingResponse(
        body(),
        media_type=media,
        headers={
            "Content-Disposition": content_disposition("inline" if inline else "attachment", meta.file_name),
            "Content-Length": str(meta.size_bytes),
            # A document is data, never a page: no script runs from it.
            "Content-Security-Policy": "default-src 'none'; img-src 'self'; object-src 'self'; "
            "plugin-types application/pdf; frame-ancestors 'self'; sandbox",
        },
    )
    return p.finish(response)


# --- notes and messages (CASE-05, CASE-06, CASE-17) --------------------------------------------


@router.post("/cases/{case_id}/notes")
async def save_notes(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    text: Annotated[str, Form(max_length=20_000)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        await clients.dossier.SaveCaseNotes(
            dossier_pb2.SaveCaseNotesRequest(
                idempotency_key=f"notes:{form_key or new_key()}", case_id=case_id, text=text
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.redirect(f"/cases/{case_id}#notes")


@router.post("/cases/{case_id}/messages")
async def send_message(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    body: Annotated[str, Form(min_length=1, max_length=20_000)],
    message_key: Annotated[str, Form(min_length=8, max_length=64)],
    in_reply_to: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """The patient writes to the doctor(s), or answers their request for information."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    kind = dossier_pb2.MESSAGE_KIND_INFORMATION_RESPONSE if in_reply_to else dossier_pb2.MESSAGE_KIND_GENERAL
    try:
        await clients.dossier.SendMessage(
            dossier_pb2.SendMessageRequest(
                idempotency_key=f"message:{message_key}", case_id=case_id, kind=kind, body=body,
                in_reply_to_message_id=in_reply_to,
            ),
            metadata=caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    if in_reply_to:
        await workflow_bridge.signal(
            clients, case_id, "information_provided", InformationProvided(request_id=in_reply_to)
        )
    return p.redirect(f"/cases/{case_id}#messages")


@router.post("/cases/{case_id}/abuse")
async def report_abuse(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    message_id: Annotated[str, Form(max_length=64)],
    category: Annotated[str, Form(max_length=32)] = "other",
    csrf_token: Csrf = "",
) -> Response:
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    try:
        await clients.dossier.ReportAbuse(
            dossier_pb2.ReportAbuseRequest(
                idempotency_key=f"abuse:{p.caller.account_id}:{message_id}", case_id=case_id,
                target_kind=dossier_pb2.ABUSE_TARGET_KIND_MESSAGE, target_id=message_id,
                category=code_to_pb_enum(dossier_pb2.AbuseCategory, category),
            ),
            metadata=p.caller.metadata,
        )  # fmt: skip
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.message(200, notice=p.t("abuse_reported"))


@router.post("/cases/{case_id}/oppose")
async def oppose_doctor(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    doctor_id: Annotated[str, Form(max_length=64)],
    csrf_token: Csrf = "",
) -> Response:
    """DOC-03: the patient ends a doctor's access at once."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        await clients.dossier.OpposeDoctorAccess(
            dossier_pb2.OpposeDoctorAccessRequest(
                idempotency_key=f"oppose:{case_id}:{doctor_id}", case_id=case_id, doctor_id=doctor_id
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    return p.redirect(f"/cases/{case_id}")


@router.post("/cases/{case_id}/submit")
async def submit_case(case_id: str, p: PageDep, clients: ClientsDep, csrf_token: Csrf = "") -> Response:
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    try:
        submitted = await clients.dossier.SubmitCase(
            dossier_pb2.SubmitCaseRequest(idempotency_key=f"submit-case:{case_id}", case_id=case_id),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    case = submitted.case
    await workflow_bridge.start(
        clients,
        case.case_id,
        case.therapeutic_area,
        pb_enum_to_code(dossier_pb2.DoctorChoiceMode, case.doctor_choice_mode),
    )
    return p.redirect(f"/cases/{case_id}")


# --- payment (BIL-01, BIL-02, BIL-06) ------------------------------------------------------------


async def _order(clients: ServiceClients, caller: Caller, case: dossier_pb2.Case) -> billing_pb2.Order:
    """The case's order: the workflow's when it placed one, else placed now (same key)."""
    try:
        found = await clients.billing.GetOrder(
            billing_pb2.GetOrderRequest(case_id=case.case_id), metadata=caller.metadata
        )
        return found.order
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
    created = await clients.billing.CreateOrder(
        billing_pb2.CreateOrderRequest(
            idempotency_key=f"order:{case.case_id}",
            case_id=case.case_id,
            payer_account_id=caller.account_id,
            purpose=case.purpose,  # type: ignore[arg-type]  # same numbering in both protos
            therapeutic_area=case.therapeutic_area,
            doctor_count=max(1, case.requested_doctor_count, len(case.chosen_doctor_ids)),
        ),
        metadata=caller.metadata,
    )
    return created.order


def order_view(order: billing_pb2.Order) -> dict[str, Any]:
    return {
        "order_id": order.order_id,
        "reference": order.order_reference,
        "status": pb_enum_to_code(billing_pb2.OrderStatus, order.status),
        "total": f"{order.total_amount_cents / 100:.2f}",
        "currency": order.currency,
        "lines": [
            {
                "kind": pb_enum_to_code(billing_pb2.LineKind, line.kind),
                "amount": f"{line.total_amount_cents / 100:.2f}",
            }
            for line in order.lines
        ],
    }


@router.get("/cases/{case_id}/pay", response_class=HTMLResponse)
async def pay_page(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    try:
        case = await get_case(clients, caller, case_id)
        order = await _order(clients, caller, case)
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    outcome = p.request.query_params.get("payment", "")
    return p.render(
        "pay.html",
        case=case_view(case),
        order=order_view(order),
        outcome=outcome if outcome in ("accepted", "refused", "cancelled", "pending") else "",
        attempt_key=new_key(),
    )


@router.post("/cases/{case_id}/pay/card")
async def pay_by_card(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    attempt_key: Annotated[str, Form(min_length=8, max_length=64)],
    csrf_token: Csrf = "",
) -> Response:
    """The amount always comes from the order; the browser goes to the PSP's page with the
    signed fields (no card data ever reaches the platform, BIL-06)."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if limited := p.too_many("payment"):
        return limited
    try:
        case = await get_case(clients, caller, case_id)
        order = await _order(clients, caller, case)
        started = await clients.billing.StartCardPayment(
            billing_pb2.StartCardPaymentRequest(
                idempotency_key=f"card:{attempt_key}", order_id=order.order_id, locale=p.locale
            ),
            metadata=caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    action = urlsplit(started.form_action_url)
    response = p.render(
        "psp_redirect.html",
        action=started.form_action_url,
        fields=[(f.name, f.value) for f in started.form_fields],
        order=order_view(order),
    )
    # This page alone may post to the PSP's origin.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"form-action 'self' {action.scheme}://{action.netloc}; base-uri 'none'; "
        "frame-ancestors 'none'; object-src 'none'"
    )
    return response


@router.post("/cases/{case_id}/pay/coverage")
async def pay_with_coverage(
    case_id: str,
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(min_length=1, max_length=64)],
    attempt_key: Annotated[str, Form(min_length=8, max_length=64)],
    csrf_token: Csrf = "",
) -> Response:
    """BIL-01: a partner's coverage code; the person pays nothing."""
    caller = p.posted_by(require_patient(p), csrf_token)
    if isinstance(caller, Response):
        return caller
    if limited := p.too_many("payment"):
        return limited
    try:
        case = await get_case(clients, caller, case_id)
        applied = None
        try:
            applied = await workflow_bridge.update(
                clients, case_id, "apply_coverage_code", ApplyCoverageCode(code=code.strip()), CoverageApplied
            )
        except workflow_bridge.WorkflowRefused as refused:
            return p.message(409, error=p.t("form_error", detail=str(refused)))
        if applied is None:
            order = await _order(clients, caller, case)
            await clients.billing.ValidateCoverageCode(
                billing_pb2.ValidateCoverageCodeRequest(
                    idempotency_key=f"coverage:{attempt_key}", order_id=order.order_id, code=code.strip()
                ),
                metadata=caller.metadata,
            )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.FAILED_PRECONDITION):  # fmt: skip
            return p.message(400, error=p.t("coverage_refused"))
        return p.service_error(error)
    return p.redirect(f"/cases/{case_id}?covered=1")


async def after_psp_message(
    clients: ServiceClients, handled: billing_pb2.HandlePspNotificationResponse
) -> None:
    await workflow_bridge.signal(
        clients,
        handled.order.case_id,
        "payment_notified",
        PaymentNotified(payment_attempt_id=handled.payment_attempt.payment_attempt_id),
    )


# --- the report behind a fresh code (ACC-06, DOC-04) ---------------------------------------------


@router.get("/cases/{case_id}/report", response_class=HTMLResponse)
async def report_page(case_id: str, p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    if not caller.stepped_up:
        return p.redirect(f"/step-up?next=/cases/{case_id}/report")
    try:
        case = await get_case(clients, caller, case_id)
        listed = await clients.dossier.ListCaseReports(
            dossier_pb2.ListCaseReportsRequest(case_id=case_id), metadata=caller.metadata
        )
        reports = []
        for meta in listed.reports:
            if meta.status != dossier_pb2.REPORT_STATUS_SEALED:
                continue
            full = await clients.dossier.GetReport(
                dossier_pb2.GetReportRequest(report_id=meta.report_id), metadata=caller.metadata
            )
            report = full.report
            reports.append(
                {
                    "kind": pb_enum_to_code(dossier_pb2.ReportKind, report.kind),
                    "body": report.body,
                    "sealed_at": fmt_date(ts_or_none(report, "sealed_at"), with_time=True),
                    "seal": report.seal_sha256_hex,
                    "attachment_document_id": report.attachment_document_id,
                }
            )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    return p.render("report.html", case=case_view(case), reports=reports)


@router.get("/step-up", response_class=HTMLResponse)
async def step_up_form(p: PageDep) -> Response:
    if p.caller is None:
        return p.to_login()
    target = safe_next(p.request.query_params.get("next", "/dashboard"))
    return p.render("stepup.html", next=target, sent=bool(p.request.cookies.get(STEP_UP_COOKIE)))


STEP_UP_COOKIE = "so_stepup"


@router.post("/step-up/start")
async def step_up_start(
    p: PageDep,
    clients: ClientsDep,
    next: Annotated[str, Form(max_length=300)] = "/dashboard",
    csrf_token: Csrf = "",
) -> Response:
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("login_code"):
        return limited
    if next.startswith("/documents/"):
        purpose = identity_pb2.STEP_UP_PURPOSE_VIEW_DOCUMENTS
    elif next.startswith("/privacy/"):  # the export archive, an erasure request
        purpose = identity_pb2.STEP_UP_PURPOSE_EXPORT_DATA
    elif next.startswith("/account/contact"):
        purpose = identity_pb2.STEP_UP_PURPOSE_CHANGE_CREDENTIALS
    else:
        purpose = identity_pb2.STEP_UP_PURPOSE_VIEW_REPORT
    try:
        started = await clients.identity.StartStepUp(
            identity_pb2.StartStepUpRequest(idempotency_key=new_key(), purpose=purpose),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    response = p.render(
        "stepup.html",
        next=safe_next(next),
        sent=True,
        factor=pb_enum_to_code(identity_pb2.SecondFactorKind, started.factor),
    )
    p.set_cookie(response, STEP_UP_COOKIE, started.step_up_id, max_age=900, samesite="strict")
    return response


@router.post("/step-up/verify")
async def step_up_verify(
    p: PageDep,
    clients: ClientsDep,
    code: Annotated[str, Form(max_length=16)],
    next: Annotated[str, Form(max_length=300)] = "/dashboard",
    csrf_token: Csrf = "",
) -> Response:
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if limited := p.too_many("login_code"):
        return limited
    step_up_id = p.request.cookies.get(STEP_UP_COOKIE, "")
    if not step_up_id:
        return p.redirect(f"/step-up?next={quote(safe_next(next))}")
    try:
        await clients.identity.VerifyStepUp(
            identity_pb2.VerifyStepUpRequest(step_up_id=step_up_id, code=code.strip()),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return p.render("stepup.html", status=401, next=safe_next(next), sent=True, error=p.t("bad_code"))
        return p.service_error(error)
    response = p.redirect(safe_next(next))
    response.delete_cookie(STEP_UP_COOKIE, path="/")
    return response


# --- invoices (BIL-08) ------------------------------------------------------------------------


@router.get("/invoices", response_class=HTMLResponse)
async def invoices_page(p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.to_login()
    listed = await clients.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(page_size=100), metadata=p.caller.metadata
    )
    invoices = [
        {
            "invoice_id": i.invoice_id,
            "number": i.invoice_number,
            "kind": pb_enum_to_code(billing_pb2.InvoiceKind, i.kind),
            "total": f"{i.total_amount_cents / 100:.2f}",
            "currency": i.currency,
            "issued_at": fmt_date(i.issued_at.ToDatetime()),
        }
        for i in listed.invoices
    ]
    return p.render("invoices.html", invoices=invoices)


@router.get("/invoices/{invoice_id}")
async def download_invoice(invoice_id: str, p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.to_login()
    call = clients.billing.DownloadInvoice(
        billing_pb2.DownloadInvoiceRequest(invoice_id=invoice_id),
        metadata=p.caller.metadata,
        timeout=clients.transfer_timeout,
    )
    try:
        first: Any = await call.read()
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    if first is grpc.aio.EOF or first.WhichOneof("part") != "metadata":
        return p.not_found()

    async def body() -> Any:
        async for message in call:
            yield message.chunk

    name = f"{first.metadata.invoice_number or 'invoice'}.pdf"
    return p.finish(
        StreamingResponse(
            body(),
            media_type="application/pdf",
            headers={"Content-Disposition": content_disposition("attachment", name)},
        )
    )


# --- the account: texts and consents given, access history, withdrawal, closure ---------------


@router.get("/account", response_class=HTMLResponse)
async def account_page(p: PageDep, clients: ClientsDep) -> Response:
    """CNS-02: the terms, the notice and the consents given stay readable at any time."""
    if p.caller is None:
        return p.to_login()
    md = p.caller.metadata
    account, records, consents = await asyncio.gather(  # identity only: no log chain
        clients.identity.GetAccount(
            identity_pb2.GetAccountRequest(account_id=p.caller.account_id), metadata=md
        ),
        clients.identity.ListEvidenceRecords(
            identity_pb2.ListEvidenceRecordsRequest(account_id=p.caller.account_id, page_size=100),
            metadata=md,
        ),
        _optional(
            clients.identity.GetConsentStatus(
                identity_pb2.GetConsentStatusRequest(account_id=p.caller.account_id), metadata=md
            ),
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    )
    evidence = [
        {
            "kind": pb_enum_to_code(identity_pb2.EvidenceKind, r.kind),
            "text_kind": pb_enum_to_code(identity_pb2.LegalTextKind, r.text_kind) if r.text_kind else "",
            "text_id": r.text_id,
            "version": r.text_version,
            "consent": pb_enum_to_code(identity_pb2.ConsentKind, r.consent_kind) if r.consent_kind else "",
            "objection": pb_enum_to_code(identity_pb2.ObjectionKind, r.objection_kind)
            if r.objection_kind
            else "",
            "at": fmt_date(r.recorded_at.ToDatetime(), with_time=True),
            "for_beneficiary": bool(r.beneficiary_id),
        }
        for r in records.records
    ]
    given = (
        [pb_enum_to_code(identity_pb2.ConsentKind, c) for c in consents.given_consents] if consents else []
    )
    return p.render(
        "account.html",
        account={
            "email": account.account.email,
            "role": pb_enum_to_code(identity_pb2.AccountRole, account.account.role),
            "created_at": fmt_date(account.account.created_at.ToDatetime()),
        },
        evidence=evidence,
        given=given,
        form_key=new_key(),
    )


@router.get("/account/texts/{text_id}", response_class=HTMLResponse)
async def legal_text_page(text_id: str, p: PageDep, clients: ClientsDep) -> Response:
    if p.caller is None:
        return p.to_login()
    try:
        found = await clients.identity.GetLegalText(
            identity_pb2.GetLegalTextRequest(text_id=text_id), metadata=p.caller.metadata
        )
    except grpc.aio.AioRpcError as error:
        return p.not_found() if _is_missing(error) else p.service_error(error)
    text = found.text
    return p.render(
        "legal_text.html",
        text={
            "kind": pb_enum_to_code(identity_pb2.LegalTextKind, text.kind),
            "version": text.version,
            "body": text.body,
            "sha256": text.sha256_hex,
        },
    )


@router.get("/account/access-log", response_class=HTMLResponse)
async def access_log_page(p: PageDep, clients: ClientsDep) -> Response:
    caller = require_patient(p)
    if isinstance(caller, Response):
        return caller
    listed = await clients.dossier.ListAccessLog(
        dossier_pb2.ListAccessLogRequest(page_size=100), metadata=caller.metadata
    )
    entries = [
        {
            "at": fmt_date(e.occurred_at.ToDatetime(), with_time=True),
            "who": "self" if e.actor_account_id == caller.account_id else e.actor_role.lower(),
            "name": e.actor_display_name,
            "action": pb_enum_to_code(dossier_pb2.AccessAction, e.action),
            "object": pb_enum_to_code(dossier_pb2.AccessObjectKind, e.object_kind),
            "purpose": pb_enum_to_code(dossier_pb2.AccessPurpose, e.purpose),
        }
        for e in listed.entries
    ]
    return p.render("access_log.html", entries=entries)


@router.post("/account/consents/withdraw")
async def withdraw_consent(
    p: PageDep,
    clients: ClientsDep,
    kind: Annotated[str, Form(max_length=64)],
    confirm: Annotated[str, Form(max_length=3)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """CNS-06: withdrawing the health-data consent closes the account (the page says so)."""
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if confirm != "yes":
        return p.message(400, error=p.t("confirm_needed"))
    try:
        withdrawn = await clients.identity.WithdrawConsent(
            identity_pb2.WithdrawConsentRequest(
                idempotency_key=f"withdraw:{form_key or new_key()}",
                kind=code_to_pb_enum(identity_pb2.ConsentKind, kind),
                client=client_info(p.request),
            ),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    if withdrawn.account_closed:
        response = p.message(200, notice=p.t("account_closed"))
        response.delete_cookie(p.request.app.state.settings.session_cookie_name, path="/")
        return response
    return p.redirect("/account")


@router.post("/account/close")
async def close_account(
    p: PageDep,
    clients: ClientsDep,
    confirm: Annotated[str, Form(max_length=3)] = "",
    form_key: Annotated[str, Form(max_length=64)] = "",
    csrf_token: Csrf = "",
) -> Response:
    """ACC-11: closure archives the data, it does not delete it (the page says so)."""
    if p.caller is None:
        return p.to_login()
    if not p.csrf_ok(csrf_token):
        return p.forbidden()
    if confirm != "yes":
        return p.message(400, error=p.t("confirm_needed"))
    try:
        await clients.identity.CloseAccount(
            identity_pb2.CloseAccountRequest(
                idempotency_key=f"close:{form_key or new_key()}",
                account_id=p.caller.account_id,
                reason=identity_pb2.CLOSURE_REASON_USER_REQUEST,
            ),
            metadata=p.caller.metadata,
        )
    except grpc.aio.AioRpcError as error:
        return p.service_error(error)
    response = p.message(200, notice=p.t("account_closed"))
    response.delete_cookie(p.request.app.state.settings.session_cookie_name, path="/")
    return response
