"""Choosing doctors (CASE-01, CASE-10, CASE-13).

Patient-chosen: `quote_expected_delay` checks each chosen doctor and says when the case
can be delivered. Platform-chosen: `propose` picks distinct doctors whose projected
delivery is within the target, ranked by

1. the preferred sub-specialty, then the preferred language (when asked),
2. the lowest relative load (open assignments and pending offers over capacity),
3. the fastest turnaround (measured median, else the 3-day planning default),
4. the lowest doctor id (deterministic tie-break),

and reports "no one available" as a typed outcome. Read-only: nothing is reserved.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from sqlalchemy import Float, and_, case, cast, exists, false, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.domain.catalog import require_area
from services.matching.domain.delays import (
    DEFAULT_TURNAROUND,
    TARGET_DELAY,
    Workload,
    away_at,
    projected_delivery,
)
from services.matching.domain.registry import absences_of, check_language
from services.matching.models import (
    Absence,
    DoctorArea,
    DoctorLanguage,
    DoctorSubSpecialty,
    ReferentDoctor,
)
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_DOCTORS_PER_CASE = 5
MAX_ALTERNATES = 20
MAX_TARGET_DELAY = timedelta(days=30)
# Absences further than this do not change a projection within any accepted target.
ABSENCE_HORIZON = MAX_TARGET_DELAY * 4
# Doctors whose projection is computed when explaining why no one is available.
DIAGNOSIS_SAMPLE = 500


class SelectionReason(enum.Enum):
    COVERS_AREA = "covers_area"
    COVERS_SUB_SPECIALTY = "covers_sub_specialty"
    PROJECTED_WITHIN_TARGET = "projected_within_target"
    LOW_LOAD = "low_load"
    FAST_TURNAROUND = "fast_turnaround"
    SPEAKS_LANGUAGE = "speaks_language"
    TIE_BREAK = "tie_break"


class UnavailabilityReason(enum.Enum):
    NO_DOCTOR_IN_AREA = "no_doctor_in_area"
    ALL_AT_CAPACITY = "all_at_capacity"
    ALL_ABSENT = "all_absent"
    NONE_WITHIN_TARGET = "none_within_target"
    ALL_TRIED = "all_tried"
    NOT_ENOUGH_DOCTORS = "not_enough_doctors"


@dataclass(frozen=True, slots=True)
class Candidate:
    doctor_id: str
    rank: int
    projected_delivery_at: datetime
    current_load: int
    max_concurrent_cases: int
    reasons: tuple[SelectionReason, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "doctor_id": self.doctor_id,
            "rank": self.rank,
            "projected_delivery_at": self.projected_delivery_at.isoformat(),
            "current_load": self.current_load,
            "max_concurrent_cases": self.max_concurrent_cases,
            "reasons": [reason.value for reason in self.reasons],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Candidate:
        return cls(
            doctor_id=data["doctor_id"],
            rank=data["rank"],
            projected_delivery_at=datetime.fromisoformat(data["projected_delivery_at"]),
            current_load=data["current_load"],
            max_concurrent_cases=data["max_concurrent_cases"],
            reasons=tuple(SelectionReason(value) for value in data["reasons"]),
        )


@dataclass(frozen=True, slots=True)
class Proposal:
    candidates: tuple[Candidate, ...]
    alternates: tuple[Candidate, ...]


@dataclass(frozen=True, slots=True)
class NoDoctorAvailable:
    reason: UnavailabilityReason
    considered_count: int
    earliest_possible_delivery_at: datetime | None


Outcome = Proposal | NoDoctorAvailable


def outcome_to_json(outcome: Outcome) -> dict[str, Any]:
    if isinstance(outcome, Proposal):
        return {
            "proposal": {
                "candidates": [c.to_json() for c in outcome.candidates],
                "alternates": [c.to_json() for c in outcome.alternates],
            }
        }
    earliest = outcome.earliest_possible_delivery_at
    return {
        "no_doctor_available": {
            "reason": outcome.reason.value,
            "considered_count": outcome.considered_count,
            "earliest_possible_delivery_at": earliest.isoformat() if earliest else None,
        }
    }


def outcome_from_json(data: dict[str, Any]) -> Outcome:
    if "proposal" in data:
        return Proposal(
            candidates=tuple(Candidate.from_json(c) for c in data["proposal"]["candidates"]),
            alternates=tuple(Candidate.from_json(c) for c in data["proposal"]["alternates"]),
        )
    none = data["no_doctor_available"]
    earliest = none["earliest_possible_delivery_at"]
    return NoDoctorAvailable(
        reason=UnavailabilityReason(none["reason"]),
        considered_count=none["considered_count"],
        earliest_possible_delivery_at=datetime.fromisoformat(earliest) if earliest else None,
    )


@dataclass(frozen=True, slots=True)
class PickRequest:
    case_id: str
    therapeutic_area: str
    doctor_count: int = 1
    excluded_doctor_ids: Sequence[str] = field(default_factory=tuple)
    sub_specialty: str = ""
    language: str = ""
    target_delay: timedelta = TARGET_DELAY
    alternate_count: int = 0


def check_pick(request: PickRequest) -> None:
    area = require_area(request.therapeutic_area)
    if not 1 <= request.doctor_count <= MAX_DOCTORS_PER_CASE:
        raise InvalidArgument(f"doctor_count must be between 1 and {MAX_DOCTORS_PER_CASE}")
    if not 0 <= request.alternate_count <= MAX_ALTERNATES:
        raise InvalidArgument(f"alternate_count must be between 0 and {MAX_ALTERNATES}")
    if request.sub_specialty and request.sub_specialty not in area.sub_specialty_codes:
        raise InvalidArgument("sub_specialty is not a sub-specialty of the therapeutic area")
    if request.language:
        check_language(request.language, "language")
    if not timedelta(0) < request.target_delay <= MAX_TARGET_DELAY:
        raise InvalidArgument("target_delay must be positive and at most 30 days")
    if len(request.excluded_doctor_ids) > 1000:
        raise InvalidArgument("at most 1000 excluded doctors")


def _turnaround_seconds() -> Any:
    return func.coalesce(ReferentDoctor.median_turnaround_seconds, int(DEFAULT_TURNAROUND.total_seconds()))


def _effective_load() -> Any:
    return ReferentDoctor.current_load + ReferentDoctor.pending_offer_count


def _area_doctors(area: str, excluded: Sequence[str]) -> Any:
    """Conditions: active, covering the area, not excluded."""
    conditions = [
        ReferentDoctor.active.is_(True),
        exists().where(DoctorArea.doctor_id == ReferentDoctor.doctor_id, DoctorArea.area == area),
    ]
    if excluded:
        conditions.append(ReferentDoctor.doctor_id.not_in(list(excluded)))
    return and_(*conditions)


@dataclass(frozen=True, slots=True)
class _Row:
    doctor_id: str
    current_load: int
    pending: int
    capacity: int
    median_seconds: int | None
    sub_match: bool
    language_match: bool

    @property
    def workload(self) -> Workload:
        median = timedelta(seconds=self.median_seconds) if self.median_seconds is not None else None
        return Workload(self.current_load + self.pending, self.capacity, median)

    def key(self) -> tuple[bool, bool, Fraction, int]:
        """Ranking key without the tie-break."""
        seconds = self.median_seconds
        if seconds is None:
            seconds = int(DEFAULT_TURNAROUND.total_seconds())
        return (not self.sub_match, not self.language_match, self.workload.relative_load, seconds)


def _ranked_query(request: PickRequest, excluded: Sequence[str]) -> Any:
    sub_match: Any = false()
    if request.sub_specialty:
        sub_match = exists().where(
            DoctorSubSpecialty.doctor_id == ReferentDoctor.doctor_id,
            DoctorSubSpecialty.code == request.sub_specialty,
        )
    language_match: Any = false()
    if request.language:
        language_match = exists().where(
            DoctorLanguage.doctor_id == ReferentDoctor.doctor_id,
            DoctorLanguage.language == request.language,
        )
    relative_load = cast(_effective_load(), Float) / ReferentDoctor.max_concurrent_cases
    return (
        select(
            ReferentDoctor.doctor_id,
            ReferentDoctor.current_load,
            ReferentDoctor.pending_offer_count,
            ReferentDoctor.max_concurrent_cases,
            ReferentDoctor.median_turnaround_seconds,
            sub_match.label("sub_match"),
            language_match.label("language_match"),
        )
        .where(_area_doctors(request.therapeutic_area, excluded))
        .where(_effective_load() < ReferentDoctor.max_concurrent_cases)
        .order_by(
            case((sub_match, 0), else_=1),
            case((language_match, 0), else_=1),
            relative_load,
            _turnaround_seconds(),
            ReferentDoctor.doctor_id,
        )
    )


async def propose(
    session: AsyncSession, request: PickRequest, now: datetime, extra_excluded: Sequence[str] = ()
) -> Outcome:
    check_pick(request)
    excluded = sorted(set(request.excluded_doctor_ids) | set(extra_excluded))
    wanted = request.doctor_count + request.alternate_count
    deadline = now + request.target_delay
    batch = max(4 * (wanted + 1), 40)
    query = _ranked_query(request, excluded)
    eligible: list[tuple[_Row, datetime]] = []
    offset = 0
    # Walk the ranked list until enough doctors project within the target (+1 to see ties).
    while len(eligible) <= wanted:
        rows = [
            _Row(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6]))
            for r in await session.execute(query.limit(batch).offset(offset))
        ]
        if not rows:
            break
        away = await absences_of(session, [row.doctor_id for row in rows], now, now + ABSENCE_HORIZON)
        for row in rows:
            delivery = projected_delivery(now, row.workload, away[row.doctor_id])
            if delivery <= deadline and not away_at(away[row.doctor_id], now):
                eligible.append((row, delivery))
        if len(rows) < batch:
            break
        offset += batch
        batch *= 2
    if len(eligible) < request.doctor_count:
        if eligible:
            return NoDoctorAvailable(
                UnavailabilityReason.NOT_ENOUGH_DOCTORS,
                await _count(session, request.therapeutic_area, excluded),
                min(delivery for _, delivery in eligible),
            )
        return await _diagnose(session, request, excluded, now)
    lowest_load = await _lowest_relative_load(session, request, excluded, eligible[0][0])
    picked: list[Candidate] = []
    for index, (row, delivery) in enumerate(eligible[:wanted]):
        reasons = [SelectionReason.COVERS_AREA]
        if row.sub_match:
            reasons.append(SelectionReason.COVERS_SUB_SPECIALTY)
        if row.language_match:
            reasons.append(SelectionReason.SPEAKS_LANGUAGE)
        reasons.append(SelectionReason.PROJECTED_WITHIN_TARGET)
        if row.workload.relative_load <= lowest_load:
            reasons.append(SelectionReason.LOW_LOAD)
        if row.median_seconds is not None and row.median_seconds < DEFAULT_TURNAROUND.total_seconds():
            reasons.append(SelectionReason.FAST_TURNAROUND)
        if index + 1 < len(eligible) and eligible[index + 1][0].key() == row.key():
            reasons.append(SelectionReason.TIE_BREAK)
        picked.append(
            Candidate(
                doctor_id=row.doctor_id,
                rank=index + 1,
                projected_delivery_at=delivery,
                current_load=row.current_load,
                max_concurrent_cases=row.capacity,
                reasons=tuple(reasons),
            )
        )
    return Proposal(
        candidates=tuple(picked[: request.doctor_count]), alternates=tuple(picked[request.doctor_count :])
    )


async def _lowest_relative_load(
    session: AsyncSession, request: PickRequest, excluded: Sequence[str], first: _Row
) -> Fraction:
    """The lowest relative load among the area's doctors under capacity (LOW_LOAD reason)."""
    if not (request.sub_specialty or request.language):
        return first.workload.relative_load  # the ranking starts with the lowest load
    rows = await session.execute(
        select(_effective_load(), ReferentDoctor.max_concurrent_cases)
        .where(_area_doctors(request.therapeutic_area, excluded))
        .where(_effective_load() < ReferentDoctor.max_concurrent_cases)
        .order_by(cast(_effective_load(), Float) / ReferentDoctor.max_concurrent_cases)
        .limit(1)
    )
    row = rows.first()
    return Fraction(row[0], row[1]) if row else first.workload.relative_load


async def _count(session: AsyncSession, area: str, excluded: Sequence[str]) -> int:
    return int(
        await session.scalar(
            select(func.count()).select_from(ReferentDoctor).where(_area_doctors(area, excluded))
        )
        or 0
    )


async def _diagnose(
    session: AsyncSession, request: PickRequest, excluded: Sequence[str], now: datetime
) -> NoDoctorAvailable:
    """Why no one of the area can take the case, and the earliest anyone could deliver."""
    area = request.therapeutic_area
    in_area = await _count(session, area, ())
    if in_area == 0:
        return NoDoctorAvailable(UnavailabilityReason.NO_DOCTOR_IN_AREA, 0, None)
    considered = await _count(session, area, excluded) if excluded else in_area
    if considered == 0:
        return NoDoctorAvailable(UnavailabilityReason.ALL_TRIED, 0, None)
    full = _effective_load() >= ReferentDoctor.max_concurrent_cases
    away_now = exists().where(
        Absence.doctor_id == ReferentDoctor.doctor_id,
        Absence.cancelled_at.is_(None),
        Absence.starts_at <= now,
        Absence.ends_at > now,
    )
    base = select(func.count()).select_from(ReferentDoctor).where(_area_doctors(area, excluded))
    at_capacity = int(await session.scalar(base.where(full)) or 0)
    absent = int(await session.scalar(base.where(~full, away_now)) or 0)
    if at_capacity + absent == considered:
        reason = (
            UnavailabilityReason.ALL_ABSENT if absent > at_capacity else UnavailabilityReason.ALL_AT_CAPACITY
        )
    else:
        reason = UnavailabilityReason.NONE_WITHIN_TARGET
    sample = [
        _Row(r[0], r[1], r[2], r[3], r[4], False, False)
        for r in await session.execute(
            select(
                ReferentDoctor.doctor_id,
                ReferentDoctor.current_load,
                ReferentDoctor.pending_offer_count,
                ReferentDoctor.max_concurrent_cases,
                ReferentDoctor.median_turnaround_seconds,
            )
            .where(_area_doctors(area, excluded))
            .order_by(
                cast(_effective_load(), Float) / ReferentDoctor.max_concurrent_cases,
                _turnaround_seconds(),
                ReferentDoctor.doctor_id,
            )
            .limit(DIAGNOSIS_SAMPLE)
        )
    ]
    away = await absences_of(session, [row.doctor_id for row in sample], now, now + ABSENCE_HORIZON * 4)
    earliest = min(
        (projected_delivery(now, row.workload, away[row.doctor_id]) for row in sample), default=None
    )
    return NoDoctorAvailable(reason, considered, earliest)


# --- patient-chosen doctors ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DelayQuote:
    doctor_id: str
    expected_delivery_at: datetime
    expected_delay: timedelta


@dataclass(frozen=True, slots=True)
class CaseQuote:
    quotes: tuple[DelayQuote, ...]
    expected_delivery_at: datetime
    within_target: bool


async def quote_expected_delay(
    session: AsyncSession, area: str, doctor_ids: Sequence[str], now: datetime
) -> CaseQuote:
    """The expected delivery of a case going to the doctors the patient chose."""
    require_area(area)
    if not doctor_ids:
        raise InvalidArgument("doctor_ids must name at least one doctor")
    if len(doctor_ids) > MAX_DOCTORS_PER_CASE:
        raise InvalidArgument(f"at most {MAX_DOCTORS_PER_CASE} doctors per case")
    if len(set(doctor_ids)) != len(doctor_ids):
        raise InvalidArgument("doctor_ids lists the same doctor more than once")
    doctors = {
        doctor.doctor_id: doctor
        for doctor in await session.scalars(
            select(ReferentDoctor).where(ReferentDoctor.doctor_id.in_(list(doctor_ids)))
        )
    }
    away = await absences_of(session, list(doctor_ids), now, now + ABSENCE_HORIZON * 4)
    quotes: list[DelayQuote] = []
    for doctor_id in doctor_ids:
        doctor = doctors.get(doctor_id)
        if doctor is None:
            raise NotFound("referent doctor not found")
        if not doctor.active:
            raise FailedPrecondition("a chosen doctor is not taking cases at the moment")
        if area not in doctor.area_codes:
            raise FailedPrecondition("a chosen doctor does not cover the case's therapeutic area")
        if away_at(away[doctor_id], now):
            raise FailedPrecondition("a chosen doctor is on leave")
        median = doctor.median_turnaround_seconds
        workload = Workload(
            doctor.current_load + doctor.pending_offer_count,
            doctor.max_concurrent_cases,
            timedelta(seconds=median) if median is not None else None,
        )
        delivery = projected_delivery(now, workload, away[doctor_id])
        quotes.append(DelayQuote(doctor_id, delivery, delivery - now))
    expected = max(quote.expected_delivery_at for quote in quotes)
    return CaseQuote(tuple(quotes), expected, expected <= now + TARGET_DELAY)
