"""Delivery through real servers: SMTP (aiosmtpd) and an HTTP SMS gateway on port 0, the
outbox on SQLite and PostgreSQL, failures injected, exactly one delivery per key."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.notifications.v1 import notifications_pb2 as pb
from sqlalchemy import select

from services.notifications.app import build_channels, build_dispatcher
from services.notifications.domain.delivery import delivering
from services.notifications.models import Notification
from services.shared.auth import Role, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.logging import JsonFormatter
from tests.notifications.conftest import (
    BASE_URL,
    Notifications,
    expect_status,
    notifications_service,
    wait_final,
)

JANE = "jane.doe@example.org"
PHONE = "+33612345678"
# Fixed per run: a retried request must be the same request.
CODE_EXPIRY = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=3)


def stamp(value: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(value)
    return result


def email_request(key: str, template: int, to: str = JANE, **variables: object) -> pb.SendNotificationRequest:
    values: dict[str, object] = {"first_name": "Jane", "link": f"{BASE_URL}/cases/c-1"}
    values.update(variables)
    return pb.SendNotificationRequest(
        idempotency_key=key,
        template=template,  # type: ignore[arg-type]
        channel=pb.CHANNEL_EMAIL,
        email=to,
        locale="fr",
        variables=pb.TemplateVariables(**values),  # type: ignore[arg-type]
    )


def code_request(key: str, phone: str = PHONE, code: str = "482913") -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=key,
        template=pb.NOTIFICATION_TEMPLATE_LOGIN_CODE,
        channel=pb.CHANNEL_SMS,
        phone_number=phone,
        locale="en",
        variables=pb.TemplateVariables(one_time_code=code, date=stamp(CODE_EXPIRY)),
    )


async def rows(service: Notifications) -> list[Notification]:
    engine = create_engine(service.database_url)
    try:
        async with session_factory(engine)() as session:
            return list((await session.execute(select(Notification))).scalars())
    finally:
        await engine.dispose()


@pytest.mark.req("NOT-02")
@pytest.mark.req("CASE-09")
@pytest.mark.req("BIL-07")
@pytest.mark.req("ACC-10")
@pytest.mark.req("GDPR-09")
@pytest.mark.req("SEC-08")
async def test_emails_are_rendered_sent_once_over_smtp_and_the_address_is_then_erased(
    service: Notifications,
) -> None:
    stub = service.stub("worker")
    paid_at = stamp(datetime(2026, 3, 12, 13, 30, tzinfo=UTC))
    requests = {
        "report": email_request("case-1/report", pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE),
        "payment": email_request(
            "case-1/payment",
            pb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY,
            amount_cents=9900,
            currency="EUR",
            date=paid_at,
        ),
        "breach": email_request("breach-7/jane", pb.NOTIFICATION_TEMPLATE_BREACH_NOTICE, date=paid_at),
        "terms": email_request("terms-2026/jane", pb.NOTIFICATION_TEMPLATE_TERMS_UPDATED, date=paid_at),
        "delay": email_request("case-1/delay", pb.NOTIFICATION_TEMPLATE_EXPECTED_DELAY, date=paid_at),
    }
    ids = {name: (await stub.SendNotification(request)).notification_id for name, request in requests.items()}
    for notification_id in ids.values():
        status = await wait_final(stub, notification_id)
        assert status.status == pb.DELIVERY_STATUS_SENT
        assert status.attempts == 1
        assert status.masked_recipient == "j***@e***.org"
        assert not status.HasField("next_attempt_at")
    # A retried activity gets the same message back and nothing is sent again.
    again = await stub.SendNotification(requests["report"])
    assert again.notification_id == ids["report"] and again.status == pb.DELIVERY_STATUS_SENT

    by_id = {str(m["Message-ID"]).strip("<>").split("@")[0]: m for m in service.smtp.messages}
    assert len(service.smtp.messages) == len(requests) and set(by_id) == set(ids.values())
    report = by_id[ids["report"]]
    assert report["To"] == JANE and report["Auto-Submitted"] == "auto-generated"
    assert report["Subject"] == "Un document vous attend dans votre espace sécurisé"
    text = report.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = report.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert (
        "Bonjour Jane" in text and f"{BASE_URL}/cases/c-1" in text and f'href="{BASE_URL}/cases/c-1"' in html
    )
    payment = by_id[ids["payment"]].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "99,00\u00a0€" in payment and "12 mars 2026 à 14:30" in payment
    terms = by_id[ids["terms"]].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    assert "s\u2019appliqueront à partir du 12 mars 2026" in terms

    # Once delivered, the address and the rendered message are gone; status and mask stay.
    for row in await rows(service):
        assert row.recipient is None and row.text_body is None and row.html_body is None
        assert row.subject is None and row.masked_recipient == "j***@e***.org" and row.recipient_hash
        assert row.delivery_ended_at is not None and row.caller == "worker"


@pytest.mark.req("NOT-01")
async def test_login_codes_go_through_the_sms_gateway_with_its_api_key(service: Notifications) -> None:
    stub = service.stub("identity")
    sent = await stub.SendNotification(code_request("login-attempt-1", phone="+33 6 12 34 56 78"))
    assert sent.status == pb.DELIVERY_STATUS_QUEUED
    status = await wait_final(stub, sent.notification_id)
    assert status.status == pb.DELIVERY_STATUS_SENT and status.channel == pb.CHANNEL_SMS
    assert status.masked_recipient == "+33*******78"
    assert status.template == pb.NOTIFICATION_TEMPLATE_LOGIN_CODE
    [body] = service.sms.accepted
    assert body["to"] == PHONE and body["reference"] == sent.notification_id
    assert "482913" in body["text"] and body["text"].startswith("deuxiemeavis.fr: your login code is")
    assert service.sms.idempotency_keys == [sent.notification_id]
    [row] = await rows(service)
    assert row.provider_message_id == "gw-1" and row.recipient is None


@pytest.mark.req("NOT-01")
@pytest.mark.req("NOT-02")
async def test_concurrent_duplicates_and_failing_servers_still_deliver_exactly_once(
    tmp_path: Path, backend: str
) -> None:
    # Enough attempts that the injected failures cannot exhaust them (1 in 3 in a row...).
    async with notifications_service(tmp_path, backend, max_attempts=12) as service:
        await _exactly_once(service)


async def _exactly_once(service: Notifications) -> None:
    service.smtp.fail_every = 3  # one DATA in three: 451
    service.smtp.drop_every = 7  # one in seven: connection dropped before the reply
    service.sms.fail_every = 4  # one SMS request in four: 503
    # A second delivery loop (another replica) competes for the same outbox.
    engine = create_engine(service.database_url)
    sessions = session_factory(engine)
    channels = build_channels(service.settings, sessions)
    rival = build_dispatcher(service.settings, sessions, channels)
    stubs = [service.stub("worker"), service.stub("worker"), service.stub("worker")]
    keys = [f"case-{n}/report" for n in range(24)]
    sms_keys = [f"login-{n}" for n in range(12)]
    try:
        async with delivering(rival, 1.0):
            calls = [
                stubs[n % 3].SendNotification(
                    email_request(key, pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE, to=f"p{i}@example.org")
                )
                for i, key in enumerate(keys)
                for n in range(4)
            ] + [
                stubs[n % 3].SendNotification(code_request(key, phone=f"+336{10000000 + i}"))
                for i, key in enumerate(sms_keys)
                for n in range(4)
            ]
            answers = await asyncio.gather(*calls)
            ids_per_key: dict[str, set[str]] = {}
            for index, answer in enumerate(answers):
                key = (keys + sms_keys)[index // 4]
                ids_per_key.setdefault(key, set()).add(answer.notification_id)
            assert all(len(ids) == 1 for ids in ids_per_key.values())
            ids = {next(iter(ids)) for ids in ids_per_key.values()}
            assert len(ids) == len(keys) + len(sms_keys)
            statuses = [await wait_final(stubs[0], notification_id) for notification_id in ids]
    finally:
        for channel in {id(c): c for c in channels.values()}.values():
            await channel.aclose()
        await engine.dispose()
    assert {s.status for s in statuses} == {pb.DELIVERY_STATUS_SENT}
    assert any(s.attempts > 1 for s in statuses)  # failures did happen and were retried
    email_counts = service.smtp.per_message_id()
    assert len(email_counts) == len(keys) and set(email_counts.values()) == {1}
    sms_counts = service.sms.per_reference()
    assert len(sms_counts) == len(sms_keys) and set(sms_counts.values()) == {1}
    assert rival.delivered > 0  # both loops took part


async def test_retries_back_off_then_fail_and_refusals_bounce(service: Notifications) -> None:
    stub = service.stub("billing")
    service.smtp.always = 451
    failing = await stub.SendNotification(email_request("k-fail", pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE))
    # While retrying, the status says when the next attempt is due.
    for _ in range(200):
        status = await stub.GetNotificationStatus(
            pb.GetNotificationStatusRequest(notification_id=failing.notification_id)
        )
        if status.status == pb.DELIVERY_STATUS_QUEUED and status.attempts >= 1:
            break
        await asyncio.sleep(0.005)
    final = await wait_final(stub, failing.notification_id)
    assert final.status == pb.DELIVERY_STATUS_FAILED and final.attempts == service.settings.max_attempts
    assert not service.smtp.messages

    service.smtp.always = 0
    service.smtp.refuse.add("gone@example.org")
    bounced = await stub.SendNotification(
        email_request("k-bounce", pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE, to="gone@example.org")
    )
    final = await wait_final(stub, bounced.notification_id)
    assert final.status == pb.DELIVERY_STATUS_BOUNCED and final.attempts == 1
    service.sms.refuse.add("+33699999999")
    sms = await service.stub("identity").SendNotification(code_request("k-sms-bounce", phone="+33699999999"))
    final = await wait_final(service.stub("identity"), sms.notification_id)
    assert final.status == pb.DELIVERY_STATUS_BOUNCED
    for row in await rows(service):
        assert row.recipient is None and row.text_body is None  # erased whatever the outcome
        assert row.last_error in {"smtp_451", "smtp_550", "http_422"}


@pytest.mark.req("NOT-01")
async def test_code_floods_are_refused_per_recipient_and_template(service: Notifications) -> None:
    stub = service.stub("identity")
    first = await stub.SendNotification(code_request("attempt-1"))
    await stub.SendNotification(code_request("attempt-2"))
    await stub.SendNotification(code_request("attempt-3"))
    message = await expect_status(
        stub.SendNotification(code_request("attempt-4")), grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert "at most 3 LOGIN_CODE messages to one recipient per 10 minutes" in message
    assert PHONE not in message
    # A retried request is not a new message: it is answered, not limited.
    assert (await stub.SendNotification(code_request("attempt-1"))).notification_id == first.notification_id
    # Another recipient, another template for the same recipient: their own budgets.
    await stub.SendNotification(code_request("other-1", phone="+33612345600"))
    verification = code_request("verify-1")
    verification.template = pb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
    await stub.SendNotification(verification)
    # A concurrent flood to a fresh number: exactly the limit gets through.
    flood = await asyncio.gather(
        *(stub.SendNotification(code_request(f"flood-{n}", phone="+33611111111")) for n in range(10)),
        return_exceptions=True,
    )
    accepted = [a for a in flood if isinstance(a, pb.SendNotificationResponse)]
    refused = [a for a in flood if isinstance(a, grpc.aio.AioRpcError)]
    assert len(accepted) == 3 and len(refused) == 7
    assert {error.code() for error in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}


async def test_bad_requests_and_callers_get_precise_statuses(service: Notifications) -> None:
    stub = service.stub("identity")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    report = pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE
    cases: list[tuple[pb.SendNotificationRequest, str]] = [
        (email_request("b-1", pb.NOTIFICATION_TEMPLATE_UNSPECIFIED), "template is required"),
        (pb.SendNotificationRequest(idempotency_key="b-2", template=report, email=JANE), "channel"),
        (email_request("", report), "idempotency_key"),
        (email_request("b-3", report, to="not-an-address"), "email"),
        (email_request("b-4", report, to="a@b.org\r\nBcc: x@y.org"), "email"),
        (email_request("b-5", report, link="https://evil.example/x"), "link"),
        (email_request("b-6", report, first_name="Jane <script>"), "first_name"),
        (
            email_request("b-7", pb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY, amount_cents=100, currency="EUR"),
            "variables.date is required",
        ),
        (email_request("b-8", pb.NOTIFICATION_TEMPLATE_LOGIN_CODE), "sent by SMS only"),
        (code_request("b-9", phone="0612345678"), "phone_number"),
        (code_request("b-10", phone="+33145678901"), "mobile"),  # a landline
        (code_request("b-11", code="12345"), "one_time_code"),
    ]
    wrong_recipient = code_request("b-12")
    wrong_recipient.email = JANE  # oneof: replaces the phone number
    cases.append((wrong_recipient, "recipient does not match channel SMS"))
    for request, expected in cases:
        assert expected in await expect_status(stub.SendNotification(request), invalid)
    sent = await stub.SendNotification(email_request("same-key", report))
    assert "different parameters" in await expect_status(
        stub.SendNotification(email_request("same-key", report, to="john@example.org")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # The same key from another service is another message (keys are per caller).
    other = await service.stub("worker").SendNotification(email_request("same-key", report))
    assert other.notification_id != sent.notification_id

    # People never call this service; unknown services neither.
    patient, _ = TokenSigner.from_keys_dir(service.auth.keys_dir, "identity").mint("p-1", Role.PATIENT, "s")
    denied = grpc.StatusCode.PERMISSION_DENIED
    await expect_status(service.stub_with_token(patient).SendNotification(code_request("x")), denied)
    await expect_status(service.stub("ops").SendNotification(code_request("x")), denied)
    await expect_status(
        service.stub_with_token("").SendNotification(code_request("x")), grpc.StatusCode.UNAUTHENTICATED
    )
    # Statuses are readable by the service that sent the message only.
    lookup = pb.GetNotificationStatusRequest(notification_id=sent.notification_id)
    assert (await stub.GetNotificationStatus(lookup)).notification_id == sent.notification_id
    not_found = grpc.StatusCode.NOT_FOUND
    await expect_status(service.stub("billing").GetNotificationStatus(lookup), not_found)
    for unknown in ("5d0f7d0e-0000-4000-8000-000000000000", "../etc/passwd"):
        unknown_id = pb.GetNotificationStatusRequest(notification_id=unknown)
        await expect_status(stub.GetNotificationStatus(unknown_id), not_found)
    await expect_status(stub.GetNotificationStatus(pb.GetNotificationStatusRequest()), invalid)


async def test_logs_show_masked_recipients_only(
    service: Notifications, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    stub = service.stub("identity")
    sms = await stub.SendNotification(code_request("log-1"))
    service.smtp.fail_every = 1  # a retry gets logged too
    email = await stub.SendNotification(email_request("log-2", pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE))
    await wait_final(stub, sms.notification_id)
    await asyncio.sleep(0.1)
    service.smtp.fail_every = 0
    await wait_final(stub, email.notification_id)
    formatter = JsonFormatter("notifications")
    # The service's own records (the test servers' and libraries' loggers are not ours;
    # configure_logging keeps httpx and the like at WARNING in the real process).
    lines = [formatter.format(r) for r in caplog.records if r.name.startswith("services.")]
    events = [json.loads(line) for line in lines]
    assert any(e.get("recipient") == "+33*******78" for e in events)
    assert any(e.get("recipient") == "j***@e***.org" and e.get("code") == "smtp_451" for e in events)
    for line in lines:
        assert PHONE not in line and JANE not in line and "482913" not in line and "Jane" not in line


async def test_purge_erases_recipients_of_one_person_or_before_a_time(service: Notifications) -> None:
    stub = service.stub("identity")
    report = pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE
    jane = await stub.SendNotification(email_request("p-1", report))
    john = await stub.SendNotification(email_request("p-2", report, to="john@example.org"))
    for notification_id in (jane.notification_id, john.notification_id):
        await wait_final(stub, notification_id)
    service.smtp.hang = True  # Jane's next message stays queued (in flight)
    queued = await stub.SendNotification(email_request("p-3", report, to="Jane.Doe@Example.org"))

    purge = pb.PurgeRecipientDataRequest(idempotency_key="erasure-1", email=JANE)
    assert (await service.stub("worker").PurgeRecipientData(purge)).purged_count == 2
    assert (await service.stub("worker").PurgeRecipientData(purge)).purged_count == 2  # replayed
    status = await stub.GetNotificationStatus(
        pb.GetNotificationStatusRequest(notification_id=jane.notification_id)
    )
    assert status.status == pb.DELIVERY_STATUS_SENT and status.masked_recipient == ""
    status = await stub.GetNotificationStatus(
        pb.GetNotificationStatusRequest(notification_id=queued.notification_id)
    )
    assert status.status == pb.DELIVERY_STATUS_FAILED and status.masked_recipient == ""
    by_id = {row.notification_id: row for row in await rows(service)}
    assert by_id[jane.notification_id].recipient_hash is None
    assert by_id[queued.notification_id].recipient is None
    assert by_id[john.notification_id].masked_recipient == "j***@e***.org"

    listing = await service.stub("gateway").ListOutbox(pb.ListOutboxRequest())
    assert [m.recipient for m in listing.messages] == ["john@example.org"]

    sweep = pb.PurgeRecipientDataRequest(idempotency_key="sweep-1")
    sweep.delivery_ended_before.CopyFrom(stamp(datetime.now(UTC) + timedelta(seconds=1)))
    await expect_status(service.stub("ops").PurgeRecipientData(sweep), grpc.StatusCode.INVALID_ARGUMENT)
    sweep.delivery_ended_before.CopyFrom(stamp(datetime.now(UTC)))
    sweep.idempotency_key = "sweep-2"
    assert (await service.stub("ops").PurgeRecipientData(sweep)).purged_count == 1
    assert all(not row.masked_recipient and row.recipient_hash is None for row in await rows(service))
    await expect_status(service.stub("billing").PurgeRecipientData(purge), grpc.StatusCode.PERMISSION_DENIED)
