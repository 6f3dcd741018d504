"""Request and response bodies of the JSON API. Bodies carry only what the caller may set:
ids of doctors, status or amounts are never accepted from a person (API3)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

FilingCapacityCode = Literal[
    "self", "legal_representative_of_minor", "legal_representative_of_ward", "mandated_person"
]
PurposeCode = Literal["second_opinion", "opinion_before_indemnity_claim"]
ChoiceModeCode = Literal["patient_chosen", "platform_chosen"]


class StrictBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccountOut(BaseModel):
    account_id: str
    role: str
    email: str
    display_name: str
    status: str


class CaseCreate(StrictBody):
    filing_capacity: FilingCapacityCode
    therapeutic_area: str = Field(min_length=1, max_length=64)
    purpose: PurposeCode
    doctor_choice_mode: ChoiceModeCode
    chosen_doctor_ids: list[str] = Field(default_factory=list, max_length=5)
    beneficiary_id: str = Field(default="", max_length=36)


class CaseOut(BaseModel):
    case_id: str
    filing_capacity: str
    therapeutic_area: str
    purpose: str
    doctor_choice_mode: str
    chosen_doctor_ids: list[str]
    assigned_doctor_ids: list[str]
    status: str
    created_at: datetime
    updated_at: datetime


class ReferentDoctorOut(BaseModel):
    doctor_id: str
    display_name: str
    therapeutic_areas: list[str]
    languages: list[str]


class ReferentDoctorPage(BaseModel):
    doctors: list[ReferentDoctorOut]
    next_page_token: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str


_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
PROBLEM_RESPONSES: dict[int | str, dict[str, object]] = {
    400: {"description": "Invalid request", "content": _PROBLEM},
    401: {"description": "Authentication required", "content": _PROBLEM},
    403: {"description": "Not allowed (or a fresh code is needed)", "content": _PROBLEM},
    404: {"description": "Not found (or not yours)", "content": _PROBLEM},
    409: {"description": "Conflicts with the current state", "content": _PROBLEM},
    422: {"description": "Invalid or missing fields", "content": _PROBLEM},
    429: {"description": "Too many requests (see Retry-After)", "content": _PROBLEM},
    501: {"description": "Not available yet", "content": _PROBLEM},
    503: {"description": "A service is temporarily unavailable (see Retry-After)", "content": _PROBLEM},
}


class CaseList(BaseModel):
    cases: list[CaseOut]
    next_page_token: str


class DocumentOut(BaseModel):
    document_id: str
    case_id: str
    purpose: str
    file_name: str
    content_type: str
    size_bytes: int
    status: str
    source: str
    uploaded_at: datetime


class DocumentList(BaseModel):
    documents: list[DocumentOut]
    next_page_token: str


class MessageOut(BaseModel):
    message_id: str
    case_id: str
    kind: str
    body: str
    mine: bool
    hidden: bool
    sent_at: datetime
    in_reply_to_message_id: str


class MessageList(BaseModel):
    messages: list[MessageOut]
    next_page_token: str


class MessageCreate(StrictBody):
    body: str = Field(min_length=1, max_length=20_000)
    in_reply_to_message_id: str = Field(default="", max_length=64)


class ReportOut(BaseModel):
    report_id: str
    case_id: str
    kind: str
    status: str
    body: str
    sealed_at: datetime | None
    seal_sha256_hex: str


class ReportList(BaseModel):
    reports: list[ReportOut]


class InvoiceOut(BaseModel):
    invoice_id: str
    invoice_number: str
    kind: str
    case_id: str
    total_amount_cents: int
    currency: str
    issued_at: datetime


class InvoiceList(BaseModel):
    invoices: list[InvoiceOut]
    next_page_token: str


class OfferOut(BaseModel):
    offer_id: str
    case_id: str
    status: str
    therapeutic_area: str
    respond_by: datetime | None
    review_deadline_at: datetime | None


class OfferList(BaseModel):
    offers: list[OfferOut]
