"""Partners who cover the service for their members (BIL-01)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.models import Partner
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, InvalidArgument

MAX_PAGE_SIZE = 100


class PartnerKind(StrEnum):
    INSURER = "insurer"
    MUTUELLE = "mutuelle"
    PROVIDENT_INSTITUTION = "provident_institution"
    PROFESSIONAL_BRANCH = "professional_branch"
    EMPLOYER = "employer"


async def create_partner(session: AsyncSession, name: str, kind: PartnerKind) -> Partner:
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise InvalidArgument("name is required (at most 200 characters)")
    if await session.scalar(select(Partner.partner_id).where(Partner.name == name)) is not None:
        raise AlreadyExists("a partner with this name already exists")
    partner = Partner(partner_id=str(uuid.uuid4()), name=name, kind=kind.value, created_at=utcnow())
    session.add(partner)
    await session.flush()
    return partner


async def list_partners(session: AsyncSession, page_size: int, page_token: str) -> tuple[list[Partner], str]:
    if page_size < 0:
        raise InvalidArgument("page_size must not be negative")
    size = min(page_size or 50, MAX_PAGE_SIZE)
    query = select(Partner).order_by(Partner.partner_id).limit(size + 1)
    if page_token:
        query = query.where(Partner.partner_id > page_token)
    partners = list(await session.scalars(query))
    next_token = partners[size - 1].partner_id if len(partners) > size else ""
    return partners[:size], next_token
