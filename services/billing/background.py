"""The billing service's background tasks (each interval setting: 0 disables it).

- `InvoiceRenderer`: renders and archives invoices numbered but not archived yet (BIL-08,
  BIL-09). Woken right after each issue; its pass at start and every interval renders
  whatever a process that died between commit and rendering left behind. Several billing
  processes may run it: an invoice row being rendered is locked and skipped by the others.
  Its first complete pass also renders the PDF of any archived invoice record left
  without one (archived, before the archive rendered pending invoices first, while its
  PDF was still to be rendered); the archive no longer lets such a record appear.
- `PaymentSweeper`: marks card payment attempts without a PSP answer past their expiry
  abandoned (BIL-02, BIL-06), and carries out the refunds of duplicate payments (a late
  capture of an order paid meanwhile) with the PSP, each under its refund's claim. The
  payer's email is written to the outbox in the transaction that records the PSP's
  acceptance (`refunds.finish`), so a sweep run twice, or a process dying between the
  PSP's answer and the email, tells the payer exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.domain import invoices, lifecycle, payments, refunds
from services.billing.models import PaymentAttempt, Refund
from services.billing.psp.paybox import PaymentServiceProvider, RefundAnswer
from services.billing.refund_rpc import NO_TRANSACTION
from services.shared.db import utcnow
from services.shared.errors import Unavailable

log = logging.getLogger(__name__)


class _Periodic:
    """A pass at start, then on every wake-up or every `interval` seconds."""

    name = "background pass"

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def run_pass(self) -> int:
        raise NotImplementedError

    async def run(self) -> None:
        while True:
            self._event.clear()
            try:
                await self.run_pass()
            except Exception as exc:  # keep the loop alive; the next pass retries
                log.error(f"{self.name} failed", exc_info=exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout=self._interval)


class InvoiceRenderer(_Periodic):
    name = "invoice rendering pass"

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], archive: invoices.Archive, interval: float
    ) -> None:
        super().__init__(interval)
        self._sessions = sessions
        self._archive = archive
        self._archived_checked = False

    async def run_pass(self) -> int:
        """Renders every invoice still without its archived copy; how many this pass did."""
        done = await self.render_live()
        if not self._archived_checked:
            done += await self.render_archived()
        return done

    async def render_archived(self) -> int:
        """Renders the PDF of archived invoice records left without one; once per process
        (no new one can appear), again on the next pass if the store was down."""
        done = 0
        skipped: set[str] = set()
        failed = False
        while True:
            async with self._sessions() as session:
                due = [
                    r
                    for r in await lifecycle.unrendered_archived_invoice_ids(session, 50 + len(skipped))
                    if r not in skipped
                ]
            if not due:
                self._archived_checked = not failed  # a failed one is tried again next pass
                return done
            for record_id in due:
                try:
                    async with self._sessions.begin() as session:
                        rendered = await lifecycle.render_archived_invoice(session, self._archive, record_id)
                except Unavailable:
                    return done  # the store is down: the next pass retries
                except Exception as exc:  # one bad record must not hold back the others
                    log.error(
                        "archived invoice not rendered",
                        exc_info=exc,
                        extra={"fields": {"invoice_id": record_id}},
                    )
                    skipped.add(record_id)
                    failed = True
                    continue
                if rendered:
                    done += 1
                else:
                    skipped.add(record_id)  # another process holds it (or did it)

    async def render_live(self) -> int:
        done = 0
        skipped: set[str] = set()
        while True:
            async with self._sessions() as session:
                due = [
                    i
                    for i in await invoices.unarchived_invoice_ids(session, 50 + len(skipped))
                    if i not in skipped
                ]
            if not due:
                return done
            for invoice_id in due:
                try:
                    async with self._sessions.begin() as session:
                        rendered = await invoices.archive_invoice(
                            session, self._archive, invoice_id, wait=False
                        )
                except Unavailable:
                    return done  # the store is down: the next pass retries
                except Exception as exc:  # one bad invoice must not hold back the others
                    log.error(
                        "invoice not rendered", exc_info=exc, extra={"fields": {"invoice_id": invoice_id}}
                    )
                    skipped.add(invoice_id)
                    continue
                if rendered is None or rendered.archived_at is None:
                    skipped.add(invoice_id)  # another process holds it
                else:
                    done += 1


class PaymentSweeper(_Periodic):
    name = "payment sweep"

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        psp: PaymentServiceProvider,
        archive: invoices.Archive,
        interval: float,
        wake_outbox: Callable[[], None],
    ) -> None:
        super().__init__(interval)
        self._sessions = sessions
        self._psp = psp
        self._archive = archive
        self._wake_outbox = wake_outbox

    async def run_pass(self) -> int:
        abandoned = await self.abandon_expired()
        await self.resume_refunds()
        return abandoned

    async def abandon_expired(self) -> int:
        total = 0
        while True:
            async with self._sessions.begin() as session:
                changed = await payments.abandon_expired(session, utcnow())
            total += len(changed)
            for attempt_id in changed:
                log.info("payment attempt abandoned", extra={"fields": {"payment_attempt_id": attempt_id}})
            if not changed:
                return total

    async def resume_refunds(self) -> int:
        """Carries out each pending refund nobody is at: duplicate payments, and refunds
        their caller abandoned; how many completed."""
        completed = 0
        async with self._sessions() as session:
            due = await refunds.refunds_to_resume(session)
        for refund_id in due:
            if await self._refund_once(refund_id):
                completed += 1
        return completed

    async def _refund_once(self, refund_id: str) -> bool:
        async with self._sessions.begin() as session:
            if not await refunds.claim(session, refund_id):
                return False  # another process is at it
        async with self._sessions() as session:
            refund = await session.get(Refund, refund_id)
            assert refund is not None
            attempt = await session.scalar(
                select(PaymentAttempt).where(PaymentAttempt.payment_attempt_id == refund.payment_attempt_id)
            )
        if attempt is None or not attempt.psp_transaction_id:
            answer = RefundAnswer(NO_TRANSACTION)
        else:
            answer = await refunds.ask_psp(self._psp, refunds.psp_request(refund, attempt))
        if answer.unreachable:
            async with self._sessions.begin() as session:
                await refunds.release(session, refund_id)
            log.warning("refund postponed: no PSP answer", extra={"fields": {"refund_id": refund_id}})
            return False
        async with self._sessions.begin() as session:
            completed = await refunds.finish(session, self._archive, refund_id, answer)
        if completed:
            self._wake_outbox()
            if refund.reason != refunds.RefundReason.DUPLICATE_PAYMENT.value:
                # Operations see that a caller left it; ids only.
                log.warning(
                    "abandoned refund completed by the sweep",
                    extra={"fields": {"refund_id": refund_id, "order_id": refund.order_id}},
                )
        return completed
