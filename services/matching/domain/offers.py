"""Offers and assignments: a case is offered to a doctor, who accepts or declines.

Every state change is one conditional UPDATE whose WHERE clause states the rule
(`status = 'pending'`, `current_load < max_concurrent_cases`, `assigned_count <
doctors_needed`): the database decides the race, under PostgreSQL row locks or SQLite's
single writer, so two concurrent accepts never both win and a doctor never exceeds their
capacity. Rows are always locked in the same order (offer or assignment, then doctor,
then case) so concurrent commands cannot deadlock.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain.catalog import require_area
from services.matching.domain.delays import TURNAROUND_WINDOW, median_turnaround, percentile
from services.matching.domain.picking import MAX_DOCTORS_PER_CASE
from services.matching.domain.registry import absences_of, decode_token, encode_token, get_doctor, page_size
from services.matching.models import Assignment, CaseSlots, Offer, ReferentDoctor
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_ANSWER_WINDOW = timedelta(days=7)
MAX_REVIEW_WINDOW = timedelta(days=90)


class OfferStatus(enum.Enum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


class DeclineReason(enum.Enum):
    UNAVAILABLE = "unavailable"
    CONFLICT_OF_INTEREST = "conflict_of_interest"
    OUTSIDE_EXPERTISE = "outside_expertise"
    OTHER = "other"


class ReleaseReason(enum.Enum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    REASSIGNED = "reassigned"
    OPPOSED_BY_PATIENT = "opposed_by_patient"


def check_case_id(case_id: str) -> str:
    if not case_id or len(case_id) > 64 or not case_id.isprintable():
        raise InvalidArgument("case_id is required (at most 64 printable characters)")
    return case_id


@dataclass(frozen=True, slots=True)
class NewOffer:
    case_id: str
    doctor_id: str
    therapeutic_area: str
    respond_by: datetime
    review_deadline_at: datetime
    doctors_needed: int = 0


async def _rowcount(session: AsyncSession, statement: Any) -> int:
    result = await session.execute(statement.execution_options(synchronize_session=False))
    count: int = result.rowcount  # type: ignore[attr-defined]
    return count


async def get_offer(session: AsyncSession, offer_id: str) -> Offer:
    offer = (
        await session.scalars(
            select(Offer).where(Offer.offer_id == offer_id).execution_options(populate_existing=True)
        )
    ).first()
    if offer is None:
        raise NotFound("offer not found")
    return offer


async def tried_doctor_ids(session: AsyncSession, case_id: str) -> list[str]:
    """Every doctor the case was ever offered to."""
    return list(await session.scalars(select(Offer.doctor_id).where(Offer.case_id == case_id)))


async def create_offer(session: AsyncSession, new: NewOffer, now: datetime) -> Offer:
    check_case_id(new.case_id)
    require_area(new.therapeutic_area)
    if new.respond_by <= now:
        raise InvalidArgument("respond_by must be in the future")
    if new.respond_by - now > MAX_ANSWER_WINDOW:
        raise InvalidArgument("respond_by must be within 7 days")
    if new.review_deadline_at <= new.respond_by:
        raise InvalidArgument("review_deadline_at must be after respond_by")
    if new.review_deadline_at - now > MAX_REVIEW_WINDOW:
        raise InvalidArgument("review_deadline_at must be within 90 days")
    if not 0 <= new.doctors_needed <= MAX_DOCTORS_PER_CASE:
        raise InvalidArgument(f"doctors_needed must be between 0 and {MAX_DOCTORS_PER_CASE}")
    doctor = await get_doctor(session, new.doctor_id)
    if not doctor.active:
        raise FailedPrecondition("the doctor is not taking cases at the moment")
    if new.therapeutic_area not in doctor.area_codes:
        raise FailedPrecondition("the doctor does not cover the case's therapeutic area")
    away = (await absences_of(session, [doctor.doctor_id], now, now + timedelta(microseconds=1)))[
        doctor.doctor_id
    ]
    if away:
        raise FailedPrecondition("the doctor is on leave")
    if doctor.current_load >= doctor.max_concurrent_cases:
        raise FailedPrecondition("the doctor is at capacity")
    if new.doctor_id in await tried_doctor_ids(session, new.case_id):
        raise FailedPrecondition("the doctor was already offered this case")
    slots = await session.get(CaseSlots, new.case_id)
    if slots is None:
        # Without a number, the platform's maximum of doctors per case is the only limit.
        needed = new.doctors_needed or MAX_DOCTORS_PER_CASE
        slots = CaseSlots(case_id=new.case_id, doctors_needed=needed, assigned_count=0)
        session.add(slots)
    elif new.doctors_needed and new.doctors_needed != slots.doctors_needed:
        if new.doctors_needed < slots.assigned_count:
            raise FailedPrecondition("doctors_needed is below the doctors already assigned to the case")
        slots.doctors_needed = new.doctors_needed
    if slots.assigned_count >= slots.doctors_needed:
        raise FailedPrecondition("the case already has all the doctors it needs")
    offer = Offer(
        offer_id=str(uuid.uuid4()),
        case_id=new.case_id,
        doctor_id=new.doctor_id,
        therapeutic_area=new.therapeutic_area,
        status=OfferStatus.PENDING.value,
        created_at=now,
        respond_by=new.respond_by,
        review_deadline_at=new.review_deadline_at,
        closed_at=None,
        decline_reason=None,
    )
    session.add(offer)
    await session.flush()
    await _rowcount(
        session,
        update(ReferentDoctor)
        .where(ReferentDoctor.doctor_id == new.doctor_id)
        .values(pending_offer_count=ReferentDoctor.pending_offer_count + 1),
    )
    return offer


async def _close_pending(
    session: AsyncSession, offer: Offer, status: OfferStatus, now: datetime, **values: Any
) -> Offer:
    """pending -> `status`, atomically; the doctor's pending count follows."""
    changed = await _rowcount(
        session,
        update(Offer)
        .where(Offer.offer_id == offer.offer_id, Offer.status == OfferStatus.PENDING.value)
        .values(status=status.value, closed_at=now, **values),
    )
    if changed != 1:
        current = await get_offer(session, offer.offer_id)
        raise FailedPrecondition(f"the offer is no longer pending (it is {current.status})")
    await _rowcount(
        session,
        update(ReferentDoctor)
        .where(ReferentDoctor.doctor_id == offer.doctor_id, ReferentDoctor.pending_offer_count > 0)
        .values(pending_offer_count=ReferentDoctor.pending_offer_count - 1),
    )
    return await get_offer(session, offer.offer_id)


async def offer_for_doctor(session: AsyncSession, offer_id: str, account_id: str) -> Offer:
    """The offer, when it was made to the doctor holding `account_id`; NOT_FOUND otherwise."""
    offer = await get_offer(session, offer_id)
    owner = await session.scalar(
        select(ReferentDoctor.account_id).where(ReferentDoctor.doctor_id == offer.doctor_id)
    )
    if owner != account_id:
        raise NotFound("offer not found")
    return offer


async def accept_offer(
    session: AsyncSession, offer_id: str, account_id: str, now: datetime
) -> tuple[Offer, Assignment]:
    offer = await offer_for_doctor(session, offer_id, account_id)
    accepted = await _rowcount(
        session,
        update(Offer)
        .where(
            Offer.offer_id == offer_id,
            Offer.status == OfferStatus.PENDING.value,
            Offer.respond_by > now,
        )
        .values(status=OfferStatus.ACCEPTED.value, closed_at=now),
    )
    if accepted != 1:
        current = await get_offer(session, offer_id)
        if current.status != OfferStatus.PENDING.value:
            raise FailedPrecondition(f"the offer is no longer pending (it is {current.status})")
        raise FailedPrecondition("the time to answer this offer has passed")
    # The capacity rule lives in the WHERE clause: the row lock serialises concurrent accepts.
    took_slot = await _rowcount(
        session,
        update(ReferentDoctor)
        .where(
            ReferentDoctor.doctor_id == offer.doctor_id,
            ReferentDoctor.active.is_(True),
            ReferentDoctor.current_load < ReferentDoctor.max_concurrent_cases,
        )
        .values(
            current_load=ReferentDoctor.current_load + 1,
            pending_offer_count=ReferentDoctor.pending_offer_count - 1,
        ),
    )
    if took_slot != 1:
        doctor = await get_doctor(session, offer.doctor_id)
        if not doctor.active:
            raise FailedPrecondition("the doctor is not taking cases at the moment")
        raise FailedPrecondition("the doctor is at capacity: release a case before accepting another")
    filled = await _rowcount(
        session,
        update(CaseSlots)
        .where(CaseSlots.case_id == offer.case_id, CaseSlots.assigned_count < CaseSlots.doctors_needed)
        .values(assigned_count=CaseSlots.assigned_count + 1),
    )
    if filled != 1:
        raise FailedPrecondition("the case already has all the doctors it needs")
    assignment = Assignment(
        assignment_id=str(uuid.uuid4()),
        case_id=offer.case_id,
        doctor_id=offer.doctor_id,
        offer_id=offer.offer_id,
        started_at=now,
        deadline_at=offer.review_deadline_at,
        released_at=None,
        release_reason=None,
    )
    session.add(assignment)
    await session.flush()
    return await get_offer(session, offer_id), assignment


async def decline_offer(
    session: AsyncSession, offer_id: str, account_id: str, reason: DeclineReason | None, now: datetime
) -> Offer:
    offer = await offer_for_doctor(session, offer_id, account_id)
    return await _close_pending(
        session, offer, OfferStatus.DECLINED, now, decline_reason=reason.value if reason else None
    )


async def expire_offer(session: AsyncSession, offer_id: str, now: datetime) -> Offer:
    return await _close_pending(session, await get_offer(session, offer_id), OfferStatus.EXPIRED, now)


async def withdraw_offer(session: AsyncSession, offer_id: str, now: datetime) -> Offer:
    return await _close_pending(session, await get_offer(session, offer_id), OfferStatus.WITHDRAWN, now)


async def list_offers(
    session: AsyncSession,
    *,
    doctor_id: str,
    case_id: str,
    statuses: Sequence[OfferStatus],
    size_requested: int,
    page_token: str,
) -> tuple[list[Offer], str]:
    """Offers newest first; `doctor_id` / `case_id` empty: any."""
    size = page_size(size_requested)
    query = select(Offer).order_by(Offer.created_at.desc(), Offer.offer_id.desc()).limit(size + 1)
    if doctor_id:
        query = query.where(Offer.doctor_id == doctor_id)
    if case_id:
        query = query.where(Offer.case_id == case_id)
    if statuses:
        query = query.where(Offer.status.in_([status.value for status in statuses]))
    if page_token:
        created, last_id = decode_token(page_token, 2)
        moment = _token_time(created)
        query = query.where(
            or_(Offer.created_at < moment, and_(Offer.created_at == moment, Offer.offer_id < last_id))
        )
    offers = list(await session.scalars(query))
    next_token = ""
    if len(offers) > size:
        last = offers[size - 1]
        next_token = encode_token(last.created_at.isoformat(), last.offer_id)
    return offers[:size], next_token


def _token_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid") from exc
    if moment.tzinfo is None:
        raise InvalidArgument("page_token is not valid")
    return moment


# --- assignments ---------------------------------------------------------------------


async def get_assignment(session: AsyncSession, assignment_id: str) -> Assignment:
    assignment = (
        await session.scalars(
            select(Assignment)
            .where(Assignment.assignment_id == assignment_id)
            .execution_options(populate_existing=True)
        )
    ).first()
    if assignment is None:
        raise NotFound("assignment not found")
    return assignment


async def release_assignment(
    session: AsyncSession, assignment_id: str, reason: ReleaseReason, now: datetime
) -> Assignment:
    """End an assignment: frees the doctor's slot and the case's; a completion feeds the
    doctor's measured turnaround."""
    assignment = await get_assignment(session, assignment_id)
    released = await _rowcount(
        session,
        update(Assignment)
        .where(Assignment.assignment_id == assignment_id, Assignment.released_at.is_(None))
        .values(released_at=now, release_reason=reason.value),
    )
    if released != 1:
        raise FailedPrecondition("the assignment was already released")
    await _rowcount(
        session,
        update(ReferentDoctor)
        .where(ReferentDoctor.doctor_id == assignment.doctor_id, ReferentDoctor.current_load > 0)
        .values(current_load=ReferentDoctor.current_load - 1),
    )
    await _rowcount(
        session,
        update(CaseSlots)
        .where(CaseSlots.case_id == assignment.case_id, CaseSlots.assigned_count > 0)
        .values(assigned_count=CaseSlots.assigned_count - 1),
    )
    if reason is ReleaseReason.COMPLETED:
        durations = await _completed_durations(session, assignment.doctor_id, now - TURNAROUND_WINDOW, now)
        median = median_turnaround(durations)
        await _rowcount(
            session,
            update(ReferentDoctor)
            .where(ReferentDoctor.doctor_id == assignment.doctor_id)
            .values(median_turnaround_seconds=int(median.total_seconds()) if median else None),
        )
    return await get_assignment(session, assignment_id)


async def _completed_durations(
    session: AsyncSession, doctor_id: str, start: datetime, end: datetime
) -> list[timedelta]:
    rows = await session.execute(
        select(Assignment.started_at, Assignment.released_at).where(
            Assignment.doctor_id == doctor_id,
            Assignment.release_reason == ReleaseReason.COMPLETED.value,
            Assignment.released_at >= start,
            Assignment.released_at < end + timedelta(microseconds=1),
        )
    )
    return [released - started for started, released in rows if released is not None]


async def list_assignments(
    session: AsyncSession,
    *,
    doctor_id: str,
    case_id: str,
    include_released: bool,
    size_requested: int,
    page_token: str,
) -> tuple[list[Assignment], str]:
    """Assignments, nearest deadline first."""
    size = page_size(size_requested)
    query = select(Assignment).order_by(Assignment.deadline_at, Assignment.assignment_id).limit(size + 1)
    if doctor_id:
        query = query.where(Assignment.doctor_id == doctor_id)
    if case_id:
        query = query.where(Assignment.case_id == case_id)
    if not include_released:
        query = query.where(Assignment.released_at.is_(None))
    if page_token:
        deadline, last_id = decode_token(page_token, 2)
        moment = _token_time(deadline)
        query = query.where(
            or_(
                Assignment.deadline_at > moment,
                and_(Assignment.deadline_at == moment, Assignment.assignment_id > last_id),
            )
        )
    assignments = list(await session.scalars(query))
    next_token = ""
    if len(assignments) > size:
        last = assignments[size - 1]
        next_token = encode_token(last.deadline_at.isoformat(), last.assignment_id)
    return assignments[:size], next_token


@dataclass(frozen=True, slots=True)
class TurnaroundStats:
    doctor_id: str
    completed_count: int
    median_turnaround: timedelta | None
    p90_turnaround: timedelta | None
    on_time_count: int
    declined_offer_count: int
    expired_offer_count: int
    reassigned_count: int


async def turnaround_stats(
    session: AsyncSession, doctor_id: str, start: datetime, end: datetime
) -> TurnaroundStats:
    if start >= end:
        raise InvalidArgument("period_start must be before period_end")
    await get_doctor(session, doctor_id)
    completed = list(
        await session.execute(
            select(Assignment.started_at, Assignment.released_at, Assignment.deadline_at).where(
                Assignment.doctor_id == doctor_id,
                Assignment.release_reason == ReleaseReason.COMPLETED.value,
                Assignment.released_at >= start,
                Assignment.released_at <= end,
            )
        )
    )
    finished = [(started, released, deadline) for started, released, deadline in completed if released]
    durations = [released - started for started, released, _ in finished]
    on_time = sum(1 for _, released, deadline in finished if released <= deadline)

    async def offers_closed(status: OfferStatus) -> int:
        return int(
            await session.scalar(
                select(func.count())
                .select_from(Offer)
                .where(
                    Offer.doctor_id == doctor_id,
                    Offer.status == status.value,
                    Offer.closed_at >= start,
                    Offer.closed_at <= end,
                )
            )
            or 0
        )

    reassigned = int(
        await session.scalar(
            select(func.count())
            .select_from(Assignment)
            .where(
                Assignment.doctor_id == doctor_id,
                Assignment.release_reason == ReleaseReason.REASSIGNED.value,
                Assignment.released_at >= start,
                Assignment.released_at <= end,
            )
        )
        or 0
    )
    return TurnaroundStats(
        doctor_id=doctor_id,
        completed_count=len(durations),
        median_turnaround=median_turnaround(durations),
        p90_turnaround=percentile(durations, 0.9),
        on_time_count=on_time,
        declined_offer_count=await offers_closed(OfferStatus.DECLINED),
        expired_offer_count=await offers_closed(OfferStatus.EXPIRED),
        reassigned_count=reassigned,
    )
