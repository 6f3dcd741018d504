"""Doctors' billing and collection mandates (BIL-04, BIL-05)."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.orders import check_id
from services.billing.models import BillingMandate
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


def prefix_for(doctor_id: str) -> str:
    """A stable, short numbering prefix per doctor (the series is per issuer)."""
    return "D" + hashlib.sha256(doctor_id.encode()).hexdigest()[:8].upper()


def in_force(mandate: BillingMandate, at: datetime) -> bool:
    return mandate.starts_at <= at and (mandate.ends_at is None or at < mandate.ends_at)


async def record_mandate(
    session: AsyncSession,
    *,
    doctor_id: str,
    doctor_account_id: str,
    doctor_legal_name: str,
    covers_billing: bool,
    covers_collection: bool,
    starts_at: datetime | None,
    ends_at: datetime | None,
    text_version: str,
    text_sha256: str,
    signed_document_id: str,
    accepted_at: datetime | None,
) -> BillingMandate:
    doctor_id = check_id(doctor_id, "doctor_id")
    doctor_account_id = check_id(doctor_account_id, "doctor_account_id")
    signed_document_id = check_id(signed_document_id, "signed_document_id")
    doctor_legal_name = " ".join(doctor_legal_name.split())
    if not doctor_legal_name or len(doctor_legal_name) > 200:
        raise InvalidArgument("doctor_legal_name is required (the name invoices are issued in)")
    if not covers_billing and not covers_collection:
        raise InvalidArgument("a mandate covers billing, collection or both")
    if not VERSION.match(text_version):
        raise InvalidArgument("mandate_text_version is required")
    if not SHA256_HEX.match(text_sha256):
        raise InvalidArgument("mandate_text_sha256_hex must be 64 lowercase hex characters")
    if starts_at is None or accepted_at is None:
        raise InvalidArgument("starts_at and accepted_at are required")
    if accepted_at > utcnow():
        raise InvalidArgument("accepted_at cannot be in the future")
    if ends_at is not None and ends_at <= starts_at:
        raise InvalidArgument("ends_at must be after starts_at")
    existing = await session.scalars(select(BillingMandate).where(BillingMandate.doctor_id == doctor_id))
    for other in existing:
        overlaps = (other.ends_at is None or starts_at < other.ends_at) and (
            ends_at is None or other.starts_at < ends_at
        )
        if overlaps:
            raise AlreadyExists("the doctor already has a mandate over this period; end it first")
    mandate = BillingMandate(
        mandate_id=str(uuid.uuid4()),
        doctor_id=doctor_id,
        doctor_account_id=doctor_account_id,
        doctor_legal_name=doctor_legal_name,
        covers_billing=covers_billing,
        covers_collection=covers_collection,
        starts_at=starts_at,
        ends_at=ends_at,
        mandate_text_version=text_version,
        mandate_text_sha256_hex=text_sha256,
        signed_document_id=signed_document_id,
        accepted_at=accepted_at,
        invoice_number_prefix=prefix_for(doctor_id),
        created_at=utcnow(),
    )
    session.add(mandate)
    await session.flush()
    return mandate


async def mandate_in_force(
    session: AsyncSession, doctor_id: str, at: datetime | None = None
) -> BillingMandate:
    at = at or utcnow()
    rows = await session.scalars(
        select(BillingMandate)
        .where(BillingMandate.doctor_id == doctor_id)
        .order_by(BillingMandate.starts_at.desc())
    )
    for mandate in rows:
        if in_force(mandate, at):
            return mandate
    raise NotFound("no billing mandate in force for this doctor")


async def end_mandate(session: AsyncSession, mandate_id: str, ends_at: datetime | None) -> BillingMandate:
    mandate = await session.get(BillingMandate, mandate_id) if mandate_id else None
    if mandate is None:
        raise NotFound("no such mandate")
    if ends_at is None or ends_at <= mandate.starts_at:
        raise InvalidArgument("ends_at must be after the mandate's start")
    if mandate.ends_at is not None and ends_at > mandate.ends_at:
        raise FailedPrecondition("a mandate can only be shortened")
    mandate.ends_at = ends_at
    await session.flush()
    return mandate
