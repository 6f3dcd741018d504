"""The development tools: the SMS store, ListOutbox, the outbox command, the SMTP catcher,
and a clean stop of the delivery loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from secondopinion.notifications.v1 import notifications_pb2 as pb
from sqlalchemy import select

from services.notifications.dev_smtp import read_caught, start_catcher
from services.notifications.models import Notification
from services.notifications.settings import SmsTransport, SmtpSecurity
from services.shared.db import create_engine, session_factory
from services.shared.settings import REPO_ROOT, Environment
from tests.notifications.conftest import expect_status, notifications_service, wait_final
from tests.notifications.servers import SmtpRecorder
from tests.notifications.test_delivery import JANE, PHONE, code_request, email_request
from tests.support.databases import service_database


@pytest.mark.req("NOT-01")
async def test_development_channels_keep_messages_for_list_outbox_and_the_command(
    tmp_path: Path, backend: str
) -> None:
    async with notifications_service(tmp_path, backend, sms_transport=SmsTransport.DEVELOPMENT) as service:
        stub = service.stub("identity")
        ids = [(await stub.SendNotification(code_request(f"dev-{n}", code=f"10000{n}"))).notification_id
               for n in range(3)]  # fmt: skip
        email = await stub.SendNotification(
            email_request("dev-mail", pb.NOTIFICATION_TEMPLATE_ACCOUNT_LOCKED)
        )
        for notification_id in [*ids, email.notification_id]:
            assert (await wait_final(stub, notification_id)).status == pb.DELIVERY_STATUS_SENT
        assert not service.sms.accepted  # the development channel never calls a gateway

        gateway = service.stub("gateway")
        first = await gateway.ListOutbox(pb.ListOutboxRequest(channel=pb.CHANNEL_SMS, page_size=2))
        second = await gateway.ListOutbox(
            pb.ListOutboxRequest(channel=pb.CHANNEL_SMS, page_size=2, page_token=first.next_page_token)
        )
        listed = [*first.messages, *second.messages]
        assert [m.notification_id for m in listed] == list(reversed(ids)) and not second.next_page_token
        newest = listed[0]
        assert newest.recipient == PHONE and "100002" in newest.rendered_text
        assert (
            newest.status == pb.DELIVERY_STATUS_SENT
            and newest.template == pb.NOTIFICATION_TEMPLATE_LOGIN_CODE
        )
        everything = await gateway.ListOutbox(pb.ListOutboxRequest())
        assert everything.messages[0].recipient == JANE and everything.messages[0].subject
        await expect_status(
            gateway.ListOutbox(pb.ListOutboxRequest(page_token="garbage")), grpc.StatusCode.INVALID_ARGUMENT
        )
        await expect_status(
            service.stub("identity").ListOutbox(pb.ListOutboxRequest()), grpc.StatusCode.PERMISSION_DENIED
        )

        # `python -m services.notifications.outbox` prints the same store.
        env = dict(
            os.environ, NOTIFICATIONS_DATABASE_URL=service.database_url, NOTIFICATIONS_ENVIRONMENT="test"
        )
        printed = subprocess.run(  # noqa: ASYNC221 - a short command-line run
            [sys.executable, "-m", "services.notifications.outbox", "--limit", "2", "--channel", "sms"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout  # fmt: skip
        assert PHONE in printed and "100002" in printed and "100001" in printed and "100000" not in printed


async def test_list_outbox_is_refused_outside_development(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Production only sends to the approved hosting (SEC-06): these hosts stand for it.
    monkeypatch.setenv("SO_HOSTING_APPROVED_HOSTS", '["127.0.0.1", "sms.example", "app.deuxiemeavis.test"]')
    async with notifications_service(
        tmp_path,
        "sqlite",
        environment=Environment.PRODUCTION,
        sms_gateway_url="https://sms.example/v1/messages",
        smtp_security=SmtpSecurity.STARTTLS,
    ) as service:
        message = await expect_status(
            service.stub("gateway").ListOutbox(pb.ListOutboxRequest()), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert "development" in message


async def test_the_smtp_catcher_keeps_every_message(tmp_path: Path) -> None:
    folder = tmp_path / "dev-mail"
    catcher = await start_catcher("127.0.0.1", 0, folder)
    port = catcher.sockets[0].getsockname()[1]
    try:
        async with notifications_service(tmp_path, "sqlite", smtp_port=port) as service:
            stub = service.stub("billing")
            sent = await stub.SendNotification(
                email_request("catch-1", pb.NOTIFICATION_TEMPLATE_NEW_SECURE_MESSAGE)
            )
            assert (await wait_final(stub, sent.notification_id)).status == pb.DELIVERY_STATUS_SENT
    finally:
        catcher.close()
        await catcher.wait_closed()
    [caught] = read_caught(folder, 10)
    assert caught.to == JANE and caught.subject == "Un nouveau message vous attend"
    assert "messagerie sécurisée" in caught.text


async def test_stopping_the_service_cancels_a_hung_delivery_and_hands_it_back(
    tmp_path: Path, backend: str
) -> None:
    smtp = SmtpRecorder(hang=True)
    async with service_database("notifications", backend, tmp_path / "kept") as url:
        async with notifications_service(
            tmp_path, backend, smtp=smtp, database_url=url, shutdown_grace_seconds=0.2
        ) as service:
            sent = await service.stub("worker").SendNotification(
                email_request("hang-1", pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE)
            )
            while smtp.data_commands == 0:  # noqa: ASYNC110 - polling a plain counter
                await asyncio.sleep(0.01)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3  # grace period, then cancelled
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as session:
                row = (await session.execute(select(Notification))).scalar_one()
        finally:
            await engine.dispose()
    assert row.notification_id == sent.notification_id
    # Handed back: the next process delivers it (the address is still needed for that).
    assert row.status == "queued" and row.claimed_until is None and row.claim_token is None
    assert row.recipient == JANE and row.attempts == 1
