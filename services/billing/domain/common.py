"""Vocabulary shared by the billing rules: statuses, money, references, pages."""

from __future__ import annotations

import secrets
from datetime import datetime
from enum import StrEnum

from services.shared.errors import InvalidArgument

CURRENCY = "EUR"
MAX_PAGE_SIZE = 100
# Crockford base32 without I, L, O, U: nothing to misread when typed from paper.
REFERENCE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class CasePurpose(StrEnum):
    SECOND_OPINION = "SECOND_OPINION"
    OPINION_BEFORE_INDEMNITY_CLAIM = "OPINION_BEFORE_INDEMNITY_CLAIM"


class OrderStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    PAID = "paid"
    COVERED = "covered"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    CANCELLED = "cancelled"


class FundingSource(StrEnum):
    UNSPECIFIED = ""
    CARD = "card"
    PARTNER_COVERAGE = "partner_coverage"


class PaymentStatus(StrEnum):
    PENDING = "pending"
    CAPTURED = "captured"
    REFUSED = "refused"
    ABANDONED = "abandoned"


class LineKind(StrEnum):
    DOCTOR_FEE = "doctor_fee"
    PLATFORM_FEE = "platform_fee"


def random_reference(prefix: str, groups: int = 2, size: int = 4) -> str:
    parts = ["".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(size)) for _ in range(groups)]
    return "-".join([prefix, *parts])


def vat_included(total_cents: int, rate_basis_points: int) -> int:
    """VAT contained in a tax-included amount, rounded half up to the cent."""
    if rate_basis_points <= 0:
        return 0
    divisor = 10000 + rate_basis_points
    return (total_cents * rate_basis_points * 2 + divisor) // (divisor * 2)


def check_currency(currency: str, expected: str = CURRENCY) -> None:
    if currency != expected:
        raise InvalidArgument(f"currency must be {expected}")


def page_size(requested: int, default: int = 50) -> int:
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    return min(requested or default, MAX_PAGE_SIZE)


def offset_from_token(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidArgument("page_token is invalid")
    return int(token)


def next_token(offset: int, size: int, fetched: int) -> str:
    return str(offset + size) if fetched > size else ""


def require_aware(value: datetime | None, field: str) -> datetime:
    if value is None:
        raise InvalidArgument(f"{field} is required")
    return value
