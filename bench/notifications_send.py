"""SendNotification calls per second under concurrency: 64 concurrent callers over real
gRPC (loopback), on SQLite and PostgreSQL (BENCH_NOTIFICATIONS_SEND_BACKENDS=sqlite,postgres;
BENCH_NOTIFICATIONS_SEND_COUNT calls per run, 2000 by default).

Measured: the service with group commit (NOTIFICATIONS_SEND_GROUP_COMMIT=true, the
default: calls arriving together are decided and written in one transaction). Baseline,
same run, same machine, same requests: the same service with group commit off (one write
transaction per call, the code path before it).

Two scenarios each: the RPC alone (the delivery loop not started: what queueing costs),
and while delivering (the delivery loop sends what is queued, meanwhile, to an SMTP
server and an SMS gateway running on their own event loop in a thread: it competes for
the process's CPU and for SQLite's writer lock, as in production).

The callers run in a separate process (their gRPC and protobuf work does not share the
service's interpreter), spread over 4 channels as a few calling services would be. Three
in four messages are emails (REPORT_AVAILABLE), one in four SMS (LOGIN_CODE), each to its
own recipient under its own idempotency key; every call must succeed and every message
must be stored once. Reported: calls/s, p50/p95/p99 latency, and messages per write
transaction (a batch's rows share their creation time).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import mock

from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy import distinct, func, select

from bench.common import LatencyStats, table, write_results
from bench.notifications_delivery import servers_in_thread
from services.notifications import app
from services.notifications.domain.delivery import Dispatcher
from services.notifications.models import Notification
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from tests.notifications.conftest import BASE_URL, notifications_service
from tests.notifications.servers import SmsGateway, SmtpRecorder
from tests.support.databases import postgres_available

CALLS = int(os.environ.get("BENCH_NOTIFICATIONS_SEND_COUNT", "2000"))
BACKENDS = os.environ.get("BENCH_NOTIFICATIONS_SEND_BACKENDS", "sqlite,postgres").split(",")
CALLERS = 64
CHANNELS = 4
WARMUP = 128


def request(label: str, n: int, expiry: datetime) -> pb.SendNotificationRequest:
    if n % 4 == 3:
        sms = pb.SendNotificationRequest(
            idempotency_key=f"{label}-sms-{n}",
            template=pb.NOTIFICATION_TEMPLATE_LOGIN_CODE,
            channel=pb.CHANNEL_SMS,
            phone_number=f"+336{10000000 + n}",
            locale="fr",
            variables=pb.TemplateVariables(one_time_code=f"{n % 1000000:06d}"),
        )
        sms.variables.date.FromDatetime(expiry)
        return sms
    return pb.SendNotificationRequest(
        idempotency_key=f"{label}-email-{n}",
        template=pb.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE,
        channel=pb.CHANNEL_EMAIL,
        email=f"{label}-patient{n}@example.org",
        locale="fr",
        variables=pb.TemplateVariables(first_name="Camille", link=f"{BASE_URL}/cases/{n}"),
    )


async def _callers(
    target: str, keys_dir: str, label: str, first: int, count: int
) -> tuple[float, list[float]]:
    provider = ServiceTokenProvider(TokenSigner.from_keys_dir(Path(keys_dir), "worker"))
    channels = [open_channel(target, provider, default_timeout=60.0) for _ in range(CHANNELS)]
    stubs = [pb_grpc.NotificationsServiceStub(channel) for channel in channels]
    expiry = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    requests = [request(label, n, expiry) for n in range(first, first + count)]
    timings: list[float] = []
    try:
        for stub in stubs:  # connect every channel first
            await stub.SendNotification(requests.pop())
        queue: asyncio.Queue[pb.SendNotificationRequest] = asyncio.Queue()
        for item in requests:
            queue.put_nowait(item)

        async def caller(stub: pb_grpc.NotificationsServiceAsyncStub) -> None:
            while not queue.empty():
                item = queue.get_nowait()
                started = time.perf_counter()
                await stub.SendNotification(item)
                timings.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(caller(stubs[n % CHANNELS]) for n in range(CALLERS)))
        elapsed = time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()
    return elapsed, timings


def call_from_process(
    target: str, keys_dir: str, label: str, first: int, count: int
) -> tuple[float, list[float]]:
    """Entry point in the callers' process: `count` calls (and one per channel to connect)."""
    return asyncio.run(_callers(target, keys_dir, label, first, count))


def _percentile(ordered: list[float], fraction: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * fraction))], 3)


@contextlib.asynccontextmanager
async def _not_delivering(dispatcher: Dispatcher, grace_seconds: float) -> AsyncIterator[Dispatcher]:
    yield dispatcher


async def one_run(
    workdir: Path, backend: str, delivering: bool, group_commit: bool, pool: concurrent.futures.Executor
) -> tuple[LatencyStats, dict[str, object]]:
    mode = "group commit" if group_commit else "baseline, a transaction per call"
    scenario = "delivering" if delivering else "RPC alone"
    label = f"{backend}-{'d' if delivering else 'r'}-{'group' if group_commit else 'single'}"
    smtp, sms = SmtpRecorder(), SmsGateway()
    loop_off = (
        contextlib.nullcontext() if delivering else mock.patch.object(app, "delivering", _not_delivering)
    )
    with servers_in_thread(smtp, sms) as (smtp_port, sms_url), loop_off:
        async with notifications_service(
            workdir / label,
            backend,
            smtp_port=smtp_port,
            sms_gateway_url=sms_url,
            send_group_commit=group_commit,
            delivery_concurrency=16,
            delivery_batch_size=16,
            log_level="WARNING",
        ) as service:
            loop = asyncio.get_running_loop()
            target, keys_dir = service.server.target, str(service.auth.keys_dir)
            await loop.run_in_executor(pool, call_from_process, target, keys_dir, label, 0, WARMUP)
            elapsed, timings = await loop.run_in_executor(
                pool, call_from_process, target, keys_dir, label, WARMUP, CALLS + CHANNELS
            )
            engine = create_engine(service.database_url)
            try:
                async with session_factory(engine)() as session:
                    stored = await session.scalar(select(func.count()).select_from(Notification))
                    # A batch's rows share their creation time: distinct times ~ transactions.
                    transactions = await session.scalar(select(func.count(distinct(Notification.created_at))))
                    delivered = await session.scalar(
                        select(func.count()).where(Notification.status != "queued")
                    )
            finally:
                await engine.dispose()
    total = WARMUP + CALLS + CHANNELS
    assert stored == total, f"{stored} messages stored for {total} calls"
    ordered = sorted(timings)
    row = LatencyStats(
        name=f"SendNotification {backend}, {scenario}, {mode}",
        samples=len(ordered),
        p50_ms=_percentile(ordered, 0.5),
        p99_ms=_percentile(ordered, 0.99),
        mean_ms=round(statistics.fmean(ordered), 3),
    )
    summary: dict[str, object] = {
        "backend": backend,
        "scenario": scenario,
        "group_commit": group_commit,
        "calls": len(ordered),
        "seconds": round(elapsed, 3),
        "calls_per_second": round(len(ordered) / elapsed, 1),
        "p95_ms": _percentile(ordered, 0.95),
        "messages_per_transaction": round(total / max(int(transactions or 1), 1), 1),
        # Sent by the delivery loop by the end of the run (it shares the process's CPU).
        "delivered_meanwhile": int(delivered or 0),
    }
    return row, summary


async def run() -> list[LatencyStats]:
    rows: list[LatencyStats] = []
    runs: list[dict[str, object]] = []
    backends = [b for b in BACKENDS if b == "sqlite" or (b == "postgres" and await postgres_available())]
    context = multiprocessing.get_context("spawn")
    with (
        tempfile.TemporaryDirectory() as workdir,
        concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool,
    ):
        for backend in backends:
            for delivering in (False, True):
                for group_commit in (False, True):
                    row, summary = await one_run(Path(workdir), backend, delivering, group_commit, pool)
                    rows.append(row)
                    runs.append(summary)
    speedups: dict[str, float] = {}
    for baseline, grouped in zip(runs[::2], runs[1::2], strict=True):
        name = f"{baseline['backend']}, {baseline['scenario']}"
        speedups[name] = round(
            float(str(grouped["calls_per_second"])) / float(str(baseline["calls_per_second"])), 2
        )
    path = write_results(
        "notifications_send", rows, {"callers": CALLERS, "runs": runs, "group_commit_speedup": speedups}
    )
    print(table(rows))
    for summary in runs:
        mode = "group commit" if summary["group_commit"] else "baseline (a transaction per call)"
        print(
            f"{summary['backend']:8} {summary['scenario']:10} {mode:34} "
            f"{summary['calls_per_second']:>7} calls/s  p95 {summary['p95_ms']:>8} ms  "
            f"~{summary['messages_per_transaction']} messages/transaction  "
            f"({summary['delivered_meanwhile']} delivered meanwhile)"
        )
    for name, speedup in speedups.items():
        print(f"{name}: group commit / baseline = x{speedup}")
    print(f"({path})")
    return rows


if __name__ == "__main__":
    asyncio.run(run())
