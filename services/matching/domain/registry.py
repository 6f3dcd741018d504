"""The referent-doctor registry (DOC-01): who covers which therapeutic area."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.catalog import therapeutic_area_codes
from services.matching.models import DoctorArea, ReferentDoctor
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, InvalidArgument

MAX_PAGE_SIZE = 100
MAX_CAPACITY = 50


@dataclass(frozen=True, slots=True)
class NewReferentDoctor:
    account_id: str
    rpps_number: str
    display_name: str
    therapeutic_areas: list[str]
    languages: list[str] = field(default_factory=list)
    max_concurrent_cases: int = 0


def _check(new: NewReferentDoctor) -> None:
    if not new.account_id:
        raise InvalidArgument("account_id is required")
    # The Luhn check is the identity service's (it owns the doctor's account); here the format.
    if len(new.rpps_number) != 11 or not new.rpps_number.isdigit():
        raise InvalidArgument("rpps_number must be 11 digits")
    if not new.display_name.strip() or len(new.display_name) > 200:
        raise InvalidArgument("display_name is required (at most 200 characters)")
    if not new.therapeutic_areas:
        raise InvalidArgument("at least one therapeutic area is required")
    unknown = set(new.therapeutic_areas) - therapeutic_area_codes()
    if unknown:
        raise InvalidArgument("therapeutic_areas has codes that are not in the catalog")
    if not 1 <= new.max_concurrent_cases <= MAX_CAPACITY:
        raise InvalidArgument(f"max_concurrent_cases must be between 1 and {MAX_CAPACITY}")


async def register_doctor(session: AsyncSession, new: NewReferentDoctor) -> ReferentDoctor:
    _check(new)
    clash = await session.scalar(
        select(ReferentDoctor.doctor_id).where(
            (ReferentDoctor.account_id == new.account_id) | (ReferentDoctor.rpps_number == new.rpps_number)
        )
    )
    if clash is not None:
        raise AlreadyExists("a referent doctor with this account or RPPS number is already registered")
    doctor = ReferentDoctor(
        doctor_id=str(uuid.uuid4()),
        account_id=new.account_id,
        rpps_number=new.rpps_number,
        display_name=new.display_name.strip(),
        languages=sorted(set(new.languages)),
        max_concurrent_cases=new.max_concurrent_cases,
        current_load=0,
        created_at=utcnow(),
        areas=[DoctorArea(area=area) for area in sorted(set(new.therapeutic_areas))],
    )
    session.add(doctor)
    await session.flush()
    return doctor


async def list_doctors(
    session: AsyncSession, area: str, page_size: int, page_token: str
) -> tuple[list[ReferentDoctor], str]:
    """Doctors covering `area` (all when empty), ordered by id; the token is the last id seen."""
    if area and area not in therapeutic_area_codes():
        raise InvalidArgument("therapeutic_area is not in the catalog")
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    size = min(page_size or 50, MAX_PAGE_SIZE)
    query = select(ReferentDoctor).order_by(ReferentDoctor.doctor_id).limit(size + 1)
    if area:
        query = query.join(DoctorArea).where(DoctorArea.area == area)
    if page_token:
        query = query.where(ReferentDoctor.doctor_id > page_token)
    doctors = list((await session.scalars(query)).unique())
    next_token = doctors[size - 1].doctor_id if len(doctors) > size else ""
    return doctors[:size], next_token
