"""Reassignment when a review deadline is at risk: release the current doctor and pick
replacements among the doctors never tried on the case."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain.offers import (
    ReleaseReason,
    check_case_id,
    get_assignment,
    release_assignment,
    tried_doctor_ids,
)
from services.matching.domain.picking import Outcome, PickRequest, outcome_from_json, outcome_to_json, propose
from services.matching.models import Assignment, Reassignment
from services.shared.errors import NotFound


class ReassignmentReason(enum.Enum):
    DEADLINE_AT_RISK = "deadline_at_risk"
    DOCTOR_UNAVAILABLE = "doctor_unavailable"
    OPPOSED_BY_PATIENT = "opposed_by_patient"


@dataclass(frozen=True, slots=True)
class ReassignmentResult:
    reassignment_id: str
    released: Assignment | None
    outcome: Outcome


async def reassign_case(
    session: AsyncSession,
    request: PickRequest,
    assignment_id: str,
    reason: ReassignmentReason,
    now: datetime,
) -> ReassignmentResult:
    check_case_id(request.case_id)
    released: Assignment | None = None
    if assignment_id:
        # Already released (completed, cancelled, released by an earlier step): nothing to
        # release, the replacement is still proposed.
        assignment = await get_assignment(session, assignment_id)
        if assignment.case_id != request.case_id:
            raise NotFound("assignment not found")
        if assignment.released_at is None:
            release_reason = (
                ReleaseReason.OPPOSED_BY_PATIENT
                if reason is ReassignmentReason.OPPOSED_BY_PATIENT
                else ReleaseReason.REASSIGNED
            )
            released = await release_assignment(session, assignment_id, release_reason, now)
    # Every doctor ever offered the case (the released one included) is left out.
    outcome = await propose(
        session, request, now, extra_excluded=await tried_doctor_ids(session, request.case_id)
    )
    record = Reassignment(
        reassignment_id=str(uuid.uuid4()),
        case_id=request.case_id,
        released_assignment_id=released.assignment_id if released else None,
        reason=reason.value,
        outcome=outcome_to_json(outcome),
        created_at=now,
    )
    session.add(record)
    await session.flush()
    return ReassignmentResult(record.reassignment_id, released, outcome)


async def get_reassignment(session: AsyncSession, reassignment_id: str) -> ReassignmentResult:
    record = await session.get(Reassignment, reassignment_id)
    if record is None:
        raise NotFound("reassignment not found")
    released = (
        await get_assignment(session, record.released_assignment_id)
        if record.released_assignment_id
        else None
    )
    return ReassignmentResult(record.reassignment_id, released, outcome_from_json(record.outcome))
