"""The delivery loop: claims due messages from the outbox, sends each through its channel,
records the outcome (sent, retry with backoff, failed after N attempts, bounced).

Sends run concurrently (at most `concurrency` in flight); their outcomes are written by
group commit: the first finished send's outcome is written at once, and whatever finishes
while that transaction runs is written together in the next one (one transaction and
three statements per batch rather than one transaction per message). A send is not done,
and its slot not free, until its outcome is committed.

Runs inside the service process (`app.running`), woken by new messages and polling for
retries. Several loops (replicas) may share a database: claims are atomic, so a message is
handed to one worker at a time. A send whose reply was lost (crash between the SMTP
server's acceptance and the status update) is retried after the lease: the stable
Message-ID / Idempotency-Key lets the receiving side drop that rare duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import Channel, DeliveryStatus
from services.notifications.domain.channels import (
    DeliveryChannel,
    DeliveryResult,
    Outcome,
    store_development_copies,
)
from services.notifications.domain.outbox import (
    NO_GATE,
    Claimed,
    Recorded,
    RetryPolicy,
    WriteGate,
    claim_due,
    record_outcomes,
    release_claims,
)
from services.shared.db import utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoopSettings:
    concurrency: int
    batch_size: int
    poll_seconds: float
    lease: timedelta
    skip_locked: bool  # PostgreSQL
    # Development and test: keep a copy of every delivered message for ListOutbox.
    keep_development_copies: bool
    # Most outcomes written by one transaction.
    outcome_batch_size: int = 256


# An outcome waiting for its batch: the claim, the channel's answer, who awaits the write.
Pending = tuple[Claimed, DeliveryResult, "asyncio.Future[Recorded | None]"]


class Dispatcher:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        channels: Mapping[Channel, DeliveryChannel],
        retry: RetryPolicy,
        settings: LoopSettings,
        gate: WriteGate = NO_GATE,
    ) -> None:
        self._sessions = sessions
        self._gate = gate
        self._channels = dict(channels)
        self._retry = retry
        self._settings = settings
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[asyncio.Task[None], tuple[Claimed, list[bool]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._outcomes: list[Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.delivered = 0
        self.outcome_batches = 0

    def wake(self) -> None:
        """A message was queued: look for due messages now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            free = self._settings.concurrency - len(self._inflight)
            claimed: list[Claimed] = []
            self._wake.clear()
            # Claim in batches: when idle, or once half the workers are free (fewer claim
            # transactions under load, and no worker idles long).
            if free > 0 and (not self._inflight or free * 2 >= self._settings.concurrency):
                try:
                    claimed = await claim_due(
                        self._sessions,
                        utcnow(),
                        min(free, self._settings.batch_size),
                        self._settings.lease,
                        skip_locked=self._settings.skip_locked,
                        gate=self._gate,
                    )
                except Exception as exc:  # database unavailable: keep the loop alive
                    log.warning("outbox claim failed", extra={"fields": {"error_type": type(exc).__name__}})
            for item in claimed:
                started = [False]
                task = asyncio.create_task(self._deliver(item, started))
                self._inflight[task] = (item, started)
                task.add_done_callback(self._done)
            if claimed and len(claimed) == free:
                continue  # probably more due; the done callbacks wake us when slots free up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.poll_seconds)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._wake.set()

    async def _deliver(self, claimed: Claimed, started: list[bool]) -> None:
        message = claimed.message
        fields: dict[str, object] = {
            "notification_id": message.notification_id,
            "template": message.template,
            "channel": message.channel.value,
            "recipient": claimed.masked_recipient,
            "attempt": claimed.attempts,
        }
        started[0] = True
        channel = self._channels[message.channel]
        try:
            result = await channel.send(message)
        except Exception as exc:  # a channel bug must not lose the message: retry later
            log.error("channel error", exc_info=exc, extra={"fields": fields})
            result = DeliveryResult(Outcome.RETRY, f"error_{type(exc).__name__}"[:64])
        recorded = await self._record(claimed, result)
        if recorded is None:
            # The lease expires and the message is claimed again (at-least-once).
            log.error("outcome not recorded", extra={"fields": fields})
            return
        status = recorded.status
        if status is DeliveryStatus.SENT and recorded.held:
            self.delivered += 1
        level = logging.INFO if status in (DeliveryStatus.SENT, DeliveryStatus.QUEUED) else logging.WARNING
        event = (
            "notification retry scheduled" if status is DeliveryStatus.QUEUED else f"notification {status}"
        )
        log.log(level, event, extra={"fields": fields | {"status": status.value, "code": result.code}})

    async def _record(self, claimed: Claimed, result: DeliveryResult) -> Recorded | None:
        """Hand the outcome to the writer and wait until its batch is committed (None: the
        batch failed). Shielded: a send cancelled at shutdown still has its outcome written."""
        done: asyncio.Future[Recorded | None] = asyncio.get_running_loop().create_future()
        self._outcomes.append((claimed, result, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_outcomes(), name="notifications-outcomes")
        return await asyncio.shield(done)

    async def _write_outcomes(self) -> None:
        while self._outcomes:
            size = self._settings.outcome_batch_size
            batch, self._outcomes = self._outcomes[:size], self._outcomes[size:]
            try:
                recorded: Sequence[Recorded | None] = await self._write_batch(batch)
            except Exception as exc:
                log.error(
                    "outcomes not recorded",
                    exc_info=exc,
                    extra={"fields": {"count": len(batch), "error_type": type(exc).__name__}},
                )
                recorded = [None] * len(batch)
            for (_, _, done), outcome in zip(batch, recorded, strict=True):
                if not done.done():
                    done.set_result(outcome)

    async def _write_batch(self, batch: list[Pending]) -> list[Recorded]:
        async with self._gate, self._sessions.begin() as session:
            recorded = await record_outcomes(
                session,
                [(claimed, result) for claimed, result, _ in batch],
                self._retry,
                utcnow(),
                lock_rows=self._settings.skip_locked,
            )
            if self._settings.keep_development_copies:
                await store_development_copies(
                    session,
                    [
                        claimed.message
                        for (claimed, _, _), outcome in zip(batch, recorded, strict=True)
                        if outcome.held
                        and outcome.status is DeliveryStatus.SENT
                        and not self._channels[claimed.message.channel].stores_development_copy
                    ],
                )
        self.outcome_batches += 1
        return recorded

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="notifications-delivery")

    async def stop(self, grace_seconds: float) -> None:
        """Stop claiming, let in-flight sends finish within the grace period, cancel the
        rest and hand their messages back."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # The loop exits after its current claim (bounded by the database timeout).
            with contextlib.suppress(TimeoutError):  # wait_for cancels it
                await asyncio.wait_for(self._task, timeout=max(grace_seconds, 1.0) + 30)
        pending = list(self._inflight)
        if pending:
            await asyncio.wait(pending, timeout=grace_seconds)
        unfinished = [(task, *self._inflight[task]) for task in pending if not task.done()]
        for task, _, _ in unfinished:
            task.cancel()
        await asyncio.gather(*(task for task, _, _ in unfinished), return_exceptions=True)
        if self._writer is not None:  # the outcomes of sends that finished are written
            await asyncio.gather(self._writer, return_exceptions=True)
        if unfinished:
            with contextlib.suppress(Exception):
                await release_claims(
                    self._sessions,
                    [(claimed, started[0]) for _, claimed, started in unfinished],
                    utcnow(),
                    self._gate,
                )


@asynccontextmanager
async def delivering(dispatcher: Dispatcher, grace_seconds: float) -> AsyncIterator[Dispatcher]:
    """Run the loop for the duration of the block; on exit stop it and cancel it cleanly."""
    dispatcher.start()
    try:
        yield dispatcher
    finally:
        await dispatcher.stop(grace_seconds)
