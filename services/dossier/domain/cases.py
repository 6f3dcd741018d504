"""The case record: who files, for whom, which area, which purpose, which doctors, status."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.catalog import therapeutic_area_codes
from services.dossier.models import Assignment, Case, DoctorOpposition
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MAX_CHOSEN_DOCTORS = 5  # CASE-13: one or several referent doctors, within reason.
# Unambiguous characters (no 0/O, 1/I/L, U/V confusion) for references read aloud.
REFERENCE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"


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


@dataclass(frozen=True, slots=True)
class NewCase:
    filer_account_id: str
    filing_capacity: FilingCapacity
    therapeutic_area: str
    purpose: CasePurpose
    doctor_choice_mode: DoctorChoiceMode
    beneficiary_id: str = ""
    chosen_doctor_ids: list[str] = field(default_factory=list)
    # CASE-14: staff account that entered the request under the personal-assistant mandate.
    entered_by_account_id: str = ""
    # Platform-chosen mode: how many referent doctors are asked (0 means 1).
    requested_doctor_count: int = 0


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
        if new.requested_doctor_count not in (0, len(chosen)):
            raise InvalidArgument("requested_doctor_count must match the chosen doctors (or be 0)")
    elif chosen:
        raise InvalidArgument("chosen_doctor_ids must be empty when the platform chooses")
    elif not 0 <= new.requested_doctor_count <= MAX_CHOSEN_DOCTORS:
        raise InvalidArgument(f"requested_doctor_count is 1 to {MAX_CHOSEN_DOCTORS} (0 means 1)")


def new_reference() -> str:
    """Opaque and non-guessable (about 40 bits), e.g. "SO-7K3M-Q9TX"."""
    groups = ("".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(4)) for _ in range(2))
    return "SO-" + "-".join(groups)


async def _unused_reference(session: AsyncSession) -> str:
    for _ in range(10):
        reference = new_reference()
        if await session.scalar(select(Case.case_id).where(Case.case_reference == reference)) is None:
            return reference
    raise AlreadyExists("could not allocate a case reference; try again")  # pragma: no cover


async def open_case(session: AsyncSession, new: NewCase) -> Case:
    _check_new_case(new)
    now = utcnow()
    count = len(new.chosen_doctor_ids) if new.chosen_doctor_ids else max(1, new.requested_doctor_count)
    case = Case(
        case_id=str(uuid.uuid4()),
        case_reference=await _unused_reference(session),
        requested_doctor_count=count,
        filer_account_id=new.filer_account_id,
        filing_capacity=new.filing_capacity.value,
        beneficiary_id=new.beneficiary_id,
        therapeutic_area=new.therapeutic_area,
        purpose=new.purpose.value,
        doctor_choice_mode=new.doctor_choice_mode.value,
        chosen_doctor_ids=list(new.chosen_doctor_ids),
        assigned_doctor_ids=[],
        # Created submitted: the case workflow starts from the creation (see SubmitCase).
        status=CaseStatus.SUBMITTED.value,
        submitted_at=now,
        created_at=now,
        updated_at=now,
        entered_under_mandate=bool(new.entered_by_account_id),
        entered_by_account_id=new.entered_by_account_id,
    )
    session.add(case)
    await session.flush()
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


class AssignmentEndReason(StrEnum):
    COMPLETED = "completed"
    REASSIGNED = "reassigned"
    CASE_CANCELLED = "case_cancelled"
    OPPOSED_BY_PATIENT = "opposed_by_patient"


async def record_assignment(
    session: AsyncSession, case: Case, assignment_id: str, doctor_id: str, doctor_account_id: str
) -> Assignment:
    """The workflow assigned a doctor: they gain access (DOC-02), unless the patient opposed them."""
    if not assignment_id or not doctor_id or not doctor_account_id:
        raise InvalidArgument("assignment_id, doctor_id and doctor_account_id are required")
    if case.status in (CaseStatus.CLOSED, CaseStatus.CANCELLED):
        raise FailedPrecondition("the case is closed")
    opposed = await session.scalar(
        select(DoctorOpposition.opposition_id).where(
            DoctorOpposition.case_id == case.case_id, DoctorOpposition.doctor_id == doctor_id
        )
    )
    if opposed:
        raise FailedPrecondition("the patient opposed this doctor's access to the case")
    existing = await session.get(Assignment, assignment_id)
    if existing is not None:
        if existing.case_id != case.case_id or existing.doctor_id != doctor_id:
            raise AlreadyExists("assignment_id is already used for another case or doctor")
        return existing
    assignment = Assignment(
        assignment_id=assignment_id,
        case_id=case.case_id,
        doctor_id=doctor_id,
        doctor_account_id=doctor_account_id,
        started_at=utcnow(),
        ended_at=None,
        end_reason="",
    )
    session.add(assignment)
    if doctor_id not in case.assigned_doctor_ids:
        case.assigned_doctor_ids = [*case.assigned_doctor_ids, doctor_id]
    case.updated_at = utcnow()
    await session.flush()
    return assignment


async def end_assignment(
    session: AsyncSession, assignment: Assignment, case: Case, reason: AssignmentEndReason
) -> Assignment:
    """The doctor loses access at once."""
    if assignment.ended_at is not None:
        return assignment  # already ended (a retry, or an opposition came first)
    assignment.ended_at = utcnow()
    assignment.end_reason = reason.value
    still_active = await session.scalar(
        select(Assignment.assignment_id).where(
            Assignment.case_id == case.case_id,
            Assignment.doctor_id == assignment.doctor_id,
            Assignment.ended_at.is_(None),
            Assignment.assignment_id != assignment.assignment_id,
        )
    )
    if not still_active:
        case.assigned_doctor_ids = [d for d in case.assigned_doctor_ids if d != assignment.doctor_id]
    case.updated_at = utcnow()
    await session.flush()
    return assignment


async def oppose_doctor(
    session: AsyncSession, case: Case, doctor_id: str, by_account_id: str
) -> tuple[DoctorOpposition, Assignment | None]:
    """DOC-03: the doctor's access ends now and no later assignment can restore it."""
    if not doctor_id:
        raise InvalidArgument("doctor_id is required")
    opposition = await session.scalar(
        select(DoctorOpposition).where(
            DoctorOpposition.case_id == case.case_id, DoctorOpposition.doctor_id == doctor_id
        )
    )
    if opposition is None:
        opposition = DoctorOpposition(
            opposition_id=str(uuid.uuid4()),
            case_id=case.case_id,
            doctor_id=doctor_id,
            opposed_by_account_id=by_account_id,
            opposed_at=utcnow(),
        )
        session.add(opposition)
    ended: Assignment | None = None
    active = (
        await session.scalars(
            select(Assignment).where(
                Assignment.case_id == case.case_id,
                Assignment.doctor_id == doctor_id,
                Assignment.ended_at.is_(None),
            )
        )
    ).all()
    for assignment in active:
        ended = await end_assignment(session, assignment, case, AssignmentEndReason.OPPOSED_BY_PATIENT)
    await session.flush()
    return opposition, ended


async def list_assignments(session: AsyncSession, case_id: str) -> list[Assignment]:
    return list(
        (
            await session.scalars(
                select(Assignment).where(Assignment.case_id == case_id).order_by(Assignment.started_at)
            )
        ).all()
    )


# Open cases whose review clock runs (CASE-12: the coordinators' at-risk view).
AT_RISK_STATUSES = (CaseStatus.IN_REVIEW.value, CaseStatus.AWAITING_INFORMATION.value)
DEFAULT_AT_RISK_WITHIN = timedelta(hours=24)
MAX_AT_RISK_WITHIN = timedelta(days=30)


def at_risk_before(now: datetime, within: timedelta | None) -> datetime:
    """The deadline bound of the at-risk listing (overdue cases included)."""
    window = DEFAULT_AT_RISK_WITHIN if within is None else within
    if window <= timedelta(0) or window > MAX_AT_RISK_WITHIN:
        raise InvalidArgument("at_risk_within must be above zero and at most 30 days")
    return now + window
