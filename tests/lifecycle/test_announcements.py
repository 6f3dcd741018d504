"""GDPR-09 and CNS-01: a new terms version is announced to every account before it applies
(the announcement workflow on the real dev server, identity and notifications), and must
be accepted again once it is in force."""

from __future__ import annotations

import hashlib
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from sqlalchemy import select, update

from services.identity.models import LegalText
from services.notifications.domain.variables import format_date
from services.notifications.models import Notification
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.protoconv import to_timestamp
from tests.lifecycle.conftest import World, record_history
from workflows.lifecycle.models import AnnouncementInput, AnnouncementResult
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import start_announcement
from workflows.lifecycle.workflows import LegalTextAnnouncementWorkflow, announcement_workflow_id

OLD_TERMS = "# CGU 2026-01\nConditions en vigueur."
NEW_TERMS = "# CGU 2027-01\nNouvelles conditions, annoncées 30 jours avant."


def sha(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


async def publish(
    world: World, version: str, body: str, effective_at: datetime | None = None, announce: bool = False
) -> ipb.LegalText:
    request = ipb.PublishLegalTextRequest(
        idempotency_key=f"pub:terms:{version}:{uuid.uuid4()}",
        kind=ipb.LEGAL_TEXT_KIND_TERMS,
        version=version,
        locale="fr",
        body=body,
        announce=announce,
    )
    if effective_at is not None:
        request.effective_at.CopyFrom(to_timestamp(effective_at))
    return (await world.identity.PublishLegalText(request)).text


async def sign_up(world: World, terms: ipb.LegalText) -> tuple[str, str]:
    email = f"a-{uuid.uuid4().hex[:10]}@example.org"
    reply = await world.identity.SignUp(
        ipb.SignUpRequest(
            idempotency_key=f"signup-{uuid.uuid4()}",
            email=email,
            phone_number="+33 6 12 34 56 78",
            password="Correct-Horse-9",
            declared_age=40,
            locale="fr",
            accepted_terms_version=terms.version,
            accepted_terms_sha256_hex=terms.sha256_hex,
        )
    )
    return str(reply.account_id), email


async def terms_updated_emails(world: World) -> list[tuple[str, str]]:
    """(recipient, plain-text body) of every TERMS_UPDATED email notifications accepted
    (read from its database: the stack's email transport is SMTP, so nothing reaches the
    development outbox; a message is one row whatever its delivery state)."""
    engine = create_engine(world.stack.database_urls["notifications"])
    try:
        async with session_factory(engine)() as session:
            rows = await session.execute(
                select(Notification.recipient, Notification.text_body).where(
                    Notification.template == "terms_updated", Notification.channel == "email"
                )
            )
            return [(str(recipient), str(body)) for recipient, body in rows]
    finally:
        await engine.dispose()


async def accepted(world: World, account_id: str) -> ipb.CheckLatestTermsAcceptedResponse:
    return await world.identity.CheckLatestTermsAccepted(
        ipb.CheckLatestTermsAcceptedRequest(account_id=account_id)
    )


@pytest.mark.req("GDPR-09")
@pytest.mark.req("CNS-01")
async def test_new_terms_are_announced_once_to_every_open_account_before_they_apply(world: World) -> None:
    old = await publish(world, "2026-01", OLD_TERMS)
    accounts = [await sign_up(world, old) for _ in range(5)]
    closed_id, closed_email = await sign_up(world, old)
    async with world.person(closed_id) as channel:
        await ipb_grpc.IdentityServiceStub(channel).CloseAccount(
            ipb.CloseAccountRequest(
                idempotency_key=f"close-{closed_id}",
                account_id=closed_id,
                reason=ipb.CLOSURE_REASON_USER_REQUEST,
            )
        )

    # The notice period (30 days by default) is enforced when the change is announced.
    for too_soon in (None, datetime.now(UTC) + timedelta(days=29, hours=23)):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await publish(world, "2027-01", NEW_TERMS, too_soon, announce=True)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "30 days" in str(refused.value.details())

    effective = (datetime.now(UTC) + timedelta(days=30, minutes=5)).replace(microsecond=0)
    new = await publish(world, "2027-01", NEW_TERMS, effective, announce=True)
    assert new.effective_at.ToDatetime(UTC) == effective

    # Recorded, not in force: the accounts that accepted the old version are still fine.
    for account_id, _ in accounts:
        check = await accepted(world, account_id)
        assert check.accepted and check.current_version == "2026-01"

    # The fan-out, in pages of 2 and 1 page per run: it continues as new twice.
    settings = LifecycleSettings(task_queue=world.queue)
    handle = await world.client.start_workflow(
        LegalTextAnnouncementWorkflow.run,
        AnnouncementInput(text_id=new.text_id, page_size=2, pages_per_run=1),
        id=announcement_workflow_id(new.text_id),
        task_queue=settings.task_queue,
    )
    result = await handle.result()
    assert isinstance(result, AnnouncementResult)
    assert (result.version, result.effective_at, result.sent, result.skipped) == ("2027-01", effective, 5, 0)
    described = await handle.describe()
    assert described.id == f"announce-{new.text_id}"
    # The first run (a page, then continue-as-new) and the last (the result).
    await record_history(world.client, handle.id, "announcement_first_run", handle.first_execution_run_id)
    await record_history(world.client, handle.id, "announcement_last_run")

    first = await terms_updated_emails(world)
    per_recipient = Counter(recipient for recipient, _ in first)
    assert per_recipient == Counter({email: 1 for _, email in accounts})
    assert closed_email not in per_recipient
    when = format_date(effective, "fr", "Europe/Paris")
    assert all(when in body and new.text_id in body for _, body in first)

    # Started again by the publisher (a retry, a second click): nothing is sent twice.
    again = await start_announcement(world.client, settings, new.text_id)
    assert (await again.result()).sent == 5
    assert Counter(r for r, _ in await terms_updated_emails(world)) == per_recipient

    # Time passes beyond effective_at. The workflow's clock is Temporal's, the service's is
    # the wall clock: the text's dates are moved back by the notice period in the identity
    # database, which is what 30 days of elapsed time look like to identity.
    engine = create_engine(world.stack.database_urls["identity"])
    try:
        async with session_factory(engine).begin() as session:
            await session.execute(
                update(LegalText)
                .where(LegalText.text_id == new.text_id)
                .values(
                    effective_at=datetime.now(UTC) - timedelta(seconds=1),
                    published_at=datetime.now(UTC) - timedelta(days=30),
                )
            )
    finally:
        await engine.dispose()
    first_id = accounts[0][0]
    check = await accepted(world, first_id)
    assert not check.accepted
    assert (check.current_version, check.current_text_id, check.accepted_version) == (
        "2027-01",
        new.text_id,
        "2026-01",
    )

    # CNS-01: accepting the new version (at the next opinion request) clears it.
    session_token = await world.stack.open_session(first_id)
    gateway_tokens = ServiceTokenProvider(TokenSigner.from_keys_dir(world.stack.auth.keys_dir, "gateway"))
    async with open_channel(world.stack.target("identity"), gateway_tokens) as gateway:
        valid = await ipb_grpc.IdentityServiceStub(gateway).ValidateSession(
            ipb.ValidateSessionRequest(session_token=session_token)
        )
    internal = valid.internal_token
    async with open_channel(world.stack.target("identity"), lambda: internal) as channel:
        await ipb_grpc.IdentityServiceStub(channel).AcceptLegalText(
            ipb.AcceptLegalTextRequest(
                idempotency_key=f"accept-{first_id}-2027-01",
                text_id=new.text_id,
                text_sha256_hex=sha(NEW_TERMS),
            )
        )
    check = await accepted(world, first_id)
    assert check.accepted and check.accepted_version == "2027-01"
    assert not (await accepted(world, accounts[1][0])).accepted


@pytest.mark.req("GDPR-09")
async def test_only_the_worker_lists_announcement_recipients(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await world.identity.ListAnnouncementRecipients(ipb.ListAnnouncementRecipientsRequest())
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
