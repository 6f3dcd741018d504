"""The delivery loop writes outcomes by group commit (one transaction per batch): each
outcome is still written by its own claim only, a failed send in a batch is retried
alone, and an outcome lost between the send and its write (crash, database down) is not a
lost message: the lease expires and the message is sent again with the same Message-ID."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from secondopinion.notifications.v1 import notifications_pb2 as pb
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain import delivery, outbox
from services.notifications.domain.catalog import Channel, DeliveryStatus
from services.notifications.domain.channels import DeliveryResult, Outcome
from services.notifications.domain.outbox import RetryPolicy, claim_due, record_outcomes
from services.notifications.models import Notification
from services.shared.db import create_engine, session_factory, utcnow
from tests.notifications.conftest import notifications_service, wait_final
from tests.notifications.test_delivery import email_request, rows
from tests.support.databases import service_database

REPORT = pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE
RETRY = RetryPolicy(max_attempts=3, base=timedelta(seconds=30), cap=timedelta(seconds=60))


@pytest.fixture
async def sessions(tmp_path: Path, backend: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with service_database("notifications", backend, tmp_path / "db") as url:
        engine = create_engine(url)
        try:
            yield session_factory(engine)
        finally:
            await engine.dispose()


async def _queue_rows(sessions: async_sessionmaker[AsyncSession], count: int) -> list[str]:
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    async with sessions.begin() as session:
        for n, notification_id in enumerate(ids):
            session.add(
                Notification(
                    notification_id=notification_id,
                    caller="worker",
                    template="report_available",
                    channel=Channel.SMS.value if n % 2 else Channel.EMAIL.value,
                    locale="fr",
                    status=DeliveryStatus.QUEUED.value,
                    attempts=0,
                    recipient=f"p{n}@example.org",
                    subject="s",
                    text_body="t",
                    html_body="h",
                    masked_recipient="p***@e***.org",
                    recipient_hash=f"{n:064x}",
                    created_at=now - timedelta(seconds=count - n),
                    updated_at=now,
                    next_attempt_at=now - timedelta(seconds=count - n),
                )
            )
    return ids


@pytest.mark.req("NOT-02")
async def test_a_batch_of_outcomes_is_written_together_each_by_its_own_claim(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    ids = await _queue_rows(sessions, 5)
    claimed = await claim_due(sessions, utcnow(), 5, timedelta(minutes=2), skip_locked=False)
    assert [c.message.notification_id for c in claimed] == ids
    sent, retried, bounced, exhausted, stolen = claimed
    # Another worker claimed `stolen` again after our lease expired: our outcome is stale.
    async with sessions.begin() as session:
        await session.execute(
            update(Notification)
            .where(Notification.notification_id == stolen.message.notification_id)
            .values(claim_token="someone-else")
        )
    # Its last attempt: a temporary failure now ends as FAILED.
    exhausted = replace(exhausted, attempts=RETRY.max_attempts)
    now = utcnow()
    async with sessions.begin() as session:
        recorded = await record_outcomes(
            session,
            [
                (sent, DeliveryResult(Outcome.SENT, "http_202", "gw-1")),
                (retried, DeliveryResult(Outcome.RETRY, "smtp_451")),
                (bounced, DeliveryResult(Outcome.PERMANENT, "smtp_550")),
                (exhausted, DeliveryResult(Outcome.RETRY, "smtp_451")),
                (stolen, DeliveryResult(Outcome.SENT)),
            ],
            RETRY,
            now,
            lock_rows=session.get_bind().dialect.name == "postgresql",
        )
    assert [(r.status, r.held) for r in recorded] == [
        (DeliveryStatus.SENT, True),
        (DeliveryStatus.QUEUED, True),
        (DeliveryStatus.BOUNCED, True),
        (DeliveryStatus.FAILED, True),
        (DeliveryStatus.SENT, False),
    ]
    async with sessions() as session:
        by_id = {row.notification_id: row for row in (await session.execute(select(Notification))).scalars()}
    row = by_id[sent.message.notification_id]
    assert (row.status, row.provider_message_id, row.last_error, row.recipient) == (
        "sent",
        "gw-1",
        None,
        None,
    )
    assert row.delivery_ended_at == now and row.claim_token is None and row.text_body is None
    row = by_id[retried.message.notification_id]
    assert (row.status, row.last_error, row.claim_token, row.claimed_until) == (
        "queued",
        "smtp_451",
        None,
        None,
    )
    assert row.next_attempt_at is not None and now + timedelta(seconds=14) < row.next_attempt_at
    assert row.recipient == "p1@example.org"  # still needed for the retry
    row = by_id[bounced.message.notification_id]
    assert (row.status, row.last_error, row.recipient, row.subject) == ("bounced", "smtp_550", None, None)
    row = by_id[exhausted.message.notification_id]
    assert (row.status, row.last_error, row.recipient, row.next_attempt_at) == (
        "failed",
        "smtp_451",
        None,
        None,
    )
    row = by_id[stolen.message.notification_id]
    assert row.status == "queued" and row.recipient is not None and row.last_error is None
    assert row.claim_token == "someone-else"


@pytest.mark.req("NOT-02")
async def test_one_failed_send_among_concurrent_ones_is_retried_alone(tmp_path: Path, backend: str) -> None:
    async with notifications_service(tmp_path, backend, delivery_concurrency=8) as service:
        service.smtp.fail_every = 6  # of the first six DATA commands, exactly one gets a 451
        stub = service.stub("worker")
        answers = await asyncio.gather(
            *(
                stub.SendNotification(email_request(f"batch-{n}", REPORT, to=f"p{n}@example.org"))
                for n in range(6)
            )
        )
        statuses = [await wait_final(stub, answer.notification_id) for answer in answers]
    assert {s.status for s in statuses} == {pb.DELIVERY_STATUS_SENT}
    assert sorted(s.attempts for s in statuses) == [1, 1, 1, 1, 1, 2]
    assert service.smtp.data_commands == 7
    counts = service.smtp.per_message_id()
    assert len(counts) == 6 and set(counts.values()) == {1}


@pytest.mark.req("NOT-02")
async def test_an_outcome_lost_after_the_send_is_not_a_lost_message(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As if the process died between the SMTP server's acceptance and the outcome's write:
    the row stays claimed until its lease expires, then it is sent again, with the same
    Message-ID (the receiving side can drop the duplicate), and recorded once."""
    real = outbox.record_outcomes
    failures = [RuntimeError("connection lost")]

    async def flaky(*args: object, **kwargs: object) -> object:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(delivery, "record_outcomes", flaky)
    async with notifications_service(tmp_path, backend, delivery_lease_seconds=0.5) as service:
        stub = service.stub("worker")
        sent = await stub.SendNotification(email_request("lost-outcome", REPORT))
        status = await wait_final(stub, sent.notification_id)
        assert status.status == pb.DELIVERY_STATUS_SENT and status.attempts == 2
        assert not failures
        message_ids = [str(m["Message-ID"]) for m in service.smtp.messages]
        assert len(message_ids) == 2 and len(set(message_ids)) == 1
        assert message_ids[0].startswith(f"<{sent.notification_id}@")
        (row,) = await rows(service)
        assert row.recipient is None and row.claim_token is None
