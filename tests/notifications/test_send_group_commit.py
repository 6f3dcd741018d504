"""SendNotification by group commit (domain/sending.py): calls arriving together are
decided and written in one transaction, answered only once committed, and answered exactly
as calls one after another would be (idempotency keys, rate limits); lock races are
retried, a failed batch is answered UNAVAILABLE, and the service's stop answers everyone."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain import outbox, sending
from services.notifications.domain.catalog import Channel, Template, spec_for
from services.notifications.domain.outbox import (
    NewNotification,
    Queued,
    RateLimit,
    RatePolicy,
    WriteGate,
    queue_once,
)
from services.notifications.domain.recipients import RecipientHasher, email_recipient, phone_recipient
from services.notifications.domain.rendering import RenderedMessage
from services.notifications.domain.sending import SendGroupCommit, SendUnavailable
from services.notifications.models import IdempotencyRecord, Notification
from services.notifications.settings import NotificationsSettings
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory, utcnow
from services.shared.errors import FailedPrecondition, ResourceExhausted, ServiceError
from services.shared.grpc_client import open_channel
from tests.notifications.conftest import expect_status, notifications_service
from tests.notifications.test_delivery import code_request, email_request
from tests.support.databases import service_database

RATES = RatePolicy(
    code=RateLimit(3, timedelta(minutes=10)),
    personal=RateLimit(10, timedelta(hours=1)),
    staff=RateLimit(200, timedelta(hours=1)),
    sms_per_day=5,
)
HASHER = RecipientHasher(b"test-recipient-key")
# A request and its checked message, as the servicer hands them to the group commit.
Call = tuple[pb.SendNotificationRequest, NewNotification]
REPORT = pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE


@pytest.fixture
async def sessions(tmp_path: Path, backend: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async with service_database("notifications", backend, tmp_path / "db") as url:
        engine = create_engine(url)
        try:
            yield session_factory(engine)
        finally:
            await engine.dispose()


def gate_for(sessions: async_sessionmaker[AsyncSession]) -> WriteGate:
    bind = sessions.kw["bind"]
    return WriteGate(serialise=bind.dialect.name == "sqlite")


def sms(key: str, phone: str, code: str = "482913", template: Template = Template.LOGIN_CODE) -> Call:
    """A request and its checked message, as the servicer hands them over."""
    request = code_request(key, phone=phone, code=code)
    if template is Template.VERIFICATION_CODE:
        request.template = pb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
    recipient = phone_recipient(phone)
    new = NewNotification(
        caller="identity",
        spec=spec_for(template),
        channel=Channel.SMS,
        locale="en",
        recipient=recipient,
        recipient_hash=HASHER(recipient),
        rendered=RenderedMessage("", f"your code is {code}", ""),
    )
    return request, new


def mail(key: str, to: str) -> Call:
    recipient = email_recipient(to)
    new = NewNotification(
        caller="worker",
        spec=spec_for(Template.REPORT_AVAILABLE),
        channel=Channel.EMAIL,
        locale="fr",
        recipient=recipient,
        recipient_hash=HASHER(recipient),
        rendered=RenderedMessage("Un document", "Bonjour", "<p>Bonjour</p>"),
    )
    return email_request(key, REPORT, to=to), new


async def settle(calls: Sequence[Awaitable[Queued]]) -> list[Queued | BaseException]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


async def count(sessions: async_sessionmaker[AsyncSession], model: type[Any]) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.mark.req("NOT-02")
async def test_calls_arriving_together_commit_in_one_transaction_with_their_outbox_rows(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    sends = SendGroupCommit(sessions, RATES, gate=gate_for(sessions))
    requests = [mail(f"report-{n}", f"p{n}@example.org") for n in range(20)]
    answers = await asyncio.gather(*(sends.submit(request, new) for request, new in requests))
    assert sends.batches == 1 and sends.largest_batch == 20
    assert len({a.notification_id for a in answers}) == 20 and not any(a.replayed for a in answers)
    async with sessions() as session:
        records = {
            r.idempotency_key: r.result_id for r in (await session.scalars(select(IdempotencyRecord))).all()
        }
        outbox = {n.notification_id: n for n in (await session.scalars(select(Notification))).all()}
    # Each answered message has its outbox row and its key's record, committed together.
    assert records == {f"report-{n}": answers[n].notification_id for n in range(20)}
    assert set(outbox) == set(records.values())
    assert {n.status for n in outbox.values()} == {"queued"}
    assert outbox[answers[3].notification_id].recipient == "p3@example.org"


def _scenario(suffix: str) -> list[Call]:
    """Calls to two fresh numbers (LOGIN_CODE: 3 per 10 minutes; 5 SMS a day)."""
    one, two = f"+336123456{suffix}1", f"+336123456{suffix}2"
    return [
        sms(f"{suffix}/k1", one),  # queued
        sms(f"{suffix}/k1", one),  # replay of the first
        sms(f"{suffix}/k1", one, code="222222"),  # same key, other parameters
        sms(f"{suffix}/k2", one),  # queued (2nd code)
        sms(f"{suffix}/k3", one),  # queued (3rd code)
        sms(f"{suffix}/k4", one),  # LOGIN_CODE limit
        sms(f"{suffix}/k4", one),  # still limited: a refused key is not taken
        sms(f"{suffix}/k5", one, template=Template.VERIFICATION_CODE),  # 4th SMS today
        sms(f"{suffix}/k6", one, template=Template.VERIFICATION_CODE),  # 5th SMS today
        sms(f"{suffix}/k7", one, template=Template.VERIFICATION_CODE),  # daily SMS limit
        sms(f"{suffix}/k8", two),  # another number: its own budget
        sms(f"{suffix}/k0", two),  # recorded by an earlier call: replayed
        sms(f"{suffix}/k0", two, code="999999"),  # ... or refused
    ]


def _shape(outcomes: list[Queued | BaseException]) -> list[tuple[str, object]]:
    """What each call got, independent of generated ids and timings."""
    first: dict[str, int] = {}
    shape: list[tuple[str, object]] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, Queued):
            first.setdefault(outcome.notification_id, index)
            kind = "replayed" if outcome.replayed else "queued"
            shape.append((kind, first[outcome.notification_id]))
        else:
            assert isinstance(outcome, ServiceError), outcome
            shape.append((outcome.status.name, re.sub(r"retry in \d+ s", "retry in N s", outcome.message)))
    return shape


@pytest.mark.req("NOT-01")
async def test_one_batch_answers_exactly_as_calls_one_after_another(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    """The same calls through the one-call path, one after another, then all at once
    through the group commit (one batch): the same answers, the same rows."""
    gate = gate_for(sessions)
    sequential = _scenario("1")
    await queue_once(sessions, *sequential[-2], RATES, utcnow())  # k0, before the scenario
    one_by_one: list[Queued | BaseException] = []
    for request, new in sequential:
        try:
            one_by_one.append(await queue_once(sessions, request, new, RATES, utcnow()))
        except ServiceError as refusal:
            one_by_one.append(refusal)

    sends = SendGroupCommit(sessions, RATES, gate=gate)
    together = _scenario("2")
    await sends.submit(*together[-2])
    assert sends.batches == 1
    at_once = await settle([sends.submit(request, new) for request, new in together])
    assert sends.batches == 2 and sends.largest_batch == len(together)

    expected = _shape(one_by_one)
    assert _shape(at_once) == expected
    assert [kind for kind, _ in expected] == [
        "queued", "replayed", "FAILED_PRECONDITION", "queued", "queued", "RESOURCE_EXHAUSTED",
        "RESOURCE_EXHAUSTED", "queued", "queued", "RESOURCE_EXHAUSTED", "queued", "replayed",
        "FAILED_PRECONDITION",
    ]  # fmt: skip
    assert "at most 3 LOGIN_CODE messages to one recipient per 10 minutes" in str(expected[5][1])
    assert "at most 5 SMS to one recipient per 24 hours" in str(expected[9][1])
    assert isinstance(at_once[2], FailedPrecondition) and isinstance(at_once[5], ResourceExhausted)
    assert "different parameters" in at_once[2].message
    async with sessions() as session:
        keys = (await session.scalars(select(IdempotencyRecord.idempotency_key))).all()
    per_run = Counter(key.split("/")[0] for key in keys)
    assert per_run == {"1": 7, "2": 7}  # k0, k1, k2, k3, k5, k6, k8 each time
    assert await count(sessions, Notification) == 14


@pytest.mark.req("NOT-01")
async def test_rate_limits_hold_exactly_across_batches_and_the_database(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    # Small batches: the 60 calls are decided by many transactions, each counting the rows
    # committed before it and its own.
    sends = SendGroupCommit(sessions, RATES, gate=gate_for(sessions), max_batch=7)
    await sends.submit(*sms("early-1", "+33611111111"))
    flood = [sms(f"flood-{n}", "+33611111111") for n in range(30)]
    flood += [sms(f"verify-{n}", "+33611111111", template=Template.VERIFICATION_CODE) for n in range(30)]
    outcomes = await settle([sends.submit(request, new) for request, new in flood])
    assert sends.batches >= 9
    queued = [o for o in outcomes if isinstance(o, Queued)]
    refused = [o for o in outcomes if not isinstance(o, Queued)]
    # 3 login codes in 10 minutes (one before), 5 SMS a day in all.
    assert len(queued) == 4 and {type(o) for o in refused} == {ResourceExhausted}
    assert await count(sessions, Notification) == 5


@pytest.mark.req("NOT-02")
async def test_lock_races_are_retried_and_a_failed_batch_is_answered_unavailable(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_lock = outbox.lock_recipients
    failures: list[str] = ["database is locked"]

    async def flaky_lock(*args: Any) -> None:
        if failures:
            raise OperationalError("INSERT INTO rate_limit_locks", {}, Exception(failures.pop()))
        await real_lock(*args)

    monkeypatch.setattr(sending, "lock_recipients", flaky_lock)
    sends = SendGroupCommit(sessions, RATES, gate=gate_for(sessions), retry_pause_seconds=0)
    answers = await settle([sends.submit(*mail(f"race-{n}", f"r{n}@example.org")) for n in range(5)])
    assert all(isinstance(a, Queued) for a in answers) and sends.batches == 1 and not failures

    # Not a race: the whole batch fails, every caller hears UNAVAILABLE, nothing is written.
    failures.extend(["disk I/O error"])
    answers = await settle([sends.submit(*mail(f"lost-{n}", f"l{n}@example.org")) for n in range(5)])
    assert all(isinstance(a, SendUnavailable) for a in answers)
    assert await count(sessions, Notification) == 5 and await count(sessions, IdempotencyRecord) == 5
    # The retry (same keys) goes through.
    answers = await settle([sends.submit(*mail(f"lost-{n}", f"l{n}@example.org")) for n in range(5)])
    assert all(isinstance(a, Queued) and not a.replayed for a in answers)


@pytest.mark.req("NOT-02")
async def test_a_key_recorded_by_another_replica_meanwhile_is_replayed(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another replica commits the same key between the batch's read of the keys and its
    insert: the insert fails on the key, the batch is decided again and replays it."""
    sends = SendGroupCommit(sessions, RATES, gate=gate_for(sessions), retry_pause_seconds=0)
    first = await queue_once(sessions, *mail("shared-key", "jane@example.org"), RATES, utcnow())
    real_read = outbox.recorded_keys
    reads: list[set[str]] = []

    def stale_read(keys: set[str]) -> Any:
        reads.append(set(keys))
        return real_read([] if len(reads) == 1 else keys)  # the first read missed it

    monkeypatch.setattr(sending, "recorded_keys", stale_read)
    answers = await settle(
        [sends.submit(*mail("shared-key", "jane@example.org")), sends.submit(*mail("own", "o@example.org"))]
    )
    assert len(reads) == 2
    replayed, own = answers
    assert isinstance(replayed, Queued) and replayed.replayed
    assert replayed.notification_id == first.notification_id
    assert isinstance(own, Queued) and not own.replayed
    assert await count(sessions, Notification) == 2


async def _held(gate: WriteGate) -> Callable[[], Awaitable[None]]:
    """Hold the write gate (as a long delivery transaction would); returns its release."""
    await gate.__aenter__()

    async def release() -> None:
        await gate.__aexit__(None, None, None)

    return release


@pytest.mark.req("NOT-02")
async def test_closing_commits_what_is_queued_then_refuses_new_calls(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    gate = WriteGate(serialise=True)
    sends = SendGroupCommit(sessions, RATES, gate=gate)
    release = await _held(gate)
    calls = [asyncio.ensure_future(sends.submit(*mail(f"drain-{n}", f"d{n}@example.org"))) for n in range(4)]
    await asyncio.sleep(0.05)  # queued, the writer waiting for the gate
    closing = asyncio.ensure_future(sends.aclose(grace_seconds=10))
    await asyncio.sleep(0.05)
    assert not closing.done() and not any(call.done() for call in calls)
    await release()
    await closing
    answers = [await call for call in calls]
    assert all(not a.replayed for a in answers) and await count(sessions, Notification) == 4
    with pytest.raises(SendUnavailable):
        await sends.submit(*mail("late", "late@example.org"))


@pytest.mark.req("NOT-02")
async def test_closing_after_the_grace_period_answers_pending_callers_unavailable(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    gate = WriteGate(serialise=True)
    sends = SendGroupCommit(sessions, RATES, gate=gate)
    release = await _held(gate)
    calls = [asyncio.ensure_future(sends.submit(*mail(f"stuck-{n}", f"s{n}@example.org"))) for n in range(3)]
    await asyncio.sleep(0.05)
    await sends.aclose(grace_seconds=0.1)
    answers = await settle(calls)
    assert all(isinstance(a, SendUnavailable) for a in answers)
    await release()
    assert await count(sessions, Notification) == 0


@pytest.mark.req("NOT-01")
@pytest.mark.parametrize("group_commit", [True, False], ids=["group-commit", "one-transaction-per-call"])
async def test_both_paths_answer_floods_and_reused_keys_the_same_over_grpc(
    tmp_path: Path, backend: str, group_commit: bool
) -> None:
    """NOTIFICATIONS_SEND_GROUP_COMMIT=false is the escape hatch: the same answers."""
    async with notifications_service(tmp_path, backend, send_group_commit=group_commit) as service:
        stub = service.stub("identity")
        flood = await asyncio.gather(
            *(stub.SendNotification(code_request(f"flood-{n}", phone="+33611111111")) for n in range(10)),
            *(stub.SendNotification(code_request(f"retry-{n % 2}", phone="+33622222222")) for n in range(6)),
            return_exceptions=True,
        )
        accepted = [a for a in flood[:10] if isinstance(a, pb.SendNotificationResponse)]
        refused = [a for a in flood[:10] if isinstance(a, grpc.aio.AioRpcError)]
        assert len(accepted) == 3 and {e.code() for e in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        retried = flood[10:]
        assert all(isinstance(a, pb.SendNotificationResponse) for a in retried)
        assert len({a.notification_id for a in retried}) == 2  # type: ignore[union-attr]
        assert "different parameters" in await expect_status(
            stub.SendNotification(code_request("retry-0", phone="+33622222222", code="111111")),
            grpc.StatusCode.FAILED_PRECONDITION,
        )


@pytest.mark.req("NOT-02")
async def test_bad_requests_are_answered_without_entering_a_batch(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    submitted: list[str] = []
    real_submit = SendGroupCommit.submit

    async def recording(self: SendGroupCommit, request: Any, new: NewNotification) -> Queued:
        submitted.append(request.idempotency_key)
        return await real_submit(self, request, new)

    monkeypatch.setattr(SendGroupCommit, "submit", recording)
    async with notifications_service(tmp_path, backend) as service:
        stub = service.stub("worker")
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        bad = [
            email_request("bad-1", pb.NOTIFICATION_TEMPLATE_UNSPECIFIED),
            email_request("bad-2", REPORT, link="https://evil.example/x"),
            email_request("bad-3", pb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY, amount_cents=1, currency="EUR"),
            email_request("", REPORT),
        ]
        good = [email_request(f"good-{n}", REPORT, to=f"g{n}@example.org") for n in range(3)]
        outcomes = await asyncio.gather(
            *(stub.SendNotification(r) for r in [*bad, *good]), return_exceptions=True
        )
        assert all(isinstance(o, grpc.aio.AioRpcError) and o.code() == invalid for o in outcomes[:4])
        assert all(isinstance(o, pb.SendNotificationResponse) for o in outcomes[4:])
    assert sorted(submitted) == ["worker/good-0", "worker/good-1", "worker/good-2"]


@pytest.mark.req("NOT-02")
@pytest.mark.parametrize("batch_seconds", [0.3, 5.0], ids=["within-grace", "beyond-grace"])
async def test_the_service_stops_cleanly_with_calls_in_flight(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch, batch_seconds: float
) -> None:
    """The service stops while a slow batch holds queued calls (grace: 1 s). Within the
    grace period they are committed and answered; beyond it every caller is answered
    (UNAVAILABLE, or CANCELLED by the server's own stop), nothing is half written, and the
    stop takes the server's and the writer's grace periods, no more."""
    real_commit = SendGroupCommit._commit

    async def slow_commit(self: SendGroupCommit, batch: Any) -> Any:
        await asyncio.sleep(batch_seconds)  # a stuck database, say
        return await real_commit(self, batch)

    real_submit = SendGroupCommit.submit
    entered: list[str] = []

    async def submit(self: SendGroupCommit, request: Any, new: NewNotification) -> Queued:
        entered.append(request.idempotency_key)
        return await real_submit(self, request, new)

    monkeypatch.setattr(SendGroupCommit, "_commit", slow_commit)
    monkeypatch.setattr(SendGroupCommit, "submit", submit)
    async with service_database("notifications", backend, tmp_path / "db") as url:
        running_service = notifications_service(tmp_path, backend, database_url=url)
        service = await running_service.__aenter__()
        provider = ServiceTokenProvider(TokenSigner.from_keys_dir(service.auth.keys_dir, "worker"))
        async with open_channel(service.server.target, provider) as channel:
            stub = pb_grpc.NotificationsServiceStub(channel)
            calls = [
                asyncio.ensure_future(
                    stub.SendNotification(email_request(f"stop-{n}", REPORT, to=f"s{n}@example.org"))
                )
                for n in range(20)
            ]
            for _ in range(500):  # every call reached the group commit (a batch being written)
                if len(entered) == 20:
                    break
                await asyncio.sleep(0.01)
            loop = asyncio.get_running_loop()
            stopping = loop.time()
            await running_service.__aexit__(None, None, None)
            stopped = loop.time() - stopping
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                stored = set((await session.scalars(select(Notification.notification_id))).all())
        finally:
            await engine.dispose()
    queued = {o.notification_id for o in outcomes if isinstance(o, pb.SendNotificationResponse)}
    errors = [o for o in outcomes if not isinstance(o, pb.SendNotificationResponse)]
    assert queued == stored  # answered queued <=> committed
    if batch_seconds < 1:
        assert len(queued) == 20 and not errors
    else:
        assert not queued and stopped < 4
        assert {e.code() for e in errors if isinstance(e, grpc.aio.AioRpcError)} <= {
            grpc.StatusCode.UNAVAILABLE,
            grpc.StatusCode.CANCELLED,
        }
        assert all(isinstance(e, grpc.aio.AioRpcError) for e in errors)


def test_the_escape_hatch_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NotificationsSettings().send_group_commit is True
    monkeypatch.setenv("NOTIFICATIONS_SEND_GROUP_COMMIT", "false")
    assert NotificationsSettings().send_group_commit is False
