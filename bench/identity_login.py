"""Logins per second (password + SMS code) through the identity service, p95 of each step,
against a bare Argon2id verify measured in the same run with the same parameters.

In-process identity server (SQLite, loopback gRPC) with a recording notifications
server; Argon2id at the settings' defaults (m=19 MiB, t=2, p=1, the OWASP minimum).
Sequential runs give per-step latency; a concurrent run (2 clients per core) gives
throughput on this machine."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from argon2 import PasswordHasher, Type
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc

from bench.common import LatencyStats, table, write_results
from services.identity.app import running
from services.identity.settings import IdentitySettings
from services.shared.auth import ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.grpc_client import open_channel
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database
from tests.support.recording_notifications import RecordingNotifications, recording_notifications

SEQUENTIAL = 60
CONCURRENT_LOGINS = 120
PASSWORD = "Bench-Mark-2026"


def stats(name: str, timings: list[float]) -> tuple[LatencyStats, float]:
    ordered = sorted(timings)
    row = LatencyStats(
        name=name,
        samples=len(ordered),
        p50_ms=round(ordered[len(ordered) // 2], 3),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
        mean_ms=round(statistics.fmean(ordered), 3),
    )
    return row, round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3)


def code_for(recorder: RecordingNotifications, attempt_id: str) -> str:
    key = f"identity:login-code:{attempt_id}:1"
    return next(m.variables.one_time_code for m in reversed(recorder.sent) if m.idempotency_key == key)


async def run() -> list[LatencyStats]:
    settings_defaults = IdentitySettings()
    hasher = PasswordHasher(
        time_cost=settings_defaults.argon2_time_cost,
        memory_cost=settings_defaults.argon2_memory_kib,
        parallelism=settings_defaults.argon2_parallelism,
        type=Type.ID,
    )
    stored = hasher.hash(PASSWORD)
    bare: list[float] = []
    for _ in range(SEQUENTIAL):
        started = time.perf_counter()
        hasher.verify(stored, PASSWORD)
        bare.append((time.perf_counter() - started) * 1000)

    with tempfile.TemporaryDirectory() as workdir:
        keys = Path(workdir) / "keys"
        for issuer in ("identity", "gateway"):
            generate_keypair(keys, issuer)
        auth = InternalAuthSettings(keys_dir=keys)
        async with (
            service_database("identity", "sqlite", Path(workdir) / "db") as url,
            recording_notifications(auth) as (notifications, recorder),
        ):
            settings = IdentitySettings(
                database_url=url,
                environment=Environment.TEST,
                port=0,
                notifications_target=notifications.target,
            )
            async with running(settings, auth) as server:
                tokens = ServiceTokenProvider(TokenSigner.from_keys_dir(keys, "gateway"))
                async with open_channel(server.target, tokens) as channel:
                    stub = pb_grpc.IdentityServiceStub(channel)
                    workers = 2 * (os.cpu_count() or 1)
                    emails = [f"bench{i}@example.org" for i in range(workers)]
                    for email in emails:
                        await stub.SignUp(
                            pb.SignUpRequest(
                                idempotency_key=f"b:{email}",
                                email=email,
                                phone_number="+33612345678",
                                password=PASSWORD,
                                declared_age=40,
                            )
                        )
                    counter = iter(range(10**9))

                    async def login(email: str, start: list[float], verify: list[float]) -> None:
                        began = time.perf_counter()
                        attempt = await stub.StartLogin(
                            pb.StartLoginRequest(
                                idempotency_key=f"l-{next(counter)}", email=email, password=PASSWORD
                            )
                        )
                        middle = time.perf_counter()
                        done = await stub.VerifyLoginCode(
                            pb.VerifyLoginCodeRequest(
                                login_attempt_id=attempt.login_attempt_id,
                                factor=pb.SECOND_FACTOR_KIND_SMS_CODE,
                                code=code_for(recorder, attempt.login_attempt_id),
                            )
                        )
                        assert done.completed
                        start.append((middle - began) * 1000)
                        verify.append((time.perf_counter() - middle) * 1000)

                    warm: tuple[list[float], list[float]] = ([], [])
                    for _ in range(5):
                        await login(emails[0], *warm)
                    start_ms: list[float] = []
                    verify_ms: list[float] = []
                    for _ in range(SEQUENTIAL):
                        await login(emails[0], start_ms, verify_ms)

                    conc_start: list[float] = []
                    conc_verify: list[float] = []
                    per_worker = CONCURRENT_LOGINS // workers

                    async def worker(email: str) -> None:
                        for _ in range(per_worker):
                            await login(email, conc_start, conc_verify)

                    began = time.perf_counter()
                    await asyncio.gather(*(worker(email) for email in emails))
                    elapsed = time.perf_counter() - began
    logins_per_second = round(per_worker * workers / elapsed, 2)
    rows_p95 = [
        stats(f"bare argon2id verify ({hasher.memory_cost} KiB, t={hasher.time_cost}) baseline", bare),
        stats("StartLogin (password check + SMS code sent)", start_ms),
        stats("VerifyLoginCode (SMS code, session opened)", verify_ms),
        stats(f"StartLogin under load ({workers} clients)", conc_start),
        stats(f"VerifyLoginCode under load ({workers} clients)", conc_verify),
    ]
    rows = [row for row, _ in rows_p95]
    p95 = {row.name: value for row, value in rows_p95}
    overhead = round(rows_p95[1][1] - rows_p95[0][1], 3)
    path = write_results(
        "identity_login",
        rows,
        {
            "argon2": f"argon2id m={hasher.memory_cost} KiB t={hasher.time_cost} p={hasher.parallelism}",
            "p95_ms": p95,
            "logins_per_second": logins_per_second,
            "concurrent_clients": workers,
            "start_login_p95_minus_bare_verify_p95_ms": overhead,
        },
    )
    print(table(rows))
    for name, value in p95.items():
        print(f"p95 {name}: {value} ms")
    print(f"logins per second (password + code, {workers} clients): {logins_per_second}")
    print(f"StartLogin p95 - bare verify p95 = {overhead} ms   ({path})")
    return rows


if __name__ == "__main__":
    asyncio.run(run())
