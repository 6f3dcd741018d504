"""Typed inputs and outputs of the case workflow and its activities (one model each)."""

from __future__ import annotations

from pydantic import BaseModel


class CaseWorkflowInput(BaseModel):
    case_id: str
    therapeutic_area: str
    doctor_choice_mode: str


class CaseWorkflowResult(BaseModel):
    case_id: str
    status: str
    candidate_doctor_count: int


class ListCandidatesInput(BaseModel):
    therapeutic_area: str


class ListCandidatesResult(BaseModel):
    doctor_ids: list[str]


class ReportCaseStatusInput(BaseModel):
    case_id: str
    status: str
    idempotency_key: str


def case_workflow_id(case_id: str) -> str:
    return f"case-{case_id}"
