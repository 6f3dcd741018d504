"""The versioned price catalog (BIL-03): euros, all taxes included, integer cents."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.common import CURRENCY, CasePurpose, LineKind, vat_included
from services.billing.models import PriceCatalog
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
AREA_PATTERN = re.compile(r"^[a-z0-9_]{0,64}$")
MAX_FEE_CENTS = 10_000_000
MAX_DOCTORS = 5


@dataclass(frozen=True)
class Entry:
    purpose: str
    therapeutic_area: str
    doctor_fee_amount_cents: int
    platform_fee_amount_cents: int
    currency: str
    doctor_fee_vat_rate_basis_points: int
    platform_fee_vat_rate_basis_points: int


@dataclass(frozen=True)
class PriceLine:
    kind: str
    wording_code: str
    quantity: int
    unit_amount_cents: int
    total_amount_cents: int
    vat_amount_cents: int
    vat_rate_basis_points: int
    currency: str

    def as_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, object]) -> PriceLine:
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Price:
    catalog_version: str
    lines: list[PriceLine]
    total_amount_cents: int
    currency: str


def make_line(kind: LineKind, wording: str, quantity: int, unit: int, rate: int) -> PriceLine:
    total = unit * quantity
    return PriceLine(kind.value, wording, quantity, unit, total, vat_included(total, rate), rate, CURRENCY)


def check_entries(entries: list[Entry]) -> None:
    if not entries:
        raise InvalidArgument("a catalog needs entries")
    seen: set[tuple[str, str]] = set()
    for entry in entries:
        if entry.currency != CURRENCY:
            raise InvalidArgument("prices are in EUR")
        if not AREA_PATTERN.match(entry.therapeutic_area):
            raise InvalidArgument("therapeutic_area must be a catalog code")
        for amount in (entry.doctor_fee_amount_cents, entry.platform_fee_amount_cents):
            if not 0 <= amount <= MAX_FEE_CENTS:
                raise InvalidArgument("fees must be between 0 and 100,000.00 EUR")
        for rate in (entry.doctor_fee_vat_rate_basis_points, entry.platform_fee_vat_rate_basis_points):
            if not 0 <= rate <= 5000:
                raise InvalidArgument("VAT rates are between 0 and 5000 basis points")
        key = (entry.purpose, entry.therapeutic_area)
        if key in seen:
            raise InvalidArgument("an entry is priced twice")
        seen.add(key)
    for purpose in CasePurpose:
        if (purpose.value, "") not in seen:
            raise InvalidArgument("every purpose needs a default entry (empty therapeutic area)")


async def publish_catalog(
    session: AsyncSession, version: str, effective_at: datetime | None, entries: list[Entry]
) -> PriceCatalog:
    if not VERSION_PATTERN.match(version):
        raise InvalidArgument("catalog_version must be 1 to 40 letters, digits, dots or dashes")
    now = utcnow()
    if effective_at is None:
        effective_at = now
    elif effective_at < now:
        raise InvalidArgument("effective_at must not be in the past (prices are never changed retroactively)")
    check_entries(entries)
    if await session.get(PriceCatalog, version) is not None:
        raise AlreadyExists("this catalog version already exists")
    catalog = PriceCatalog(
        catalog_version=version,
        effective_at=effective_at,
        published_at=now,
        entries=[asdict(entry) for entry in entries],
    )
    session.add(catalog)
    await session.flush()
    return catalog


async def catalog_in_force(session: AsyncSession, at: datetime | None = None) -> PriceCatalog:
    at = at or utcnow()
    catalog = await session.scalar(
        select(PriceCatalog)
        .where(PriceCatalog.effective_at <= at)
        .order_by(PriceCatalog.effective_at.desc(), PriceCatalog.published_at.desc())
        .limit(1)
    )
    if catalog is None:
        raise FailedPrecondition("no price catalog is in force")
    return catalog


async def get_catalog(session: AsyncSession, version: str) -> PriceCatalog:
    if not version:
        return await catalog_in_force(session)
    catalog = await session.get(PriceCatalog, version)
    if catalog is None:
        raise NotFound("no such catalog version")
    return catalog


def entries_of(catalog: PriceCatalog) -> list[Entry]:
    return [Entry(**entry) for entry in catalog.entries]  # type: ignore[arg-type]


def compute_price(catalog: PriceCatalog, purpose: CasePurpose, area: str, doctor_count: int) -> Price:
    if not 1 <= doctor_count <= MAX_DOCTORS:
        raise InvalidArgument(f"doctor_count must be between 1 and {MAX_DOCTORS}")
    if not AREA_PATTERN.match(area):
        raise InvalidArgument("therapeutic_area must be a catalog code")
    by_key = {(e.purpose, e.therapeutic_area): e for e in entries_of(catalog)}
    entry = by_key.get((purpose.value, area)) or by_key.get((purpose.value, ""))
    if entry is None:
        raise FailedPrecondition("the catalog has no price for this purpose")
    wording = purpose.value.lower()
    lines = [
        make_line(
            LineKind.DOCTOR_FEE,
            f"{wording}_doctor_fee",
            doctor_count,
            entry.doctor_fee_amount_cents,
            entry.doctor_fee_vat_rate_basis_points,
        ),
        make_line(
            LineKind.PLATFORM_FEE,
            "platform_use_fee",
            1,
            entry.platform_fee_amount_cents,
            entry.platform_fee_vat_rate_basis_points,
        ),
    ]
    return Price(catalog.catalog_version, lines, sum(line.total_amount_cents for line in lines), CURRENCY)
