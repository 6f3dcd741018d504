"""Orders: the proof of what was bought at which price (BIL-09). The price is fixed on
the order from the catalog in force; nothing later changes it."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.domain.common import CasePurpose, OrderStatus, random_reference
from services.billing.domain.prices import PriceLine, catalog_in_force, compute_price
from services.billing.domain.restriction import ensure_processing_allowed
from services.billing.models import Order
from services.shared.auth import Principal
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, InvalidArgument, NotFound

UUID_LENGTH = 36


def check_id(value: str, field: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise InvalidArgument(f"{field} must be a UUID") from None


async def create_order(
    session: AsyncSession,
    case_id: str,
    payer_account_id: str,
    purpose: CasePurpose,
    area: str,
    doctor_count: int,
) -> Order:
    case_id = check_id(case_id, "case_id")
    payer_account_id = check_id(payer_account_id, "payer_account_id")
    await ensure_processing_allowed(session, payer_account_id)  # GDPR-04
    if await session.scalar(select(Order.order_id).where(Order.case_id == case_id)) is not None:
        raise AlreadyExists("the case already has an order")
    catalog = await catalog_in_force(session)
    price = compute_price(catalog, purpose, area, doctor_count)
    order = Order(
        order_id=str(uuid.uuid4()),
        order_reference=random_reference("SO", 3).replace("-", ""),
        case_reference=random_reference("SO"),
        case_id=case_id,
        payer_account_id=payer_account_id,
        purpose=purpose.value,
        therapeutic_area=area,
        doctor_count=doctor_count,
        catalog_version=price.catalog_version,
        lines=[line.as_json() for line in price.lines],
        total_amount_cents=price.total_amount_cents,
        currency=price.currency,
        status=OrderStatus.AWAITING_PAYMENT.value,
        funding_source="",
        refunded_amount_cents=0,
        created_at=utcnow(),
    )
    session.add(order)
    await session.flush()
    return order


def order_lines(order: Order) -> list[PriceLine]:
    return [PriceLine.from_json(line) for line in order.lines]


def may_read_order(principal: Principal, order: Order) -> bool:
    return (
        principal.is_service
        or principal.role.value in {"administrator", "coordinator"}
        or (principal.subject == order.payer_account_id)
    )


async def get_order(
    session: AsyncSession, principal: Principal, order_id: str = "", case_id: str = ""
) -> Order:
    order: Order | None = None
    if order_id:
        order = await session.get(Order, order_id)
    elif case_id:
        order = await session.scalar(select(Order).where(Order.case_id == case_id))
    else:
        raise InvalidArgument("order_id or case_id is required")
    if order is None or not may_read_order(principal, order):
        raise NotFound("no such order")
    return order
