"""One retention sweep over 100,000 subjects on PostgreSQL, against a bare SELECT of the
same due subjects measured in the same run.

The sweep is what the daily schedule runs for the ACCOUNT_ACTIVE category: the lifecycle
activity pages through identity's ListSubjectsDueForRetention over gRPC (keyset pages of
5,000; held subjects excluded; archived/purged excluded) into the list of subjects whose
retention workflow it then ensures. The baseline is one SELECT of the due ids straight
from the database (no hold check, no paging, no gRPC). Time: wall clock; memory: the
tracemalloc peak of the process during the step (server and client share the process).
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, text

from bench.common import LatencyStats, write_results
from services.identity.app import running
from services.identity.domain.retention import Category, cutoff
from services.identity.models import Account, LegalHoldRecord
from services.identity.settings import IdentitySettings
from services.shared.auth import ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine
from services.shared.grpc_client import open_channel
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database
from workflows.lifecycle.activities import LifecycleActivities

SUBJECTS = 100_000
HELD_EVERY = 100  # 1 % of the subjects are under a legal hold
ROUNDS = 3


async def seed(url: str, now: datetime) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            rows: list[dict[str, Any]] = []
            holds: list[dict[str, Any]] = []
            for n in range(SUBJECTS):
                account_id = str(uuid.UUID(int=n + 1))
                # Last activity spread evenly over the past ten years: about half are due.
                last = now - timedelta(days=(n * 3650) // SUBJECTS)
                rows.append(
                    {
                        "account_id": account_id,
                        "role": "patient",
                        "email_normalized": f"bench-{n}@example.org",
                        "email": f"bench-{n}@example.org",
                        "phone_number": "+33612345678",
                        "display_name": "",
                        "status": "active",
                        "locale": "fr",
                        "created_at": last,
                        "partner_id": "",
                        "failed_login_count": 0,
                        "failed_code_count": 0,
                        "must_change_password": False,
                        "last_activity_at": last,
                    }
                )
                if n % HELD_EVERY == 0:
                    holds.append(
                        {
                            "legal_hold_id": str(uuid.uuid4()),
                            "subject_id": account_id,
                            "reason": "LITIGATION",
                            "external_reference": "",
                            "placed_by_account_id": "bench",
                            "placed_at": now,
                            "released_by_account_id": "",
                        }
                    )
                if len(rows) == 10_000:
                    await connection.execute(insert(Account), rows)
                    rows = []
            if rows:
                await connection.execute(insert(Account), rows)
            await connection.execute(insert(LegalHoldRecord), holds)
        async with engine.begin() as connection:
            await connection.execute(text("ANALYZE"))
    finally:
        await engine.dispose()


async def timed(step: Any) -> tuple[float, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    count = await step()
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed * 1000, peak / 1_048_576, count


def row(name: str, samples: list[tuple[float, float, int]]) -> LatencyStats:
    times = sorted(s[0] for s in samples)
    return LatencyStats(
        name=name,
        samples=len(times),
        p50_ms=round(times[len(times) // 2], 1),
        p99_ms=round(times[-1], 1),
        mean_ms=round(sum(times) / len(times), 1),
    )


async def run() -> list[LatencyStats]:
    now = datetime.now(UTC)
    as_of = now
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        keys = root / "keys"
        for issuer in ("identity", "worker", "notifications"):
            generate_keypair(keys, issuer)
        auth = InternalAuthSettings(keys_dir=keys)
        async with service_database("identity", "postgres", root / "db") as url:
            await seed(url, now)
            settings = IdentitySettings(database_url=url, environment=Environment.TEST, port=0)
            engine = create_engine(url)
            limit = cutoff(Category.ACCOUNT_ACTIVE, as_of)
            clock = func.coalesce(Account.last_activity_at, Account.created_at)

            async def bare() -> int:
                async with engine.connect() as connection:
                    ids = (
                        (await connection.execute(select(Account.account_id).where(clock <= limit)))
                        .scalars()
                        .all()
                    )
                return len(ids)

            async with running(settings, auth) as server:
                tokens = ServiceTokenProvider(TokenSigner.from_keys_dir(keys, "worker"))
                async with (
                    open_channel(server.target, tokens, 60) as identity,
                    open_channel("127.0.0.1:1", tokens) as unused,
                ):
                    activities = LifecycleActivities(
                        identity=identity,
                        notifications=unused,
                        services={},
                        billing=None,
                        client=None,
                        retention_task_queue="lifecycle",
                        dpo_email="dpo@example.org",
                        portal_base_url="http://127.0.0.1",
                        export_dir=root / "exports",
                    )

                    async def sweep() -> int:
                        return len(await activities.list_due(Category.ACCOUNT_ACTIVE, as_of))

                    await bare()
                    await sweep()  # warm-up: caches, prepared statements, connections
                    bare_runs = [await timed(bare) for _ in range(ROUNDS)]
                    sweep_runs = [await timed(sweep) for _ in range(ROUNDS)]
            await engine.dispose()
    bare_ms = sorted(r[0] for r in bare_runs)[ROUNDS // 2]
    sweep_ms = sorted(r[0] for r in sweep_runs)[ROUNDS // 2]
    bare_mib = max(r[1] for r in bare_runs)
    sweep_mib = max(r[1] for r in sweep_runs)
    rows = [
        row(f"bare SELECT of due subjects ({bare_runs[0][2]} rows)", bare_runs),
        row(f"sweep via ListSubjectsDueForRetention ({sweep_runs[0][2]} due)", sweep_runs),
    ]
    extra: dict[str, object] = {
        "subjects": SUBJECTS,
        "due_bare_select": bare_runs[0][2],
        "due_sweep_held_excluded": sweep_runs[0][2],
        "time_ratio_sweep_to_bare": round(sweep_ms / bare_ms, 2),
        "peak_mib_bare": round(bare_mib, 1),
        "peak_mib_sweep": round(sweep_mib, 1),
        "memory_ratio_sweep_to_bare": round(sweep_mib / bare_mib, 2),
    }
    path = write_results("retention_sweep", rows, extra)
    print(f"{'measurement':58} {'n':>4} {'median ms':>10} {'peak MiB':>9}")
    print(f"{rows[0].name:58} {ROUNDS:>4} {bare_ms:>10.1f} {bare_mib:>9.1f}")
    print(f"{rows[1].name:58} {ROUNDS:>4} {sweep_ms:>10.1f} {sweep_mib:>9.1f}")
    ratios = f"time {extra['time_ratio_sweep_to_bare']}x, memory {extra['memory_ratio_sweep_to_bare']}x"
    print(f"ratio sweep/bare: {ratios}")
    print(f"results: {path}")
    return rows


if __name__ == "__main__":
    asyncio.run(run())
