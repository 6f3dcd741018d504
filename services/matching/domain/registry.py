"""The referent-doctor registry (DOC-01): who covers which therapeutic area, in which
languages and sub-specialties, how many cases at once, and when they are away."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.catalog import therapeutic_area_codes
from services.matching.domain.catalog import load_catalog, require_area
from services.matching.models import (
    Absence,
    DoctorArea,
    DoctorLanguage,
    DoctorSubSpecialty,
    ReferentDoctor,
)
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MAX_PAGE_SIZE = 100
MAX_CAPACITY = 50
MAX_ABSENCE = timedelta(days=366)
# BCP 47 tags as the platform uses them: "fr", "en", "pt-BR", "zh-Hant".
LANGUAGE_TAG = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
UPDATABLE_FIELDS = frozenset(
    {"display_name", "therapeutic_areas", "languages", "max_concurrent_cases", "sub_specialties"}
)


@dataclass(frozen=True, slots=True)
class NewReferentDoctor:
    account_id: str
    rpps_number: str
    display_name: str
    therapeutic_areas: list[str]
    languages: list[str] = field(default_factory=list)
    max_concurrent_cases: int = 0
    sub_specialties: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class DoctorChanges:
    """New values for the fields named in `fields` (the update mask)."""

    fields: frozenset[str]
    display_name: str = ""
    therapeutic_areas: list[str] = field(default_factory=list)
    languages: list[str] = field(default_factory=list)
    max_concurrent_cases: int = 0
    sub_specialties: list[str] = field(default_factory=list)


def _check_display_name(name: str) -> str:
    if not name.strip() or len(name) > 200:
        raise InvalidArgument("display_name is required (at most 200 characters)")
    return name.strip()


def _check_areas(areas: Sequence[str]) -> list[str]:
    if not areas:
        raise InvalidArgument("at least one therapeutic area is required")
    if set(areas) - therapeutic_area_codes():
        raise InvalidArgument("therapeutic_areas has codes that are not in the catalog")
    return sorted(set(areas))


def check_language(tag: str, field_name: str = "languages") -> str:
    if not LANGUAGE_TAG.match(tag):
        raise InvalidArgument(f"{field_name} must hold BCP 47 language tags such as 'fr' or 'en'")
    return tag


def _check_languages(tags: Sequence[str]) -> list[str]:
    if len(tags) > 20:
        raise InvalidArgument("at most 20 languages")
    return sorted({check_language(tag) for tag in tags})


def _check_capacity(capacity: int) -> int:
    if not 1 <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(
            f"max_concurrent_cases must be between 1 and {MAX_CAPACITY} "
            "(take a doctor out of matching with SetReferentDoctorActive instead of a capacity of 0)"
        )
    return capacity


def _check_sub_specialties(codes: Sequence[str], areas: Sequence[str]) -> list[str]:
    catalog = load_catalog()
    allowed: set[str] = set()
    for code in areas:
        area = catalog.area(code)
        if area is not None:
            allowed |= area.sub_specialty_codes
    if set(codes) - allowed:
        raise InvalidArgument("sub_specialties must belong to one of the doctor's therapeutic areas")
    return sorted(set(codes))


def _check(new: NewReferentDoctor) -> None:
    if not new.account_id or len(new.account_id) > 36:
        raise InvalidArgument("account_id is required (at most 36 characters)")
    # The Luhn check is the identity service's (it owns the doctor's account); here the format.
    if len(new.rpps_number) != 11 or not new.rpps_number.isdigit():
        raise InvalidArgument("rpps_number must be 11 digits")
    _check_display_name(new.display_name)
    _check_areas(new.therapeutic_areas)
    _check_capacity(new.max_concurrent_cases)
    _check_languages(new.languages)
    _check_sub_specialties(new.sub_specialties, new.therapeutic_areas)


async def register_doctor(session: AsyncSession, new: NewReferentDoctor, now: datetime) -> ReferentDoctor:
    _check(new)
    clash = await session.scalar(
        select(ReferentDoctor.doctor_id).where(
            (ReferentDoctor.account_id == new.account_id) | (ReferentDoctor.rpps_number == new.rpps_number)
        )
    )
    if clash is not None:
        raise AlreadyExists("a referent doctor with this account or RPPS number is already registered")
    doctor_id = str(uuid.uuid4())
    doctor = ReferentDoctor(
        doctor_id=doctor_id,
        account_id=new.account_id,
        rpps_number=new.rpps_number,
        display_name=_check_display_name(new.display_name),
        max_concurrent_cases=new.max_concurrent_cases,
        current_load=0,
        pending_offer_count=0,
        active=True,
        median_turnaround_seconds=None,
        created_at=now,
        updated_at=now,
        areas=[DoctorArea(area=area) for area in _check_areas(new.therapeutic_areas)],
        language_rows=[DoctorLanguage(language=tag) for tag in _check_languages(new.languages)],
        sub_specialty_rows=[
            DoctorSubSpecialty(code=code)
            for code in _check_sub_specialties(new.sub_specialties, new.therapeutic_areas)
        ],
    )
    session.add(doctor)
    await session.flush()
    return doctor


async def get_doctor(session: AsyncSession, doctor_id: str, *, lock: bool = False) -> ReferentDoctor:
    query = select(ReferentDoctor).where(ReferentDoctor.doctor_id == doctor_id)
    if lock:
        query = query.with_for_update()
    doctor = (await session.scalars(query.execution_options(populate_existing=True))).first()
    if doctor is None:
        raise NotFound("referent doctor not found")
    return doctor


async def doctor_of_account(session: AsyncSession, account_id: str) -> ReferentDoctor | None:
    result = await session.scalars(select(ReferentDoctor).where(ReferentDoctor.account_id == account_id))
    return result.first()


async def update_doctor(
    session: AsyncSession, doctor_id: str, changes: DoctorChanges, now: datetime
) -> ReferentDoctor:
    if not changes.fields:
        raise InvalidArgument("update_mask must name at least one field")
    unknown = changes.fields - UPDATABLE_FIELDS
    if unknown:
        raise InvalidArgument(f"update_mask may only name: {', '.join(sorted(UPDATABLE_FIELDS))}")
    doctor = await get_doctor(session, doctor_id, lock=True)
    areas = doctor.area_codes
    if "display_name" in changes.fields:
        doctor.display_name = _check_display_name(changes.display_name)
    if "max_concurrent_cases" in changes.fields:
        # Lowering it below the current load is allowed: no new case until the load drops.
        doctor.max_concurrent_cases = _check_capacity(changes.max_concurrent_cases)
    if "therapeutic_areas" in changes.fields:
        areas = _check_areas(changes.therapeutic_areas)
    subs = doctor.sub_specialties
    if "sub_specialties" in changes.fields:
        subs = changes.sub_specialties
    subs = _check_sub_specialties(subs, areas)
    if "therapeutic_areas" in changes.fields:
        doctor.areas = [row for row in doctor.areas if row.area in areas] + [
            DoctorArea(area=code) for code in areas if code not in doctor.area_codes
        ]
    if "sub_specialties" in changes.fields:
        doctor.sub_specialty_rows = [row for row in doctor.sub_specialty_rows if row.code in subs] + [
            DoctorSubSpecialty(code=code) for code in subs if code not in doctor.sub_specialties
        ]
    if "languages" in changes.fields:
        tags = _check_languages(changes.languages)
        doctor.language_rows = [row for row in doctor.language_rows if row.language in tags] + [
            DoctorLanguage(language=tag) for tag in tags if tag not in doctor.languages
        ]
    doctor.updated_at = now
    await session.flush()
    return doctor


async def set_active(session: AsyncSession, doctor_id: str, active: bool, now: datetime) -> ReferentDoctor:
    """Take a doctor out of matching (or back in); open assignments and offers continue."""
    await get_doctor(session, doctor_id)
    await session.execute(
        update(ReferentDoctor)
        .where(ReferentDoctor.doctor_id == doctor_id)
        .values(active=active, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return await get_doctor(session, doctor_id)


def _encode_token(values: Iterable[str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode()


def decode_token(token: str, length: int) -> list[str]:
    try:
        values = json.loads(base64.urlsafe_b64decode(token.encode()))
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid") from exc
    if not isinstance(values, list) or len(values) != length or not all(isinstance(v, str) for v in values):
        raise InvalidArgument("page_token is not valid")
    return values


def encode_token(*values: str) -> str:
    return _encode_token(values)


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or 50, MAX_PAGE_SIZE)


async def list_doctors(
    session: AsyncSession,
    area: str,
    size_requested: int,
    page_token: str,
    *,
    language: str = "",
    include_inactive: bool = False,
) -> tuple[list[ReferentDoctor], str]:
    """Doctors covering `area` (all when empty), by display name then id."""
    if area:
        require_area(area)
    if language:
        check_language(language, "language")
    size = page_size(size_requested)
    query = (
        select(ReferentDoctor).order_by(ReferentDoctor.display_name, ReferentDoctor.doctor_id).limit(size + 1)
    )
    if area:
        query = query.where(
            exists().where(DoctorArea.doctor_id == ReferentDoctor.doctor_id, DoctorArea.area == area)
        )
    if language:
        query = query.where(
            exists().where(
                DoctorLanguage.doctor_id == ReferentDoctor.doctor_id, DoctorLanguage.language == language
            )
        )
    if not include_inactive:
        query = query.where(ReferentDoctor.active.is_(True))
    if page_token:
        name, last_id = decode_token(page_token, 2)
        query = query.where(
            or_(
                ReferentDoctor.display_name > name,
                and_(ReferentDoctor.display_name == name, ReferentDoctor.doctor_id > last_id),
            )
        )
    doctors = list((await session.scalars(query)).unique())
    next_token = ""
    if len(doctors) > size:
        last = doctors[size - 1]
        next_token = encode_token(last.display_name, last.doctor_id)
    return doctors[:size], next_token


# --- absences --------------------------------------------------------------------------


async def record_absence(
    session: AsyncSession, doctor_id: str, starts_at: datetime, ends_at: datetime, now: datetime
) -> Absence:
    if ends_at <= starts_at:
        raise InvalidArgument("ends_at must be after starts_at")
    if ends_at <= now:
        raise InvalidArgument("ends_at must be in the future")
    if ends_at - starts_at > MAX_ABSENCE:
        raise InvalidArgument("an absence lasts at most 366 days; record longer leaves in steps")
    await get_doctor(session, doctor_id)
    absence = Absence(
        absence_id=str(uuid.uuid4()),
        doctor_id=doctor_id,
        starts_at=starts_at,
        ends_at=ends_at,
        created_at=now,
        cancelled_at=None,
    )
    session.add(absence)
    await session.flush()
    return absence


async def get_absence(session: AsyncSession, absence_id: str) -> Absence:
    absence = await session.get(Absence, absence_id)
    if absence is None or absence.cancelled_at is not None:
        raise NotFound("absence not found")
    return absence


async def cancel_absence(session: AsyncSession, absence_id: str, now: datetime) -> Absence:
    absence = await get_absence(session, absence_id)
    changed = await session.execute(
        update(Absence)
        .where(Absence.absence_id == absence_id, Absence.cancelled_at.is_(None))
        .values(cancelled_at=now)
        .execution_options(synchronize_session=False)
    )
    if changed.rowcount != 1:  # type: ignore[attr-defined]
        raise FailedPrecondition("absence already cancelled")
    await session.refresh(absence)
    return absence


async def list_absences(session: AsyncSession, doctor_id: str, ending_after: datetime) -> list[Absence]:
    await get_doctor(session, doctor_id)
    return list(
        await session.scalars(
            select(Absence)
            .where(
                Absence.doctor_id == doctor_id,
                Absence.cancelled_at.is_(None),
                Absence.ends_at > ending_after,
            )
            .order_by(Absence.starts_at, Absence.absence_id)
        )
    )


async def absences_of(
    session: AsyncSession, doctor_ids: Sequence[str], start: datetime, end: datetime
) -> dict[str, list[tuple[datetime, datetime]]]:
    """Live absences overlapping [start, end), per doctor."""
    found: dict[str, list[tuple[datetime, datetime]]] = {doctor_id: [] for doctor_id in doctor_ids}
    if not doctor_ids:
        return found
    rows = await session.execute(
        select(Absence.doctor_id, Absence.starts_at, Absence.ends_at).where(
            Absence.doctor_id.in_(list(doctor_ids)),
            Absence.cancelled_at.is_(None),
            Absence.ends_at > start,
            Absence.starts_at < end,
        )
    )
    for doctor_id, starts_at, ends_at in rows:
        found[doctor_id].append((starts_at, ends_at))
    return found
