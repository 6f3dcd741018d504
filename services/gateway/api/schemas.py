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
