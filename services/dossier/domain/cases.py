"""The case record: who files, for whom, which area, which purpose, which doctors, status."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.catalog import therapeutic_area_codes
from services.dossier.models import Case
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_CHOSEN_DOCTORS = 5  # CASE-13: one or several referent doctors, within reason.


class FilingCapacity(StrEnum):
    SELF = "self"
    LEGAL_REPRESENTATIVE_OF_MINOR = "legal_representative_of_minor"
    LEGAL_REPRESENTATIVE_OF_WARD = "legal_representative_of_ward"
    MANDATED_PERSON = "mandated_person"


class CasePurpose(StrEnum):
    SECOND_OPINION = "second_opinion"
    OPINION_BEFORE_INDEMNITY_CLAIM = "opinion_before_indemnity_claim"


class DoctorChoiceMode(StrEnum):
    PATIENT_CHOSEN = "patient_chosen"
    PLATFORM_CHOSEN = "platform_chosen"


class CaseStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"
    AWAITING_PAYMENT = "awaiting_payment"
    AWAITING_ASSIGNMENT = "awaiting_assignment"
    IN_REVIEW = "in_review"
    AWAITING_INFORMATION = "awaiting_information"
    ESCALATED = "escalated"
    REPORT_DELIVERED = "report_delivered"
    CLOSED = "closed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({CaseStatus.CLOSED, CaseStatus.CANCELLED})
# A report once delivered is never un-delivered; a closed case never reopens.
ALLOWED_TRANSITIONS: dict[CaseStatus, frozenset[CaseStatus]] = {
    CaseStatus.DRAFT: frozenset({CaseStatus.SUBMITTED, CaseStatus.CANCELLED}),
    CaseStatus.SUBMITTED: frozenset(
        {CaseStatus.AWAITING_PAYMENT, CaseStatus.AWAITING_ASSIGNMENT, CaseStatus.CANCELLED}
    ),
    CaseStatus.AWAITING_PAYMENT: frozenset({CaseStatus.AWAITING_ASSIGNMENT, CaseStatus.CANCELLED}),
    CaseStatus.AWAITING_ASSIGNMENT: frozenset(
        {CaseStatus.IN_REVIEW, CaseStatus.ESCALATED, CaseStatus.CANCELLED}
    ),
    CaseStatus.IN_REVIEW: frozenset(
        {
            CaseStatus.AWAITING_INFORMATION,
            CaseStatus.ESCALATED,
            CaseStatus.REPORT_DELIVERED,
            CaseStatus.AWAITING_ASSIGNMENT,
            CaseStatus.CANCELLED,
        }
    ),
    CaseStatus.AWAITING_INFORMATION: frozenset(
        {CaseStatus.IN_REVIEW, CaseStatus.ESCALATED, CaseStatus.CANCELLED}
    ),
    CaseStatus.ESCALATED: frozenset(
        {
            CaseStatus.IN_REVIEW,
            CaseStatus.AWAITING_ASSIGNMENT,
            CaseStatus.REPORT_DELIVERED,
            CaseStatus.CANCELLED,
        }
    ),
    CaseStatus.REPORT_DELIVERED: frozenset({CaseStatus.CLOSED}),
    CaseStatus.CLOSED: frozenset(),
    CaseStatus.CANCELLED: frozenset(),
}
# Staff whose task needs every case (with the health-data habilitation: issue 5).
CASE_STAFF = frozenset({Role.COORDINATOR})


@dataclass(frozen=True, slots=True)
class NewCase:
    filer_account_id: str
    filing_capacity: FilingCapacity
    therapeutic_area: str
    purpose: CasePurpose
    doctor_choice_mode: DoctorChoiceMode
    beneficiary_id: str = ""
    chosen_doctor_ids: list[str] = field(default_factory=list)


def _check_new_case(new: NewCase) -> None:
    if new.therapeutic_area not in therapeutic_area_codes():
        raise InvalidArgument("therapeutic_area is not in the catalog")
    if new.filing_capacity is FilingCapacity.SELF and new.beneficiary_id:
        raise InvalidArgument("beneficiary_id must be empty when filing for oneself")
    if new.filing_capacity is not FilingCapacity.SELF and not new.beneficiary_id:
        raise InvalidArgument("beneficiary_id is required when filing for someone else")
    chosen = new.chosen_doctor_ids
    if new.doctor_choice_mode is DoctorChoiceMode.PATIENT_CHOSEN:
        if not 1 <= len(chosen) <= MAX_CHOSEN_DOCTORS:
            raise InvalidArgument(f"choose 1 to {MAX_CHOSEN_DOCTORS} referent doctors")
        if len(set(chosen)) != len(chosen):
            raise InvalidArgument("chosen_doctor_ids has duplicates")
    elif chosen:
        raise InvalidArgument("chosen_doctor_ids must be empty when the platform chooses")


async def open_case(session: AsyncSession, new: NewCase) -> Case:
    _check_new_case(new)
    now = utcnow()
    case = Case(
        case_id=str(uuid.uuid4()),
        filer_account_id=new.filer_account_id,
        filing_capacity=new.filing_capacity.value,
        beneficiary_id=new.beneficiary_id,
        therapeutic_area=new.therapeutic_area,
        purpose=new.purpose.value,
        doctor_choice_mode=new.doctor_choice_mode.value,
        chosen_doctor_ids=list(new.chosen_doctor_ids),
        assigned_doctor_ids=[],
        status=CaseStatus.SUBMITTED.value,
        created_at=now,
        updated_at=now,
    )
    session.add(case)
    await session.flush()
    return case


def may_read(principal: Principal, case: Case) -> bool:
    if principal.is_service or principal.role in CASE_STAFF:
        return True
    if principal.role is Role.PATIENT:
        return principal.subject == case.filer_account_id
    if principal.role is Role.REFERENT_DOCTOR:
        return principal.subject in case.assigned_doctor_ids
    return False


async def read_case(session: AsyncSession, case_id: str, principal: Principal) -> Case:
    case = await session.get(Case, case_id) if case_id else None
    # Same answer for "absent" and "not yours": ids reveal nothing.
    if case is None or not may_read(principal, case):
        raise NotFound("case not found")
    return case


async def change_status(session: AsyncSession, case_id: str, status: CaseStatus) -> Case:
    case = await session.get(Case, case_id, with_for_update=True) if case_id else None
    if case is None:
        raise NotFound("case not found")
    current = CaseStatus(case.status)
    if status == current:
        return case  # reporting the same status twice is harmless (retries)
    if status not in ALLOWED_TRANSITIONS[current]:
        raise FailedPrecondition(f"a case cannot go from {current.value} to {status.value}")
    case.status = status.value
    case.updated_at = utcnow()
    await session.flush()
    return case
