"""Partner agreements and coverage codes (BIL-01).

A code is derived from a server secret and its id (HMAC-SHA256), so a retried issue
returns the same codes although only the SHA-256 of each code is stored. Codes carry 60
random-looking bits: guessing one is hopeless, and the gateway rate-limits entries.
Consumption is one conditional UPDATE per counter (code uses, agreement quota, order
status) inside one transaction: two cases racing for the last use cannot both win.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.common import (
    REFERENCE_ALPHABET,
    CasePurpose,
    FundingSource,
    OrderStatus,
    next_token,
    offset_from_token,
    page_size,
)
from services.billing.domain.restriction import ensure_processing_allowed
from services.billing.models import CoverageCode, Order, Partner, PartnerAgreement
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

MAX_CODES_PER_BATCH = 1000
MAX_USES = 100_000
AREA_CODE_LENGTH = 64


class CodeUsage(StrEnum):
    SINGLE_USE = "single_use"
    COUNTED = "counted"


class CodeIssuer(StrEnum):
    PARTNER = "partner"
    PLATFORM = "platform"


class CodeStatus(StrEnum):
    ACTIVE = "active"
    USED_UP = "used_up"
    EXPIRED = "expired"
    REVOKED = "revoked"


def code_status(code: CoverageCode, now: datetime | None = None) -> CodeStatus:
    now = now or utcnow()
    if code.revoked_at is not None:
        return CodeStatus.REVOKED
    if code.use_count >= code.max_uses:
        return CodeStatus.USED_UP
    if code.expires_at <= now:
        return CodeStatus.EXPIRED
    return CodeStatus.ACTIVE


def normalise_code(typed: str) -> str:
    """What a person types: any case, spaces or dashes, O for 0 and I/L for 1."""
    text = typed.upper().replace("-", "").replace(" ", "")
    text = text.replace("O", "0").replace("I", "1").replace("L", "1")
    return text


def code_hash(typed: str) -> str:
    return hashlib.sha256(normalise_code(typed).encode()).hexdigest()


def derive_code(secret: bytes, code_id: str) -> str:
    digest = hmac.new(secret, f"coverage-code:{code_id}".encode(), hashlib.sha256).digest()
    number = int.from_bytes(digest[:8], "big") >> 4  # 60 bits
    chars = []
    for _ in range(12):
        chars.append(REFERENCE_ALPHABET[number & 31])
        number >>= 5
    text = "".join(chars)
    return f"{text[0:4]}-{text[4:8]}-{text[8:12]}"


@dataclass(frozen=True)
class IssuedCode:
    row: CoverageCode
    code: str


# --- agreements --------------------------------------------------------------------------


def agreement_in_force(agreement: PartnerAgreement, at: datetime) -> bool:
    return agreement.starts_at <= at and (agreement.ends_at is None or at < agreement.ends_at)


async def get_partner(session: AsyncSession, partner_id: str) -> Partner:
    partner = await session.get(Partner, partner_id) if partner_id else None
    if partner is None:
        raise NotFound("no such partner")
    return partner


async def create_agreement(
    session: AsyncSession,
    partner_id: str,
    purposes: list[CasePurpose],
    areas: list[str],
    starts_at: datetime | None,
    ends_at: datetime | None,
    quota: int,
) -> PartnerAgreement:
    await get_partner(session, partner_id)
    if not purposes:
        raise InvalidArgument("covered_purposes needs at least one purpose")
    if any(not area or len(area) > AREA_CODE_LENGTH or not area.replace("_", "").isalnum() for area in areas):
        raise InvalidArgument("covered_therapeutic_areas must be catalog codes")
    if starts_at is None:
        raise InvalidArgument("starts_at is required")
    if ends_at is not None and ends_at <= starts_at:
        raise InvalidArgument("ends_at must be after starts_at")
    if quota < 0:
        raise InvalidArgument("quota must not be negative (0: unlimited)")
    agreement = PartnerAgreement(
        agreement_id=str(uuid.uuid4()),
        partner_id=partner_id,
        covered_purposes=sorted({p.value for p in purposes}),
        covered_therapeutic_areas=sorted(set(areas)),
        starts_at=starts_at,
        ends_at=ends_at,
        quota=quota,
        used_count=0,
        created_at=utcnow(),
    )
    session.add(agreement)
    await session.flush()
    return agreement


async def list_agreements(
    session: AsyncSession, partner_id: str, include_ended: bool
) -> list[PartnerAgreement]:
    query = select(PartnerAgreement).where(PartnerAgreement.partner_id == partner_id)
    if not include_ended:
        now = utcnow()
        query = query.where((PartnerAgreement.ends_at.is_(None)) | (PartnerAgreement.ends_at > now))
    rows = await session.scalars(query.order_by(PartnerAgreement.created_at.desc()))
    return list(rows)


async def partner_agreement(session: AsyncSession, partner_id: str, agreement_id: str) -> PartnerAgreement:
    agreement = await session.get(PartnerAgreement, agreement_id) if agreement_id else None
    if agreement is None or agreement.partner_id != partner_id:
        raise NotFound("no such agreement")
    return agreement


async def end_agreement(
    session: AsyncSession, agreement_id: str, ends_at: datetime | None
) -> PartnerAgreement:
    agreement = await session.get(PartnerAgreement, agreement_id) if agreement_id else None
    if agreement is None:
        raise NotFound("no such agreement")
    if ends_at is None:
        raise InvalidArgument("ends_at is required")
    if ends_at <= agreement.starts_at:
        raise InvalidArgument("ends_at must be after the agreement's start")
    if agreement.ends_at is not None and ends_at > agreement.ends_at:
        raise FailedPrecondition("an agreement can only be shortened")
    agreement.ends_at = ends_at
    await session.flush()
    return agreement


# --- codes -------------------------------------------------------------------------------


async def issue_codes(
    session: AsyncSession,
    secret: bytes,
    partner_id: str,
    agreement_id: str,
    count: int,
    usage: CodeUsage | None,
    max_uses: int,
    expires_at: datetime | None,
    issuer: CodeIssuer,
) -> str:
    """Create a batch of codes; returns the batch id."""
    agreement = await partner_agreement(session, partner_id, agreement_id)
    now = utcnow()
    if not agreement_in_force(agreement, now):
        raise FailedPrecondition("the agreement is not in force")
    if not 1 <= count <= MAX_CODES_PER_BATCH:
        raise InvalidArgument(f"count must be between 1 and {MAX_CODES_PER_BATCH}")
    if usage is None:
        raise InvalidArgument("usage is required")
    if usage is CodeUsage.SINGLE_USE:
        if max_uses not in (0, 1):
            raise InvalidArgument("a single-use code has max_uses 1")
        max_uses = 1
    elif not 2 <= max_uses <= MAX_USES:
        raise InvalidArgument(f"a counted code has max_uses between 2 and {MAX_USES}")
    if expires_at is None or expires_at <= now:
        raise InvalidArgument("expires_at must be in the future")
    if agreement.ends_at is not None and expires_at > agreement.ends_at:
        raise InvalidArgument("expires_at must fall within the agreement")
    batch_id = str(uuid.uuid4())
    for _ in range(count):
        code_id = str(uuid.uuid4())
        session.add(
            CoverageCode(
                code_id=code_id,
                batch_id=batch_id,
                partner_id=partner_id,
                agreement_id=agreement_id,
                code_sha256=code_hash(derive_code(secret, code_id)),
                usage=usage.value,
                max_uses=max_uses,
                use_count=0,
                issuer=issuer.value,
                expires_at=expires_at,
                created_at=now,
            )
        )
    await session.flush()
    return batch_id


async def batch_codes(session: AsyncSession, secret: bytes, batch_id: str) -> list[IssuedCode]:
    rows = await session.scalars(
        select(CoverageCode).where(CoverageCode.batch_id == batch_id).order_by(CoverageCode.code_id)
    )
    return [IssuedCode(row, derive_code(secret, row.code_id)) for row in rows]


async def partner_code(session: AsyncSession, partner_id: str, code_id: str) -> CoverageCode:
    code = await session.get(CoverageCode, code_id) if code_id else None
    if code is None or code.partner_id != partner_id:
        raise NotFound("no such coverage code")
    return code


async def partner_code_by_value(session: AsyncSession, partner_id: str, typed: str) -> CoverageCode:
    code = await session.scalar(select(CoverageCode).where(CoverageCode.code_sha256 == code_hash(typed)))
    if code is None or code.partner_id != partner_id:
        raise NotFound("no such coverage code")
    return code


async def revoke_code(session: AsyncSession, partner_id: str, code_id: str) -> CoverageCode:
    code = await partner_code(session, partner_id, code_id)
    if code.revoked_at is None:
        code.revoked_at = utcnow()
        await session.flush()
    return code


async def list_codes(
    session: AsyncSession, partner_id: str, status: CodeStatus | None, size: int, token: str
) -> tuple[list[CoverageCode], str]:
    size = page_size(size)
    offset = offset_from_token(token)
    now = utcnow()
    query = select(CoverageCode).where(CoverageCode.partner_id == partner_id)
    if status is CodeStatus.REVOKED:
        query = query.where(CoverageCode.revoked_at.is_not(None))
    elif status is CodeStatus.USED_UP:
        query = query.where(
            CoverageCode.revoked_at.is_(None), CoverageCode.use_count >= CoverageCode.max_uses
        )
    elif status is CodeStatus.EXPIRED:
        query = query.where(
            CoverageCode.revoked_at.is_(None),
            CoverageCode.use_count < CoverageCode.max_uses,
            CoverageCode.expires_at <= now,
        )
    elif status is CodeStatus.ACTIVE:
        query = query.where(
            CoverageCode.revoked_at.is_(None),
            CoverageCode.use_count < CoverageCode.max_uses,
            CoverageCode.expires_at > now,
        )
    rows = list(
        await session.scalars(
            query.order_by(CoverageCode.created_at.desc(), CoverageCode.code_id)
            .offset(offset)
            .limit(size + 1)
        )
    )
    return rows[:size], next_token(offset, size, len(rows))


async def validate_code_on_order(session: AsyncSession, order: Order, typed: str) -> Order:
    """Cover an order with a code: all three counters move in this transaction or none."""
    await ensure_processing_allowed(session, order.payer_account_id)  # GDPR-04
    if order.status != OrderStatus.AWAITING_PAYMENT:
        raise FailedPrecondition("the order is not awaiting payment")
    if not typed.strip() or len(typed) > 64:
        raise InvalidArgument("code is required")
    code = await session.scalar(select(CoverageCode).where(CoverageCode.code_sha256 == code_hash(typed)))
    if code is None:
        raise NotFound("no such coverage code")
    now = utcnow()
    status = code_status(code, now)
    if status is not CodeStatus.ACTIVE:
        raise FailedPrecondition(f"the coverage code is {status.value.replace('_', ' ')}")
    agreement = await session.get(PartnerAgreement, code.agreement_id)
    assert agreement is not None
    if not agreement_in_force(agreement, now):
        raise FailedPrecondition("the partner's agreement is not in force")
    if order.purpose not in agreement.covered_purposes or (
        agreement.covered_therapeutic_areas
        and order.therapeutic_area not in agreement.covered_therapeutic_areas
    ):
        raise FailedPrecondition("the coverage code does not cover this request")
    used = await session.execute(
        update(CoverageCode)
        .where(
            CoverageCode.code_id == code.code_id,
            CoverageCode.revoked_at.is_(None),
            CoverageCode.use_count < CoverageCode.max_uses,
            CoverageCode.expires_at > now,
        )
        .values(use_count=CoverageCode.use_count + 1)
    )
    if used.rowcount != 1:  # type: ignore[attr-defined]
        raise FailedPrecondition("the coverage code is used up")
    quota = await session.execute(
        update(PartnerAgreement)
        .where(
            PartnerAgreement.agreement_id == agreement.agreement_id,
            (PartnerAgreement.quota == 0) | (PartnerAgreement.used_count < PartnerAgreement.quota),
        )
        .values(used_count=PartnerAgreement.used_count + 1)
    )
    if quota.rowcount != 1:  # type: ignore[attr-defined]
        raise FailedPrecondition("the partner's agreement quota is used up")
    settled = await session.execute(
        update(Order)
        .where(Order.order_id == order.order_id, Order.status == OrderStatus.AWAITING_PAYMENT.value)
        .values(
            status=OrderStatus.COVERED.value,
            funding_source=FundingSource.PARTNER_COVERAGE.value,
            partner_id=code.partner_id,
            agreement_id=agreement.agreement_id,
            coverage_code_id=code.code_id,
            settled_at=now,
        )
    )
    if settled.rowcount != 1:  # type: ignore[attr-defined]
        raise FailedPrecondition("the order is not awaiting payment")
    await session.refresh(order)
    return order


async def count_codes(session: AsyncSession, partner_id: str) -> int:
    return int(await session.scalar(select(func.count()).where(CoverageCode.partner_id == partner_id)) or 0)
