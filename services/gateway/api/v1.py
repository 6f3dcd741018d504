"""Routes of the JSON API: thin, every rule is enforced by the services."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import Response, StreamingResponse
from secondopinion.billing.v1 import billing_pb2
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2

from services.gateway import workflow_bridge
from services.gateway.api.schemas import (
    PROBLEM_RESPONSES,
    AccountOut,
    CaseCreate,
    CaseList,
    CaseOut,
    DocumentList,
    DocumentOut,
    InvoiceList,
    InvoiceOut,
    MessageCreate,
    MessageList,
    MessageOut,
    OfferList,
    OfferOut,
    ReferentDoctorOut,
    ReferentDoctorPage,
    ReportList,
    ReportOut,
)
from services.gateway.dependencies import CallerDep, ClientsDep
from services.gateway.problems import problem
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code

router = APIRouter(prefix="/api/v1", responses=PROBLEM_RESPONSES)
Id = Annotated[str, Path(min_length=1, max_length=64)]
PageToken = Annotated[str, Query(max_length=64)]
IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", min_length=8, max_length=100)]


def case_out(case: dossier_pb2.Case) -> CaseOut:
    return CaseOut(
        case_id=case.case_id,
        filing_capacity=pb_enum_to_code(dossier_pb2.FilingCapacity, case.filing_capacity),
        therapeutic_area=case.therapeutic_area,
        purpose=pb_enum_to_code(dossier_pb2.CasePurpose, case.purpose),
        doctor_choice_mode=pb_enum_to_code(dossier_pb2.DoctorChoiceMode, case.doctor_choice_mode),
        chosen_doctor_ids=list(case.chosen_doctor_ids),
        assigned_doctor_ids=list(case.assigned_doctor_ids),
        status=pb_enum_to_code(dossier_pb2.CaseStatus, case.status),
        created_at=case.created_at.ToDatetime(tzinfo=UTC),
        updated_at=case.updated_at.ToDatetime(tzinfo=UTC),
    )


@router.get("/me")
async def read_me(caller: CallerDep, clients: ClientsDep) -> AccountOut:
    response = await clients.identity.GetAccount(
        identity_pb2.GetAccountRequest(account_id=caller.account_id), metadata=caller.metadata
    )
    account = response.account
    return AccountOut(
        account_id=account.account_id,
        role=pb_enum_to_code(identity_pb2.AccountRole, account.role),
        email=account.email,
        display_name=account.display_name,
        status=pb_enum_to_code(identity_pb2.AccountStatus, account.status),
    )


@router.post("/cases", status_code=201)
async def create_case(
    body: CaseCreate, idempotency_key: IdempotencyKey, caller: CallerDep, clients: ClientsDep
) -> CaseOut:
    response = await clients.dossier.CreateCase(
        dossier_pb2.CreateCaseRequest(
            idempotency_key=idempotency_key,
            filing_capacity=code_to_pb_enum(dossier_pb2.FilingCapacity, body.filing_capacity),
            therapeutic_area=body.therapeutic_area,
            purpose=code_to_pb_enum(dossier_pb2.CasePurpose, body.purpose),
            doctor_choice_mode=code_to_pb_enum(dossier_pb2.DoctorChoiceMode, body.doctor_choice_mode),
            chosen_doctor_ids=body.chosen_doctor_ids,
            beneficiary_id=body.beneficiary_id,
        ),
        metadata=caller.metadata,
    )
    case = response.case
    if case.status != dossier_pb2.CASE_STATUS_DRAFT:
        # One workflow per case; a retried request finds the running one.
        await workflow_bridge.start(clients, case.case_id, case.therapeutic_area, body.doctor_choice_mode)
    return case_out(case)


@router.get("/cases/{case_id}")
async def read_case(case_id: Id, caller: CallerDep, clients: ClientsDep) -> CaseOut:
    response = await clients.dossier.GetCase(
        dossier_pb2.GetCaseRequest(case_id=case_id), metadata=caller.metadata
    )
    return case_out(response.case)


@router.get("/referent-doctors")
async def list_referent_doctors(
    caller: CallerDep,
    clients: ClientsDep,
    therapeutic_area: Annotated[str, Query(max_length=64)] = "",
    page_token: Annotated[str, Query(max_length=64)] = "",
) -> ReferentDoctorPage:
    response = await clients.matching.ListReferentDoctors(
        matching_pb2.ListReferentDoctorsRequest(
            therapeutic_area=therapeutic_area, page_size=50, page_token=page_token
        ),
        metadata=caller.metadata,
    )
    return ReferentDoctorPage(
        doctors=[
            ReferentDoctorOut(
                doctor_id=d.doctor_id,
                display_name=d.display_name,
                therapeutic_areas=list(d.therapeutic_areas),
                languages=list(d.languages),
            )
            for d in response.doctors
        ],
        next_page_token=response.next_page_token,
    )


def _when(message: object, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    value: datetime = getattr(message, field).ToDatetime().replace(tzinfo=UTC)
    return value


@router.get("/cases")
async def list_cases(caller: CallerDep, clients: ClientsDep, page_token: PageToken = "") -> CaseList:
    """The caller's requests (patients) or assigned cases (referent doctors)."""
    scope = (
        dossier_pb2.CASE_LIST_SCOPE_ASSIGNED_TO_ME
        if caller.role == "referent_doctor"
        else dossier_pb2.CASE_LIST_SCOPE_MINE
    )
    response = await clients.dossier.ListCases(
        dossier_pb2.ListCasesRequest(scope=scope, page_size=50, page_token=page_token),
        metadata=caller.metadata,
    )
    return CaseList(cases=[case_out(c) for c in response.cases], next_page_token=response.next_page_token)


def document_out(d: dossier_pb2.Document) -> DocumentOut:
    from services.gateway.web.patient import CONTENT_TYPES

    return DocumentOut(
        document_id=d.document_id,
        case_id=d.case_id,
        purpose=pb_enum_to_code(dossier_pb2.DocumentPurpose, d.purpose),
        file_name=d.file_name,
        content_type=CONTENT_TYPES.get(d.content_type, ""),
        size_bytes=d.size_bytes,
        status=pb_enum_to_code(dossier_pb2.DocumentStatus, d.status),
        source=pb_enum_to_code(dossier_pb2.DocumentSource, d.source),
        uploaded_at=d.uploaded_at.ToDatetime().replace(tzinfo=UTC),
    )


@router.get("/cases/{case_id}/documents")
async def list_documents(
    case_id: Id, caller: CallerDep, clients: ClientsDep, page_token: PageToken = ""
) -> DocumentList:
    response = await clients.dossier.ListDocuments(
        dossier_pb2.ListDocumentsRequest(case_id=case_id, page_token=page_token), metadata=caller.metadata
    )
    return DocumentList(
        documents=[document_out(d) for d in response.documents], next_page_token=response.next_page_token
    )


@router.get("/documents/{document_id}")
async def read_document(document_id: Id, caller: CallerDep, clients: ClientsDep) -> DocumentOut:
    response = await clients.dossier.GetDocument(
        dossier_pb2.GetDocumentRequest(document_id=document_id), metadata=caller.metadata
    )
    return document_out(response.document)


def _step_up_required() -> Response:
    return problem(403, "Fresh code required", "confirm with a fresh code first (step-up, ACC-06)")


@router.get(
    "/documents/{document_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The document's bytes"}},
)
async def download_document(document_id: Id, caller: CallerDep, clients: ClientsDep) -> Response:
    from services.gateway.web.patient import CONTENT_TYPES, content_disposition

    if caller.role == "patient" and not caller.stepped_up:
        return _step_up_required()
    call = clients.dossier.DownloadDocument(
        dossier_pb2.DownloadDocumentRequest(document_id=document_id),
        metadata=caller.metadata,
        timeout=clients.transfer_timeout,
    )
    first: Any = await call.read()
    if first is grpc.aio.EOF or first.WhichOneof("part") != "metadata":
        return problem(404, "Not found", "document not found")

    async def body() -> AsyncIterator[bytes]:
        async for message in call:
            yield message.chunk

    return StreamingResponse(
        body(),
        media_type=CONTENT_TYPES.get(first.metadata.content_type, "application/octet-stream"),
        headers={"Content-Disposition": content_disposition("attachment", first.metadata.file_name)},
    )


def message_out(m: dossier_pb2.ThreadMessage, me: str) -> MessageOut:
    return MessageOut(
        message_id=m.message_id,
        case_id=m.case_id,
        kind=pb_enum_to_code(dossier_pb2.MessageKind, m.kind),
        body=m.body,
        mine=m.sender_account_id == me,
        hidden=m.hidden,
        sent_at=m.sent_at.ToDatetime().replace(tzinfo=UTC),
        in_reply_to_message_id=m.in_reply_to_message_id,
    )


@router.get("/cases/{case_id}/messages")
async def list_messages(
    case_id: Id, caller: CallerDep, clients: ClientsDep, page_token: PageToken = ""
) -> MessageList:
    response = await clients.dossier.ListMessages(
        dossier_pb2.ListMessagesRequest(case_id=case_id, page_token=page_token), metadata=caller.metadata
    )
    return MessageList(
        messages=[message_out(m, caller.account_id) for m in response.messages],
        next_page_token=response.next_page_token,
    )


@router.post("/cases/{case_id}/messages", status_code=201)
async def send_message(
    case_id: Id, body: MessageCreate, idempotency_key: IdempotencyKey, caller: CallerDep, clients: ClientsDep
) -> MessageOut:
    kind = (
        dossier_pb2.MESSAGE_KIND_INFORMATION_RESPONSE
        if body.in_reply_to_message_id
        else dossier_pb2.MESSAGE_KIND_GENERAL
    )
    response = await clients.dossier.SendMessage(
        dossier_pb2.SendMessageRequest(
            idempotency_key=idempotency_key, case_id=case_id, kind=kind, body=body.body,
            in_reply_to_message_id=body.in_reply_to_message_id,
        ),
        metadata=caller.metadata,
    )  # fmt: skip
    return message_out(response.message, caller.account_id)


def report_out(r: dossier_pb2.Report) -> ReportOut:
    return ReportOut(
        report_id=r.report_id,
        case_id=r.case_id,
        kind=pb_enum_to_code(dossier_pb2.ReportKind, r.kind),
        status=pb_enum_to_code(dossier_pb2.ReportStatus, r.status),
        body=r.body,
        sealed_at=_when(r, "sealed_at"),
        seal_sha256_hex=r.seal_sha256_hex,
    )


@router.get("/cases/{case_id}/reports")
async def list_reports(case_id: Id, caller: CallerDep, clients: ClientsDep) -> ReportList:
    """Metadata only; the text is read one report at a time, behind a fresh code."""
    response = await clients.dossier.ListCaseReports(
        dossier_pb2.ListCaseReportsRequest(case_id=case_id), metadata=caller.metadata
    )
    return ReportList(reports=[report_out(r) for r in response.reports])


@router.get("/reports/{report_id}", response_model=ReportOut)
async def read_report(report_id: Id, caller: CallerDep, clients: ClientsDep) -> Response | ReportOut:
    if caller.role == "patient" and not caller.stepped_up:
        # The same answer for any id: nothing about the report is revealed.
        return _step_up_required()
    response = await clients.dossier.GetReport(
        dossier_pb2.GetReportRequest(report_id=report_id), metadata=caller.metadata
    )
    return report_out(response.report)


def invoice_out(i: billing_pb2.Invoice) -> InvoiceOut:
    return InvoiceOut(
        invoice_id=i.invoice_id,
        invoice_number=i.invoice_number,
        kind=pb_enum_to_code(billing_pb2.InvoiceKind, i.kind),
        case_id=i.case_id,
        total_amount_cents=i.total_amount_cents,
        currency=i.currency,
        issued_at=i.issued_at.ToDatetime().replace(tzinfo=UTC),
    )


@router.get("/invoices")
async def list_invoices(caller: CallerDep, clients: ClientsDep, page_token: PageToken = "") -> InvoiceList:
    response = await clients.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(page_size=50, page_token=page_token), metadata=caller.metadata
    )
    return InvoiceList(
        invoices=[invoice_out(i) for i in response.invoices], next_page_token=response.next_page_token
    )


@router.get("/invoices/{invoice_id}")
async def read_invoice(invoice_id: Id, caller: CallerDep, clients: ClientsDep) -> InvoiceOut:
    response = await clients.billing.GetInvoice(
        billing_pb2.GetInvoiceRequest(invoice_id=invoice_id), metadata=caller.metadata
    )
    return invoice_out(response.invoice)


@router.get(
    "/invoices/{invoice_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/pdf": {}}, "description": "The archived invoice"}},
)
async def download_invoice(invoice_id: Id, caller: CallerDep, clients: ClientsDep) -> Response:
    from services.gateway.web.patient import content_disposition

    call = clients.billing.DownloadInvoice(
        billing_pb2.DownloadInvoiceRequest(invoice_id=invoice_id),
        metadata=caller.metadata,
        timeout=clients.transfer_timeout,
    )
    first: Any = await call.read()
    if first is grpc.aio.EOF or first.WhichOneof("part") != "metadata":
        return problem(404, "Not found", "invoice not found")

    async def body() -> AsyncIterator[bytes]:
        async for message in call:
            yield message.chunk

    name = f"{first.metadata.invoice_number or 'invoice'}.pdf"
    return StreamingResponse(
        body(),
        media_type="application/pdf",
        headers={"Content-Disposition": content_disposition("attachment", name)},
    )


def offer_out(o: matching_pb2.Offer) -> OfferOut:
    return OfferOut(
        offer_id=o.offer_id,
        case_id=o.case_id,
        status=pb_enum_to_code(matching_pb2.OfferStatus, o.status),
        therapeutic_area=o.therapeutic_area,
        respond_by=_when(o, "respond_by"),
        review_deadline_at=_when(o, "review_deadline_at"),
    )


@router.get("/offers")
async def list_offers(caller: CallerDep, clients: ClientsDep) -> OfferList:
    """The calling referent doctor's pending offers."""
    response = await clients.matching.ListOffers(
        matching_pb2.ListOffersRequest(statuses=[matching_pb2.OFFER_STATUS_PENDING], page_size=50),
        metadata=caller.metadata,
    )
    return OfferList(offers=[offer_out(o) for o in response.offers])
