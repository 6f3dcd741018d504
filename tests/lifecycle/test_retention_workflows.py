"""Retention clocks over 15+ years of skipped time, on the real dev server and the real
identity, notifications, billing, matching and dossier services (SQLite)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from sqlalchemy import select
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from services.identity.domain.lifecycle import SubjectKeys
from services.identity.domain.retention import add_months
from services.identity.models import Account, AuthenticationEvent, Prospect, SubjectKey, SubjectLifecycle
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from tests.lifecycle.conftest import World, record_history
from workflows.lifecycle.models import (
    ActivityInput,
    ExtendInput,
    RetentionInput,
    RetentionPolicy,
    RetentionResult,
    RetentionView,
    RightsRequestInput,
    RightsRequestView,
    SweepInput,
    SweepResult,
)
from workflows.lifecycle.workflows import (
    RetentionSweepWorkflow,
    RightsRequestWorkflow,
    SubjectRetentionWorkflow,
    retention_workflow_id,
    rights_request_workflow_id,
)

YEAR = timedelta(days=365)


async def start_retention(
    world: World, subject_id: str, policy: RetentionPolicy | None = None
) -> WorkflowHandle[Any, RetentionResult]:
    return await world.client.start_workflow(
        SubjectRetentionWorkflow.run,
        RetentionInput(subject_id=subject_id, policy=policy or RetentionPolicy()),
        id=retention_workflow_id(subject_id),
        task_queue=world.queue,
    )


async def until(
    handle: WorkflowHandle[Any, Any], query: Any, ready: Callable[[Any], bool], limit: float = 20
) -> Any:
    deadline = time.monotonic() + limit
    while True:
        try:
            view = await handle.query(query)
        except Exception:
            view = None
        if view is not None and ready(view):
            return view
        if time.monotonic() > deadline:
            described = await handle.describe()
            failures = [str(a.last_failure) for a in described.raw_description.pending_activities]
            history = await handle.fetch_history()
            failures += [str(e)[:1500] for e in history.events[-3:]]
            raise AssertionError(f"condition not reached: {view}; pending: {failures}")
        await asyncio.sleep(0.05)


async def stage(world: World, subject_id: str) -> str:
    reply = await world_worker_identity(world).GetSubjectRetention(
        lpb.GetSubjectRetentionRequest(subject_id=subject_id)
    )
    return str(lpb.SubjectStage.Name(reply.stage))


_WORKER_STUBS: dict[str, ipb_grpc.IdentityServiceAsyncStub] = {}


def world_worker_identity(world: World) -> ipb_grpc.IdentityServiceAsyncStub:
    """The identity stub as the lifecycle worker calls it (service `worker`), one per stack."""
    target = world.stack.target("identity")
    if target not in _WORKER_STUBS:
        channel = open_channel(
            target, ServiceTokenProvider(TokenSigner.from_keys_dir(world.stack.auth.keys_dir, "worker"))
        )
        _WORKER_STUBS[target] = ipb_grpc.IdentityServiceStub(channel)
    return _WORKER_STUBS[target]


async def identity_db(world: World) -> Any:
    engine = create_engine(world.stack.database_urls["identity"])
    return engine, session_factory(engine)


@pytest.mark.req("RET-02")
@pytest.mark.req("RET-07")
@pytest.mark.req("ACC-11")
async def test_activity_moves_the_clock_then_archive_at_five_years_and_purge_ten_years_later(
    world: World,
) -> None:
    account_id = await world.sign_up(name="Jeanne")
    handle = await start_retention(world, account_id)
    started = await world.env.get_current_time(handle)
    view = await until(handle, SubjectRetentionWorkflow.state, lambda v: v.due_at is not None)
    assert view.stage == "ACTIVE"

    # Three years on, the person does something: the five-year clock starts again.
    await world.env.fast_forward(handle, 3 * YEAR)
    activity_at = await world.env.get_current_time(handle)
    due = await handle.execute_update(
        SubjectRetentionWorkflow.record_activity, ActivityInput(occurred_at=activity_at)
    )
    assert due == add_months(activity_at, 60)
    view = await until(handle, SubjectRetentionWorkflow.state, lambda v: v.due_at == due)

    # Past the original five years: still active, data in day-to-day reach.
    await world.env.fast_forward(handle, 2 * YEAR + timedelta(days=10))
    assert await stage(world, account_id) == "SUBJECT_STAGE_ACTIVE"
    account = await world.identity.GetAccount(ipb.GetAccountRequest(account_id=account_id))
    assert account.account.email.endswith("@example.org")

    # Five years after the activity: archived, out of day-to-day reach.
    await world.env.fast_forward(handle, 3 * YEAR)
    view = await until(
        handle, SubjectRetentionWorkflow.state, lambda v: v.stage == "ARCHIVED" and v.due_at is not None
    )
    assert await stage(world, account_id) == "SUBJECT_STAGE_ARCHIVED"
    # Archived when the clock ran out; the archive clock is ten years from then.
    assert view.due_at is not None
    assert timedelta(0) <= view.due_at - add_months(due, 120) < timedelta(minutes=1)
    account = await world.identity.GetAccount(ipb.GetAccountRequest(account_id=account_id))
    assert account.account.email == "" and account.account.phone_number == ""

    # RET-07: habilitated staff (the DPO) read the archive for a legal need; the read is logged.
    dpo = await world.staff()
    async with world.person(dpo, Role.DPO) as channel:
        staff_identity = ipb_grpc.IdentityServiceStub(channel)
        archive = await staff_identity.ReadArchivedSubject(
            lpb.ReadArchivedSubjectRequest(
                subject_id=account_id,
                purpose=lpb.ARCHIVE_READ_PURPOSE_LITIGATION,
                reference="TJ-Paris-2031-42",
            )
        )
        assert json.loads(archive.archive_json)["email"].endswith("@example.org")
        assert archive.access_log_id
    async with world.person(account_id) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ipb_grpc.IdentityServiceStub(channel).ReadArchivedSubject(
                lpb.ReadArchivedSubjectRequest(
                    subject_id=account_id, purpose=lpb.ARCHIVE_READ_PURPOSE_LITIGATION, reference="x"
                )
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Ten years in the archive (a new run after continue-as-new): purged everywhere.
    engine, sessions = await identity_db(world)
    try:
        async with sessions() as session:
            sealed = (await session.get(SubjectLifecycle, account_id)).sealed_archive
        await world.env.fast_forward(handle, 10 * YEAR + timedelta(days=5))
        result = await handle.result()
        assert result.outcome == "PURGED" and result.purge_report is not None
        ended = await world.env.get_current_time(handle)
        assert ended - started > 15 * YEAR
        # Both runs: the archive (then continue-as-new), and the purge ten years later.
        await record_history(world.client, handle.id, "retention_archive_run", handle.first_execution_run_id)
        await record_history(world.client, handle.id, "retention_purge_run")
        report = result.purge_report
        assert report.items["identity"]["accounts"] == 1
        assert "identity" in report.keys_destroyed
        # Notifications forgot the addresses at archive time (RET-07), before identity blanked them.

        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await world.identity.GetAccount(ipb.GetAccountRequest(account_id=account_id))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert await stage(world, account_id) == "SUBJECT_STAGE_PURGED"
        async with sessions() as session:
            assert await session.get(SubjectKey, account_id) is None
            assert await session.get(Account, account_id) is None
            # The archive copy (even from a backup) cannot be decrypted any more.
            keys = SubjectKeys(b"\x00" * 32)
            assert await keys.open(session, account_id, sealed) is None
    finally:
        await engine.dispose()


@pytest.mark.req("RET-02")
async def test_a_legal_hold_stops_every_clock_until_released(world: World) -> None:
    account_id = await world.sign_up()
    dpo = await world.staff()
    handle = await start_retention(world, account_id, RetentionPolicy(hold_recheck_days=180))
    await until(handle, SubjectRetentionWorkflow.state, lambda v: v.due_at is not None)
    async with world.person(dpo, Role.DPO) as channel:
        staff = ipb_grpc.IdentityServiceStub(channel)
        hold = await staff.PlaceLegalHold(
            ipb.PlaceLegalHoldRequest(
                idempotency_key=f"hold-{account_id}",
                subject_id=account_id,
                reason=lpb.LEGAL_HOLD_REASON_LITIGATION,
                external_reference="RG 31/00042",
            )
        )
        await world.env.fast_forward(handle, 7 * YEAR)
        view: RetentionView = await until(handle, SubjectRetentionWorkflow.state, lambda v: v.held)
        assert view.stage == "ACTIVE"
        assert await stage(world, account_id) == "SUBJECT_STAGE_ACTIVE"
        # Not listed by the sweep either.
        due = await world_worker_identity(world).ListSubjectsDueForRetention(
            ipb.ListSubjectsDueForRetentionRequest(
                category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE, as_of=_ts(datetime.now(UTC) + 8 * YEAR)
            )
        )
        assert account_id not in {s.subject_id for s in due.subjects}

        await staff.ReleaseLegalHold(
            ipb.ReleaseLegalHoldRequest(
                idempotency_key=f"release-{account_id}", legal_hold_id=hold.legal_hold.legal_hold_id
            )
        )
    await handle.signal(SubjectRetentionWorkflow.poke)
    await until(handle, SubjectRetentionWorkflow.state, lambda v: v.stage == "ARCHIVED")
    assert await stage(world, account_id) == "SUBJECT_STAGE_ARCHIVED"
    await handle.terminate("test over")


@pytest.mark.req("RET-01")
async def test_a_prospect_without_account_is_deleted_one_year_after_the_last_email(world: World) -> None:
    referrer = await world.staff(ipb.ACCOUNT_ROLE_REFERRING_DOCTOR)
    prospect_id = str(uuid.uuid4())
    engine, sessions = await identity_db(world)
    try:
        async with sessions.begin() as session:
            now = datetime.now(UTC)
            session.add(
                Prospect(
                    prospect_id=prospect_id,
                    referring_account_id=referrer,
                    first_name="Paul",
                    last_name="Martin",
                    email="paul@example.org",
                    status="invited",
                    created_at=now,
                    last_invitation_sent_at=now,
                    invitation_token_hash=uuid.uuid4().hex,
                )
            )
        handle = await start_retention(world, prospect_id)
        await until(handle, SubjectRetentionWorkflow.state, lambda v: v.category == "PROSPECT")
        await world.env.fast_forward(handle, timedelta(days=330))
        async with sessions() as session:
            assert await session.get(Prospect, prospect_id) is not None
        await world.env.fast_forward(handle, timedelta(days=40))
        result = await handle.result()
        assert result.outcome == "PURGED"
        async with sessions() as session:
            assert await session.get(Prospect, prospect_id) is None
    finally:
        await engine.dispose()


def _ts(value: datetime) -> Any:
    return to_timestamp(value)


@pytest.mark.req("GDPR-08")
@pytest.mark.req("RET-06")
@pytest.mark.req("GDPR-01")
async def test_rights_request_deadline_extension_reminders_then_five_plus_ten_years(world: World) -> None:
    account_id = await world.sign_up()
    async with world.person(account_id) as channel:
        recorded = await ipb_grpc.IdentityServiceStub(channel).RecordRightsRequest(
            ipb.RecordRightsRequestRequest(
                idempotency_key=f"rr-{account_id}",
                subject_id=account_id,
                kind=lpb.RIGHTS_REQUEST_KIND_ACCESS,
                channel=lpb.RIGHTS_REQUEST_CHANNEL_PORTAL,
                identity_verification=lpb.IDENTITY_VERIFICATION_METHOD_AUTHENTICATED_SESSION,
                details="Je souhaite recevoir mes données.",
            )
        )
    request = recorded.rights_request
    first_due = request.due_at.ToDatetime(tzinfo=UTC)
    assert add_months(request.received_at.ToDatetime(tzinfo=UTC), 1) == first_due
    handle = await world.client.start_workflow(
        RightsRequestWorkflow.run,
        RightsRequestInput(request_id=request.request_id),
        id=rights_request_workflow_id(request.request_id),
        task_queue=world.queue,
    )
    view: RightsRequestView = await until(
        handle, RightsRequestWorkflow.state, lambda v: v.status == "RECEIVED"
    )
    # A week before the deadline, the DPO is reminded.
    await world.env.fast_forward(handle, first_due - view.now - timedelta(days=6))  # type: ignore[operator]
    view = await until(handle, RightsRequestWorkflow.state, lambda v: len(v.reminders_sent) == 1)
    # Extended by two months (complex request): the person is told of the new deadline.
    new_due = await handle.execute_update(
        RightsRequestWorkflow.extend, ExtendInput(reason="COMPLEXITY", months=2)
    )
    assert new_due == add_months(request.received_at.ToDatetime(tzinfo=UTC), 3)
    view = await until(handle, RightsRequestWorkflow.state, lambda v: v.extension_notices == 1)
    assert view.status == "EXTENDED"
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(RightsRequestWorkflow.extend, ExtendInput(reason="COMPLEXITY", months=1))
    assert "two months at most" in str(refused.value.cause)
    # The new deadline passes unanswered: reminders before, at, and after it.
    await world.env.fast_forward(handle, new_due - view.now + timedelta(days=8))  # type: ignore[operator]
    view = await until(
        handle, RightsRequestWorkflow.state, lambda v: any("overdue" in r for r in v.reminders_sent)
    )
    assert any(r.endswith(":due") for r in view.reminders_sent)
    # Fulfilled: the FHIR export is produced, stored in the dossier for the person, and the
    # answer names it.
    fulfilled = await handle.execute_update(RightsRequestWorkflow.fulfil)
    assert fulfilled.outcome == "GRANTED" and fulfilled.export is not None
    assert fulfilled.export.resource_types["Patient"] == 1
    assert fulfilled.export.document_id
    assert not (world.export_dir / fulfilled.export.object_key).exists()
    stored = await world_worker_identity(world).GetRightsRequest(
        ipb.GetRightsRequestRequest(request_id=request.request_id)
    )
    assert stored.rights_request.status == lpb.RIGHTS_REQUEST_STATUS_ANSWERED
    assert stored.rights_request.answer_document_id == fulfilled.export.document_id
    # RET-06: the record is archived five years after the request, purged ten years later.
    await world.env.fast_forward(handle, 5 * YEAR)
    assert await stage(world, request.request_id) == "SUBJECT_STAGE_ARCHIVED"
    await record_history(
        world.client, handle.id, "rights_request_extended_access", handle.first_execution_run_id
    )
    await world.env.fast_forward(handle, 10 * YEAR + timedelta(days=3))
    # The chain ends as the record's retention workflow (continue-as-new into it).
    result = await world.client.get_workflow_handle(handle.id, result_type=RetentionResult).result()
    assert result.outcome == "PURGED"
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await world_worker_identity(world).GetRightsRequest(
            ipb.GetRightsRequestRequest(request_id=request.request_id)
        )
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.req("RET-03")
@pytest.mark.req("RET-04")
@pytest.mark.req("RET-05")
async def test_daily_sweep_purges_by_age_and_starts_due_retention_workflows(world: World) -> None:
    account_id = await world.sign_up()
    stale_id = await world.sign_up()
    engine, sessions = await identity_db(world)
    now = datetime.now(UTC)
    try:
        async with sessions.begin() as session:
            for age_days, event_id in ((400, "old-event"), (200, "recent-event")):
                session.add(
                    AuthenticationEvent(
                        event_id=f"{event_id}-{account_id[:8]}",
                        account_id=account_id,
                        kind="LOGIN_SUCCEEDED",
                        occurred_at=now - timedelta(days=age_days),
                        ip_address="203.0.113.7",
                        user_agent="test",
                    )
                )
            stale = await session.get(Account, stale_id)
            assert stale is not None
            stale.last_activity_at = now - 6 * YEAR
            stale.created_at = now - 6 * YEAR
        sweep_id = f"sweep-{uuid.uuid4()}"
        result: SweepResult = await world.client.execute_workflow(
            RetentionSweepWorkflow.run, SweepInput(as_of=now), id=sweep_id, task_queue=world.queue
        )
        assert result.age_purges.items["identity"]["authentication_events"] >= 1
        await record_history(world.client, sweep_id, "sweep")
        assert "billing" in result.age_purges.items
        async with sessions() as session:
            kept = await session.scalars(
                select(AuthenticationEvent.event_id).where(AuthenticationEvent.account_id == account_id)
            )
            assert list(kept) == [f"recent-event-{account_id[:8]}"]
        active = next(d for d in result.due if d.category == "ACCOUNT_ACTIVE")
        assert active.listed >= 1 and active.ensured == active.listed
        handle = world.client.get_workflow_handle(retention_workflow_id(stale_id))
        await until(handle, SubjectRetentionWorkflow.state, lambda v: v.stage == "ARCHIVED")
        assert account_id not in {stale_id}
        await handle.terminate("test over")
    finally:
        await engine.dispose()
