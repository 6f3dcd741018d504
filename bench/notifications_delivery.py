"""Notifications delivery throughput: 1,000 emails and 1,000 SMS queued through
SendNotification (SQLite outbox; BENCH_NOTIFICATIONS_BACKEND=postgres for PostgreSQL),
delivered to a local SMTP server (aiosmtpd) that fails
one DATA command in five with a 451, and to a local HTTP SMS gateway. Reports delivered
messages per second and checks zero duplicates (one Message-ID / reference each).

Baseline, same run, same servers, same failure rate: the same rendered messages sent
directly with aiosmtplib (and httpx for the SMS), same concurrency, retried at once on a
temporary failure; no database, no outbox, no gRPC. The ratio is what durability costs."""

from __future__ import annotations

import asyncio
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosmtplib
import httpx
from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy import func, select

from bench.common import LatencyStats, table, write_results
from services.notifications.domain.channels import OutgoingMessage, build_email
from services.notifications.domain.recipients import email_recipient
from services.notifications.models import Notification
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from tests.notifications.conftest import BASE_URL, notifications_service
from tests.notifications.servers import SmsGateway, SmtpRecorder, sms_gateway, smtp_server

# Messages per channel (override for a quick run: BENCH_NOTIFICATIONS_COUNT=200).
EMAILS = SMS = int(os.environ.get("BENCH_NOTIFICATIONS_COUNT", "1000"))
BACKEND = os.environ.get("BENCH_NOTIFICATIONS_BACKEND", "sqlite")
CONCURRENCY = 16  # delivery workers, and baseline senders
SENDERS = 32  # concurrent SendNotification calls while queueing
FAIL_EVERY = 5


def _stats(name: str, timings: list[float]) -> LatencyStats:
    ordered = sorted(timings)
    return LatencyStats(
        name=name,
        samples=len(ordered),
        p50_ms=round(ordered[len(ordered) // 2], 3),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        mean_ms=round(sum(ordered) / len(ordered), 3),
    )


def email_request(n: int) -> pb.SendNotificationRequest:
    return pb.SendNotificationRequest(
        idempotency_key=f"bench-email-{n}",
        template=pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE,
        channel=pb.CHANNEL_EMAIL,
        email=f"patient{n}@example.org",
        locale="fr",
        variables=pb.TemplateVariables(first_name="Camille", link=f"{BASE_URL}/cases/{n}"),
    )


def sms_request(n: int, expiry: datetime) -> pb.SendNotificationRequest:
    request = pb.SendNotificationRequest(
        idempotency_key=f"bench-sms-{n}",
        template=pb.NOTIFICATION_TEMPLATE_LOGIN_CODE,
        channel=pb.CHANNEL_SMS,
        phone_number=f"+336{10000000 + n}",
        locale="fr",
        variables=pb.TemplateVariables(one_time_code=f"{n % 1000000:06d}"),
    )
    request.variables.date.FromDatetime(expiry)
    return request


async def _pool(jobs: list[object], workers: int, run: object) -> None:
    queue: asyncio.Queue[object] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            await run(queue.get_nowait())  # type: ignore[operator]

    await asyncio.gather(*(worker() for _ in range(workers)))


@contextmanager
def servers_in_thread(smtp: SmtpRecorder, sms: SmsGateway) -> Iterator[tuple[int, str]]:
    """The SMTP server and the SMS gateway on their own event loop in a thread, as if they
    were other machines: their work does not delay the service's event loop turns."""
    ready: queue.Queue[tuple[int, str]] = queue.Queue()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def serve() -> None:
        async with smtp_server(smtp) as port, sms_gateway(sms) as url:
            ready.put((port, url))
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    try:
        yield ready.get(timeout=30)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)
        loop.close()


async def outbox_run(workdir: Path) -> tuple[dict[str, object], list[LatencyStats], list[OutgoingMessage]]:
    smtp = SmtpRecorder(fail_every=FAIL_EVERY)
    sms = SmsGateway()
    with servers_in_thread(smtp, sms) as (smtp_port, sms_url):
        return await _outbox_run(workdir, smtp, sms, smtp_port, sms_url)


async def _outbox_run(
    workdir: Path, smtp: SmtpRecorder, sms: SmsGateway, smtp_port: int, sms_url: str
) -> tuple[dict[str, object], list[LatencyStats], list[OutgoingMessage]]:
    async with notifications_service(
        workdir,
        BACKEND,
        smtp_port=smtp_port,
        sms_gateway_url=sms_url,
        delivery_concurrency=CONCURRENCY,
        delivery_batch_size=CONCURRENCY,
        retry_base_seconds=0.05,
        retry_max_seconds=0.5,
        max_attempts=30,
        delivery_poll_seconds=0.05,
        log_level="WARNING",
    ) as service:
        provider = ServiceTokenProvider(TokenSigner.from_keys_dir(service.auth.keys_dir, "worker"))
        expiry = datetime.now(UTC).replace(microsecond=0)
        requests = [email_request(n) for n in range(EMAILS)] + [sms_request(n, expiry) for n in range(SMS)]
        rpc_ms: list[float] = []
        async with open_channel(service.server.target, provider) as channel:
            stub = pb_grpc.NotificationsServiceStub(channel)

            async def send(request: object) -> None:
                started = time.perf_counter()
                await stub.SendNotification(request)  # type: ignore[arg-type]
                rpc_ms.append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            await _pool(list(requests), SENDERS, send)
            queued_s = time.perf_counter() - started
            engine = create_engine(service.database_url)
            sessions = session_factory(engine)
            try:
                while True:
                    async with sessions() as session:
                        pending = await session.scalar(
                            select(func.count()).where(Notification.status == "queued")
                        )
                    if not pending:
                        break
                    await asyncio.sleep(0.05)
                delivered_s = time.perf_counter() - started
                async with sessions() as session:
                    by_status = dict(
                        (
                            await session.execute(
                                select(Notification.status, func.count()).group_by("status")
                            )
                        ).all()
                    )
                    retried = await session.scalar(select(func.count()).where(Notification.attempts > 1))
            finally:
                await engine.dispose()
    email_dupes = sum(count - 1 for count in smtp.per_message_id().values())
    sms_dupes = sum(count - 1 for count in sms.per_reference().values())
    assert len(smtp.per_message_id()) == EMAILS, "an email was lost"
    assert email_dupes == 0, "email duplicates"
    assert len(sms.per_reference()) == SMS, "an SMS was lost"
    assert sms_dupes == 0, "SMS duplicates"
    assert by_status == {"sent": EMAILS + SMS}, by_status
    # The same rendered messages for the baseline.
    messages = [
        OutgoingMessage(
            notification_id=str(message["Message-ID"]).strip("<>").split("@")[0],
            channel=email_recipient(str(message["To"])).channel,
            template="report_available",
            locale="fr",
            recipient=str(message["To"]),
            recipient_hash="",
            subject=str(message["Subject"]),
            text=message.get_body(preferencelist=("plain",)).get_content(),  # type: ignore[union-attr]
            html=message.get_body(preferencelist=("html",)).get_content(),  # type: ignore[union-attr]
            created_at=datetime.now(UTC),
        )
        for message in smtp.messages
    ]
    summary: dict[str, object] = {
        "backend": BACKEND,
        "outbox_queue_seconds": round(queued_s, 3),
        "outbox_all_delivered_seconds": round(delivered_s, 3),
        "outbox_delivered_per_second": round((EMAILS + SMS) / delivered_s, 1),
        "outbox_smtp_data_commands": smtp.data_commands,
        "outbox_messages_retried": retried,
        "duplicates": email_dupes + sms_dupes,
        "sms_bodies": [body["text"] for body in sms.accepted[:1]],
    }
    return summary, [_stats("SendNotification RPC (queue, 32 concurrent)", rpc_ms)], messages


async def baseline_run(
    messages: list[OutgoingMessage], sms_bodies: list[dict[str, str]]
) -> dict[str, object]:
    smtp = SmtpRecorder(fail_every=FAIL_EVERY)
    sms = SmsGateway()
    with servers_in_thread(smtp, sms) as (port, sms_url):
        emails = [
            build_email(message, "Second Opinion <no-reply@secondopinion.localhost>") for message in messages
        ]
        clients: list[aiosmtplib.SMTP] = []
        started = time.perf_counter()
        queue: asyncio.Queue[object] = asyncio.Queue()
        for email in emails:
            queue.put_nowait(email)

        async def smtp_worker() -> None:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
            await client.connect()
            clients.append(client)
            while not queue.empty():
                email = queue.get_nowait()
                while True:
                    try:
                        await client.send_message(email)  # type: ignore[arg-type]
                        break
                    except aiosmtplib.SMTPResponseException:
                        continue  # 451: send again at once

        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {sms.api_key}"}) as http:
            sms_queue: asyncio.Queue[dict[str, str]] = asyncio.Queue()
            for body in sms_bodies:
                sms_queue.put_nowait(body)

            async def sms_worker() -> None:
                while not sms_queue.empty():
                    body = sms_queue.get_nowait()
                    response = await http.post(
                        sms_url, json=body, headers={"Idempotency-Key": body["reference"]}
                    )
                    response.raise_for_status()

            await asyncio.gather(
                *(smtp_worker() for _ in range(CONCURRENCY)), *(sms_worker() for _ in range(CONCURRENCY))
            )
        elapsed = time.perf_counter() - started
        for client in clients:
            await client.quit()
    assert len(smtp.per_message_id()) == len(messages)
    assert len(sms.per_reference()) == len(sms_bodies)
    return {
        "baseline_seconds": round(elapsed, 3),
        "baseline_delivered_per_second": round((len(messages) + len(sms_bodies)) / elapsed, 1),
    }


async def run() -> list[LatencyStats]:
    with tempfile.TemporaryDirectory() as workdir:
        summary, rows, messages = await outbox_run(Path(workdir))
    sms_text = str(summary.pop("sms_bodies", [""])[0])  # type: ignore[index]
    sms_bodies = [
        {"to": f"+336{10000000 + n}", "text": sms_text, "sender": "SecondOpin", "reference": f"baseline-{n}"}
        for n in range(SMS)
    ]
    summary |= await baseline_run(messages, sms_bodies)
    baseline_rate = float(str(summary["baseline_delivered_per_second"]))
    ratio = round(baseline_rate / float(str(summary["outbox_delivered_per_second"])), 2)
    summary["baseline_over_outbox"] = ratio
    name = "notifications_delivery" if BACKEND == "sqlite" else f"notifications_delivery_{BACKEND}"
    path = write_results(name, rows, summary)
    print(table(rows))
    print(
        f"outbox ({BACKEND}): {EMAILS} emails + {SMS} SMS delivered in "
        f"{summary['outbox_all_delivered_seconds']} s "
        f"= {summary['outbox_delivered_per_second']} msg/s (queued in {summary['outbox_queue_seconds']} s; "
        f"SMTP fails 1 DATA in {FAIL_EVERY}: {summary['outbox_smtp_data_commands']} DATA commands, "
        f"{summary['outbox_messages_retried']} messages retried), duplicates: {summary['duplicates']}"
    )
    print(
        f"baseline raw aiosmtplib + httpx: {summary['baseline_delivered_per_second']} msg/s "
        f"({summary['baseline_seconds']} s); baseline / outbox = x{ratio}   ({path})"
    )
    return rows


if __name__ == "__main__":
    asyncio.run(run())
