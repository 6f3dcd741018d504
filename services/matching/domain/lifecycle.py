"""What matching holds about a data subject, through its lifecycle (issue 10).

Two kinds of subject:
- a referent doctor (their account id is in the registry): the registry entry is the
  doctor's professional data, not a patient's. Export gives Practitioner and
  PractitionerRole; archive takes the doctor out of picking; purge pseudonymises the entry
  (name, RPPS number, account link) and deletes absences, languages and sub-specialties,
  so offers and assignments stay only as anonymous turnaround statistics.
- a patient: matching knows their cases by id only (the caller passes the subject's case
  ids). Export gives the assignments as FHIR Tasks; archive moves nothing (ids only, the
  dossier's archive is the legal record of who handled the case); purge replaces the case
  ids of offers, assignments, slots and reassignments by random pseudonyms (RET-02,
  GDPR-03): the patient link is gone, aggregate turnaround statistics are kept.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.matching.models import (
    Absence,
    Assignment,
    CaseSlots,
    DoctorLanguage,
    DoctorSubSpecialty,
    LifecycleOperation,
    Offer,
    Reassignment,
    ReferentDoctor,
)
from services.shared.errors import FailedPrecondition, InvalidArgument

RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"
PSEUDONYM_PREFIX = "purged-"
MAX_CASE_IDS = 1000


def check_subject(subject_id: str) -> str:
    if not subject_id or len(subject_id) > 36 or not subject_id.isprintable():
        raise InvalidArgument("subject_id is required (an account id)")
    return subject_id


def check_case_ids(case_ids: Sequence[str]) -> list[str]:
    ids = sorted(set(case_ids))
    if len(ids) > MAX_CASE_IDS:
        raise InvalidArgument(f"at most {MAX_CASE_IDS} case ids per call")
    for case_id in ids:
        if not case_id or len(case_id) > 64 or not case_id.isprintable():
            raise InvalidArgument("case_ids must be case ids (1 to 64 printable characters)")
        if case_id.startswith(PSEUDONYM_PREFIX):
            raise InvalidArgument("case_ids must be case ids, not pseudonyms")
    return ids


async def doctor_of(session: AsyncSession, subject_id: str) -> ReferentDoctor | None:
    return await session.scalar(select(ReferentDoctor).where(ReferentDoctor.account_id == subject_id))


async def _count(session: AsyncSession, model: Any, condition: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(condition)) or 0)


def _instant(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat()


# ---------------------------------------------------------------- export


async def export_subject(
    session: AsyncSession, subject_id: str, case_ids: Sequence[str], at: datetime
) -> dict[str, Any]:
    """A FHIR R4 collection Bundle (validated with fhir.resources R4B)."""
    resources: list[dict[str, Any]] = []
    doctor = await doctor_of(session, subject_id)
    if doctor is not None:
        practitioner: dict[str, Any] = {
            "resourceType": "Practitioner",
            "id": doctor.doctor_id,
            "identifier": [{"system": RPPS_SYSTEM, "value": doctor.rpps_number}],
            "active": doctor.active,
            "name": [{"text": doctor.display_name}],
        }
        if doctor.languages:
            practitioner["communication"] = [
                {"coding": [{"system": "urn:ietf:bcp:47", "code": code}]} for code in doctor.languages
            ]
        resources.append(practitioner)
        role: dict[str, Any] = {
            "resourceType": "PractitionerRole",
            "id": f"role-{doctor.doctor_id}",
            "active": doctor.active,
            "practitioner": {"reference": f"Practitioner/{doctor.doctor_id}"},
            "code": [{"text": "referent doctor"}],
            "specialty": [
                {"coding": [{"system": "urn:secondopinion:therapeutic-area", "code": area}]}
                for area in doctor.area_codes
            ]
            + [
                {"coding": [{"system": "urn:secondopinion:sub-specialty", "code": code}]}
                for code in doctor.sub_specialties
            ],
        }
        resources.append(role)
    ids = check_case_ids(case_ids)
    if ids:
        rows = (
            await session.scalars(
                select(Assignment)
                .where(Assignment.case_id.in_(ids))
                .order_by(Assignment.started_at, Assignment.assignment_id)
            )
        ).all()
        for row in rows:
            status = (
                "in-progress"
                if row.released_at is None
                else "completed"
                if row.release_reason == "completed"
                else "cancelled"
            )
            period: dict[str, Any] = {"start": _instant(row.started_at)}
            if row.released_at is not None:
                period["end"] = _instant(row.released_at)
            task: dict[str, Any] = {
                "resourceType": "Task",
                "id": row.assignment_id,
                "status": status,
                "intent": "order",
                "code": {"text": "second opinion review"},
                "basedOn": [{"reference": f"ServiceRequest/{row.case_id}"}],
                "for": {"reference": f"Patient/{subject_id}"},
                "owner": {"reference": f"Practitioner/{row.doctor_id}"},
                "executionPeriod": period,
                "restriction": {"period": {"end": _instant(row.deadline_at)}},
            }
            if row.release_reason and row.release_reason != "completed":
                task["statusReason"] = {"text": row.release_reason}
            resources.append(task)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "collection",
        "identifier": {"system": "urn:secondopinion:export:matching", "value": subject_id},
        "timestamp": _instant(at),
    }
    if resources:
        bundle["entry"] = [
            {"fullUrl": f"urn:secondopinion:{r['resourceType']}:{r['id']}", "resource": r} for r in resources
        ]
    validate_bundle(bundle)
    return bundle


def validate_bundle(bundle: dict[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)


# ---------------------------------------------------------------- archive


async def archive_subject(session: AsyncSession, subject_id: str, case_ids: Sequence[str]) -> dict[str, int]:
    """RET-02 / RET-07. A doctor leaves picking (their entry stays for the archive period,
    read by staff only). A patient's case links are ids only: nothing moves here."""
    check_case_ids(case_ids)
    doctor = await doctor_of(session, subject_id)
    if doctor is None:
        return {}
    if doctor.current_load > 0 or doctor.pending_offer_count > 0:
        raise FailedPrecondition("the doctor still has cases or offers: they must end first")
    if doctor.active:
        doctor.active = False
    await session.flush()
    return {"doctor_profile": 1}


# ---------------------------------------------------------------- purge


async def purge_subject(session: AsyncSession, subject_id: str, case_ids: Sequence[str]) -> dict[str, int]:
    """GDPR-03 / RET-02: the subject's links go; anonymous statistics stay."""
    ids = check_case_ids(case_ids)
    purged: dict[str, int] = {}
    doctor = await doctor_of(session, subject_id)
    if doctor is not None:
        if doctor.current_load > 0 or doctor.pending_offer_count > 0:
            raise FailedPrecondition("the doctor still has cases or offers: they must end first")
        purged["absences"] = await _count(session, Absence, Absence.doctor_id == doctor.doctor_id)
        await session.execute(delete(Absence).where(Absence.doctor_id == doctor.doctor_id))
        await session.execute(delete(DoctorLanguage).where(DoctorLanguage.doctor_id == doctor.doctor_id))
        await session.execute(
            delete(DoctorSubSpecialty).where(DoctorSubSpecialty.doctor_id == doctor.doctor_id)
        )
        # The row stays (offers and assignments point at it): no name, no RPPS number,
        # no account left, so the statistics it anchors are anonymous.
        doctor.display_name = ""
        doctor.rpps_number = "X" + secrets.token_hex(5)
        doctor.account_id = PSEUDONYM_PREFIX + uuid.uuid4().hex[:29]
        doctor.active = False
        purged["doctor_profile"] = 1
    if ids:
        open_links = await _count(
            session, Assignment, Assignment.case_id.in_(ids) & Assignment.released_at.is_(None)
        ) + await _count(session, Offer, Offer.case_id.in_(ids) & (Offer.status == "pending"))
        if open_links:
            raise FailedPrecondition("a case is still being matched or reviewed: it must end first")
    offers = assignments = reassignments = slots = 0
    for case_id in ids:
        pseudonym = PSEUDONYM_PREFIX + uuid.uuid4().hex
        offers += _rows(
            await session.execute(update(Offer).where(Offer.case_id == case_id).values(case_id=pseudonym))
        )
        assignments += _rows(
            await session.execute(
                update(Assignment).where(Assignment.case_id == case_id).values(case_id=pseudonym)
            )
        )
        reassignments += _rows(
            await session.execute(
                update(Reassignment).where(Reassignment.case_id == case_id).values(case_id=pseudonym)
            )
        )
        slots += _rows(
            await session.execute(
                update(CaseSlots).where(CaseSlots.case_id == case_id).values(case_id=pseudonym)
            )
        )
    counts = {
        "case_offers": offers,
        "case_assignments": assignments,
        "case_reassignments": reassignments,
        "case_slots": slots,
    }
    purged.update({name: count for name, count in counts.items() if count})
    await session.flush()
    return {name: count for name, count in purged.items() if count}


def _rows(result: Any) -> int:
    return int(result.rowcount)


async def record_operation(
    session: AsyncSession, operation: str, subject_id: str, counts: dict[str, int], at: datetime
) -> str:
    """Keeps a step's outcome (counts and date only) for the idempotent replay."""
    row = LifecycleOperation(
        operation_id=str(uuid.uuid4()),
        operation=operation,
        subject_id=subject_id,
        done_at=at,
        outcome={"at": at.isoformat(), "counts": counts},
    )
    session.add(row)
    await session.flush()
    return row.operation_id


def outcome_reader(operation_id: str) -> Callable[[AsyncSession], Awaitable[dict[str, Any]]]:
    async def read(session: AsyncSession) -> dict[str, Any]:
        row = await session.get(LifecycleOperation, operation_id)
        assert row is not None, "a recorded lifecycle step has its outcome"
        return dict(row.outcome)

    return read
