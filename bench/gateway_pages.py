"""100 concurrent simulated patients on the portal's dashboard and case pages, against a
bare FastAPI route returning a page of the same size, on the same uvicorn, in the same run.

The whole platform runs in this process (SQLite, loopback gRPC, the gateway under
uvicorn), as in the portal tests. Each user has their own session cookie and their own
case, and their own HTTP client; a fixed number of requests is shared among the 100
users (bounded asyncio: each user sends one request at a time). Requests per second over
the run, and p50/p95/p99 per request; the bare route goes through the same middleware
(security headers, telemetry) so the ratio is what the page itself costs: the session
check, the service calls and the template."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import HTMLResponse
from secondopinion.dossier.v1 import dossier_pb2

from bench.common import LatencyStats, table, write_results
from services.shared.auth import Role
from tests.gateway.support import Person, Portal, running_portal

USERS = 100
REQUESTS = 1000  # per measurement, shared among the users
WARMUP = 100


def _stats(name: str, timings: list[float]) -> tuple[LatencyStats, float]:
    ordered = sorted(timings)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 3)

    row = LatencyStats(
        name=name,
        samples=len(ordered),
        p50_ms=at(0.5),
        p99_ms=at(0.99),
        mean_ms=round(statistics.fmean(ordered), 3),
    )
    return row, at(0.95)


async def _load(
    clients: list[httpx.AsyncClient], path_of: Callable[[int], str], total: int
) -> tuple[list[float], float, dict[int, int]]:
    """`total` GETs shared by the users, one in flight per user; (latencies, seconds, the
    count of each non-200 status)."""
    remaining = total
    timings: list[float] = []
    statuses: dict[int, int] = {}

    async def user(index: int, http: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            response = await http.get(path_of(index))
            timings.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(user(i, http) for i, http in enumerate(clients)))
    if statuses:
        print(f"non-200 answers: {statuses}")
    return timings, time.perf_counter() - started, statuses


async def _people(portal: Portal) -> list[tuple[Person, str]]:
    people: list[tuple[Person, str]] = []
    for i in range(USERS):
        person = await portal.patient(f"bench-{i}@example.org")
        dossier = portal.as_person("dossier", person.account_id, Role.PATIENT)
        created = await dossier.CreateCase(
            dossier_pb2.CreateCaseRequest(
                idempotency_key=f"bench-case-{i}", filing_capacity=dossier_pb2.FILING_CAPACITY_SELF,
                therapeutic_area="cardiology", purpose=dossier_pb2.CASE_PURPOSE_SECOND_OPINION,
                doctor_choice_mode=dossier_pb2.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
            )
        )  # fmt: skip
        people.append((person, created.case.case_id))
    return people


async def run() -> list[LatencyStats]:
    rows: list[LatencyStats] = []
    extra: dict[str, Any] = {"users": USERS, "requests_per_measurement": REQUESTS}
    with tempfile.TemporaryDirectory() as workdir:
        async with running_portal(Path(workdir), "sqlite") as portal:
            people = await _people(portal)
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            clients = [
                httpx.AsyncClient(
                    base_url=portal.url,
                    cookies={"so_session": person.session, "so_cookie_choice": "necessary"},
                    limits=limits,
                    timeout=60,
                )
                for person, _ in people
            ]
            try:
                pages: dict[str, Callable[[int], str]] = {
                    "dashboard": lambda i: "/dashboard",
                    "case": lambda i: f"/cases/{people[i][1]}",
                }
                # The bare routes return pages of the same size as the real ones.
                for name, path_of in pages.items():
                    sample = await clients[0].get(path_of(0))
                    assert sample.status_code == 200, sample.text[:500]
                    body = sample.text
                    portal.app.add_api_route(
                        f"/bench/bare-{name}", _bare(body), methods=["GET"], include_in_schema=False
                    )
                    extra[f"{name}_page_bytes"] = len(sample.content)
                for name, path_of in pages.items():
                    measured: dict[str, tuple[LatencyStats, float, float, dict[int, int]]] = {}
                    for label, paths in (
                        (f"bare route, {name}-sized page (baseline)", lambda i, n=name: f"/bench/bare-{n}"),
                        (f"GET {name} page", path_of),
                    ):
                        await _load(clients, paths, WARMUP)
                        timings, seconds, statuses = await _load(clients, paths, REQUESTS)
                        row, p95 = _stats(f"{label} x{USERS} users", timings)
                        measured[label] = (row, p95, len(timings) / seconds, statuses)
                        rows.append(row)
                    (base, base_p95, base_rps, _), (page, page_p95, page_rps, statuses) = measured.values()
                    extra[name] = {
                        "rps": round(page_rps, 1),
                        "p95_ms": page_p95,
                        "p99_ms": page.p99_ms,
                        "errors": sum(statuses.values()),
                        "status_503": statuses.get(503, 0),
                        "baseline_rps": round(base_rps, 1),
                        "baseline_p95_ms": base_p95,
                        "baseline_p99_ms": base.p99_ms,
                        "rps_ratio": round(page_rps / base_rps, 3),
                        "p95_ratio": round(page_p95 / base_p95, 2),
                        "p99_ratio": round(page.p99_ms / base.p99_ms, 2),
                    }
            finally:
                for http in clients:
                    await http.aclose()
    path = write_results("gateway_pages", rows, extra)
    print(table(rows))
    for name in ("dashboard", "case"):
        e = extra[name]
        print(
            f"{name}: {e['rps']} req/s (bare {e['baseline_rps']}) = x{e['rps_ratio']}; "
            f"p95 {e['p95_ms']} ms (bare {e['baseline_p95_ms']}) x{e['p95_ratio']}; "
            f"p99 {e['p99_ms']} ms (bare {e['baseline_p99_ms']}) x{e['p99_ratio']}; errors {e['errors']} "
            f"(503: {e['status_503']})"
        )
    print(path)
    return rows


def _bare(body: str) -> Callable[[], Awaitable[HTMLResponse]]:
    async def bare() -> HTMLResponse:
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    return bare


if __name__ == "__main__":
    asyncio.run(run())
