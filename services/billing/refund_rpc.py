"""RefundPayment (issue 7): the gRPC glue around `domain.refunds`, kept apart from the
servicer. Reserve under the idempotency key, ask the PSP only while holding the refund's
claim (duplicates wait for the outcome), apply the answer once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from secondopinion.billing.v1 import billing_pb2 as pb
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.convert import refund_to_pb
from services.billing.domain import refunds
from services.billing.domain.invoices import Archive
from services.billing.models import IdempotencyRecord, PaymentAttempt, Refund
from services.billing.psp.paybox import PaymentServiceProvider, RefundAnswer
from services.shared.auth import Role
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum

# The case workflow's worker (compensation of a cancelled case) and staff may refund.
REFUND_SERVICES = frozenset({"worker"})
# How long a duplicate request waits for the one talking to the PSP (longer than its timeout).
WAIT_SECONDS = 20.0
POLL_SECONDS = 0.05
# Answer used when the capture can no longer be named to the PSP (its data was purged).
NO_TRANSACTION = "00002"


async def _load(
    sessions: async_sessionmaker[AsyncSession], refund_id: str
) -> tuple[Refund, PaymentAttempt | None]:
    async with sessions() as session:
        refund = await session.get(Refund, refund_id)
        if refund is None:
            raise NotFound("the refund was purged")
        attempt = (
            await session.get(PaymentAttempt, refund.payment_attempt_id)
            if refund.payment_attempt_id
            else None
        )
        return refund, attempt


async def refund_payment(
    sessions: async_sessionmaker[AsyncSession],
    psp: PaymentServiceProvider,
    archive: Archive,
    wake_outbox: Callable[[], None],
    request: pb.RefundPaymentRequest,
) -> pb.RefundPaymentResponse:
    require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE, services=REFUND_SERVICES)
    reason = from_pb_enum(pb.RefundReason, refunds.RefundReason, request.reason)
    if reason is None:
        raise InvalidArgument("reason is required")
    command = refunds.RefundCommand(
        request.idempotency_key, request.order_id, request.amount_cents, request.currency, reason
    )

    async def reserve(session: AsyncSession) -> str:
        return await refunds.reserve(session, archive, command)

    refund_id, replayed = await run_once(sessions, IdempotencyRecord, request, "RefundPayment", reserve)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    holds_claim = not replayed  # the reservation took the claim
    while True:
        refund, attempt = await _load(sessions, refund_id)
        if refund.status != refunds.RefundStatus.PENDING.value:
            break
        if not holds_claim:
            async with sessions.begin() as session:
                holds_claim = await refunds.claim(session, refund_id)
        if holds_claim:
            if attempt is None or not attempt.psp_transaction_id:
                answer = RefundAnswer(NO_TRANSACTION)
            else:
                answer = await refunds.ask_psp(psp, refunds.psp_request(refund, attempt))
            if answer.unreachable:
                async with sessions.begin() as session:
                    await refunds.release(session, refund_id)
                raise Unavailable(
                    "the PSP did not answer; the refund stays pending: retry with the same idempotency_key"
                )
            async with sessions.begin() as session:
                completed = await refunds.finish(session, archive, refund_id, answer)
            if completed:
                wake_outbox()
            holds_claim = False
            continue
        if loop.time() > deadline:
            raise Unavailable(
                "the refund is being processed by another request; retry with the same idempotency_key"
            )
        await asyncio.sleep(POLL_SECONDS)
    if refund.status == refunds.RefundStatus.FAILED.value:
        raise FailedPrecondition(
            f"the PSP refused the refund (code {refund.psp_error_code}); nothing was refunded"
        )
    return pb.RefundPaymentResponse(refund=refund_to_pb(refund))
