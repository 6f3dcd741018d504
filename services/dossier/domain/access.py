"""Access rules, checked for every call from the verified token (never a request field).

- The filer (and so the person they act for, whom they represent) sees their cases.
- A referent doctor sees a case only while assigned to it (RecordAssignment by the case
  workflow) and not opposed by the patient (DOC-02, DOC-03).
- A coordinator needs the health-data habilitation (SEC-05), read from the verified
  token's habilitation claim (identity grants it and puts it in every token it mints; a
  revocation shows at the next token, so within the token lifetime, 5 minutes).
- Coordinators holding the personal-assistant habilitation (same claim) may fill data in
  for the patient; what they enter is marked as entered under the mandate (CASE-14).
- The case workflow (service `worker`) acts as the platform.
- Partners, referring doctors, DPO and administrators never see a case's content.

A refusal answers NOT_FOUND (ids reveal nothing) and is itself logged when the case exists.
An archived case is out of day-to-day reach (RET-07): every normal path answers NOT_FOUND;
only the explicit archive-read path reads it (the DPO, or a coordinator holding the
archive-access habilitation: `AccessPolicy.archive_reader`). A restricted case (GDPR-04)
is kept but not processed: only the person reads it (see `Gate.resolve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain.accesslog import Purpose
from services.dossier.models import Assignment, Case, DoctorOpposition
from services.shared.auth import Habilitation, Principal, Role
from services.shared.errors import NotFound


class Need(StrEnum):
    """What the caller wants to do with the case."""

    READ = "read"  # read the file
    FILL_IN = "fill_in"  # write the patient's side: forms, notes, documents, messages as the filer
    REVIEW = "review"  # the doctor's side: flag, report, request information
    COORDINATE = "coordinate"  # staff: add postal documents, act on the queue
    PLATFORM = "platform"  # the case workflow


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    platform_services: frozenset[str]

    def health_data_habilitated(self, principal: Principal) -> bool:
        return principal.role is Role.COORDINATOR and principal.holds(Habilitation.HEALTH_DATA)

    def personal_assistant(self, principal: Principal) -> bool:
        return principal.role is Role.COORDINATOR and principal.holds(Habilitation.PERSONAL_ASSISTANT)

    def archive_reader(self, principal: Principal) -> bool:
        """RET-07: the DPO, or a coordinator holding the archive-access habilitation."""
        return principal.role is Role.DPO or (
            principal.role is Role.COORDINATOR and principal.holds(Habilitation.ARCHIVE_ACCESS)
        )

    def platform(self, principal: Principal) -> bool:
        return principal.is_service and principal.subject in self.platform_services


@dataclass(frozen=True, slots=True)
class CaseAccess:
    principal: Principal
    case: Case
    purpose: Purpose
    # Matching-service doctor id of the calling doctor's active assignment.
    doctor_id: str = ""

    @property
    def under_mandate(self) -> bool:
        return self.purpose is Purpose.PERSONAL_ASSISTANT

    @property
    def filer_side(self) -> bool:
        return self.purpose in (Purpose.OWN_SPACE, Purpose.PERSONAL_ASSISTANT)

    @property
    def doctor_side(self) -> bool:
        return self.purpose is Purpose.CASE_REVIEW


class AccessRefused(NotFound):
    """Not allowed; answered as NOT_FOUND. Carries the case (if it exists) for the log."""

    def __init__(self, case: Case | None) -> None:
        super().__init__("case not found")
        # A detached copy of what the log needs: the session's objects expire on rollback.
        self.case = (
            Case(
                case_id=case.case_id,
                filer_account_id=case.filer_account_id,
                beneficiary_id=case.beneficiary_id,
            )
            if case is not None
            else None
        )


async def active_assignment(session: AsyncSession, case_id: str, doctor_account_id: str) -> Assignment | None:
    assignment = await session.scalar(
        select(Assignment)
        .where(
            Assignment.case_id == case_id,
            Assignment.doctor_account_id == doctor_account_id,
            Assignment.ended_at.is_(None),
        )
        .limit(1)
    )
    if assignment is None:
        return None
    opposed = await session.scalar(
        select(DoctorOpposition.opposition_id).where(
            DoctorOpposition.case_id == case_id, DoctorOpposition.doctor_id == assignment.doctor_id
        )
    )
    return None if opposed else assignment


async def resolve(
    session: AsyncSession, policy: AccessPolicy, principal: Principal, case_id: str, need: Need
) -> CaseAccess:
    case = await session.get(Case, case_id) if case_id else None
    if case is None or case.archived_at is not None:
        raise AccessRefused(None)
    access = await _decide(session, policy, principal, case, need)
    if access is None:
        raise AccessRefused(case)
    return access


async def _decide(
    session: AsyncSession, policy: AccessPolicy, principal: Principal, case: Case, need: Need
) -> CaseAccess | None:
    role = principal.role
    if need is Need.PLATFORM:
        return (
            CaseAccess(principal, case, Purpose.PLATFORM_PROCESSING) if policy.platform(principal) else None
        )
    if role is Role.SERVICE:
        if policy.platform(principal) and need is Need.READ:
            return CaseAccess(principal, case, Purpose.PLATFORM_PROCESSING)
        return None
    if role is Role.PATIENT:
        if principal.subject == case.filer_account_id and need in (Need.READ, Need.FILL_IN):
            return CaseAccess(principal, case, Purpose.OWN_SPACE)
        return None
    if role is Role.REFERENT_DOCTOR:
        if need not in (Need.READ, Need.REVIEW):
            return None
        assignment = await active_assignment(session, case.case_id, principal.subject)
        if assignment is None:
            return None
        return CaseAccess(principal, case, Purpose.CASE_REVIEW, doctor_id=assignment.doctor_id)
    if role is Role.COORDINATOR:
        if need is Need.FILL_IN:
            return (
                CaseAccess(principal, case, Purpose.PERSONAL_ASSISTANT)
                if policy.personal_assistant(principal)
                else None
            )
        if need in (Need.READ, Need.COORDINATE) and policy.health_data_habilitated(principal):
            return CaseAccess(principal, case, Purpose.COORDINATION)
        if need is Need.READ and policy.personal_assistant(principal):
            return CaseAccess(principal, case, Purpose.PERSONAL_ASSISTANT)
        return None
    # Partners, referring doctors, DPO, administrators: never the content of a case.
    return None
