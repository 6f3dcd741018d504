"""GDPR-04: once a subject's processing is restricted (RestrictSubject), their billing
data is kept but not otherwise processed: no new order, card payment or coverage for
them until the restriction is lifted. Reading what exists (their own orders and
invoices) still works; what the law requires on what already happened (issuing the
invoices of a settled order, a refund, the PSP's answer to a payment already started)
goes on."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from services.billing.models import SubjectRestriction
from services.shared.errors import FailedPrecondition

REFUSAL = (
    "processing of this account's billing data is restricted at the account holder's request "
    "(restriction of processing): no new order, card payment or coverage until the restriction is lifted"
)


async def is_restricted(session: AsyncSession, subject_id: str) -> bool:
    return await session.get(SubjectRestriction, subject_id) is not None


async def ensure_processing_allowed(session: AsyncSession, subject_id: str) -> None:
    """FAILED_PRECONDITION (a refusal no retry fixes) while the subject is restricted."""
    if await is_restricted(session, subject_id):
        raise FailedPrecondition(REFUSAL)
