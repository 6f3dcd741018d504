"""p95 latency of a platform pick and of an offer accept on a realistic registry: 10,000
referent doctors and 100,000 open cases on PostgreSQL, compared with a single indexed
SELECT on the same database in the same run.

Setup: a fresh PostgreSQL database migrated to head, filled by bulk inserts through
SQLAlchemy Core (doctors with areas, languages, sub-specialties and capacities; one
accepted offer, one active assignment and the case's slot row per open case; a few
absences). Then, one call at a time:

* domain level (the matching service's functions on its own session factory):
  indexed SELECT (assignment by case id) / ProposeAssignment / AcceptOffer;
* gRPC level (the real server, signed tokens): GetReferentDoctor (one indexed SELECT
  through the stack) / ProposeAssignment / AcceptOffer.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from secondopinion.matching.v1 import matching_pb2 as pb
from secondopinion.matching.v1 import matching_pb2_grpc as pb_grpc
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import LatencyStats, table, write_results
from services.matching.app import running
from services.matching.domain.catalog import load_catalog
from services.matching.domain.offers import NewOffer, accept_offer, create_offer
from services.matching.domain.picking import PickRequest, Proposal, propose
from services.matching.models import (
    Absence,
    Assignment,
    CaseSlots,
    DoctorArea,
    DoctorLanguage,
    DoctorSubSpecialty,
    Offer,
    ReferentDoctor,
)
from services.matching.settings import MatchingSettings
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine, session_factory, upgrade_to_head_async
from services.shared.grpc_client import open_channel
from services.shared.migrate import migrations_dir
from services.shared.protoconv import to_timestamp
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import fresh_postgres_database

DOCTORS = 10_000
OPEN_CASES = 100_000
SAMPLES = 300
WARMUP = 20
CHUNK = 5_000
NOW = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def _stats(name: str, timings: list[float]) -> tuple[LatencyStats, float]:
    timings = sorted(timings)

    def at(fraction: float) -> float:
        return round(timings[min(len(timings) - 1, int(len(timings) * fraction))], 3)

    row = LatencyStats(
        name=name,
        samples=len(timings),
        p50_ms=at(0.5),
        p99_ms=at(0.99),
        mean_ms=round(statistics.fmean(timings), 3),
    )
    return row, at(0.95)


async def _time(calls: list[Callable[[], Awaitable[object]]]) -> list[float]:
    """Run each call once (the first WARMUP untimed); return the timings in ms."""
    timings: list[float] = []
    for index, call in enumerate(calls):
        started = time.perf_counter()
        await call()
        if index >= WARMUP:
            timings.append((time.perf_counter() - started) * 1000)
    return timings


async def _bulk(engine: AsyncEngine, model: type, rows: list[dict[str, object]]) -> None:
    async with engine.begin() as connection:
        for start in range(0, len(rows), CHUNK):
            await connection.execute(insert(model.__table__), rows[start : start + CHUNK])  # type: ignore[attr-defined]


async def seed(engine: AsyncEngine, rng: random.Random) -> list[dict[str, object]]:
    catalog = load_catalog()
    areas = [area.code for area in catalog.areas]
    doctors: list[dict[str, object]] = []
    area_rows: list[dict[str, object]] = []
    language_rows: list[dict[str, object]] = []
    sub_rows: list[dict[str, object]] = []
    for index in range(DOCTORS):
        doctor_id = str(uuid.UUID(int=rng.getrandbits(128)))
        capacity = rng.randint(8, 20)
        median = rng.randint(1 * 86_400, 5 * 86_400) if rng.random() < 0.7 else None
        doctors.append(
            {
                "doctor_id": doctor_id,
                "account_id": f"bench-account-{index}",
                "rpps_number": f"{10_000_000_000 + index}",
                "display_name": f"Dr Bench {index:05d}",
                "max_concurrent_cases": capacity,
                "current_load": 0,
                "pending_offer_count": 0,
                "active": rng.random() > 0.02,
                "median_turnaround_seconds": median,
                "created_at": NOW - timedelta(days=400),
                "updated_at": NOW - timedelta(days=400),
            }
        )
        main_area = areas[index % len(areas)]
        own_areas = {main_area} | ({areas[(index + 1) % len(areas)]} if index % 5 == 0 else set())
        area_rows += [{"doctor_id": doctor_id, "area": code} for code in sorted(own_areas)]
        language_rows.append({"doctor_id": doctor_id, "language": "fr"})
        if index % 3 == 0:
            language_rows.append({"doctor_id": doctor_id, "language": "en"})
        subs = sorted(catalog.area(main_area).sub_specialty_codes)  # type: ignore[union-attr]
        if index % 2 == 0:
            sub_rows.append({"doctor_id": doctor_id, "code": rng.choice(subs)})
    # 100,000 open cases: every doctor at about 70 % of capacity, some full.
    loads = [int(int(d["max_concurrent_cases"]) * 0.68) for d in doctors]  # type: ignore[call-overload]
    position = 0
    while sum(loads) < OPEN_CASES:
        if loads[position] < int(doctors[position]["max_concurrent_cases"]):  # type: ignore[call-overload]
            loads[position] += 1
        position = (position + 1) % DOCTORS
    excess = sum(loads) - OPEN_CASES
    for position in range(excess):
        loads[position] -= 1
    offers: list[dict[str, object]] = []
    assignments: list[dict[str, object]] = []
    slots: list[dict[str, object]] = []
    case_number = 0
    for doctor, load in zip(doctors, loads, strict=True):
        doctor["current_load"] = load
        for _ in range(load):
            case_id = f"bench-case-{case_number:06d}"
            case_number += 1
            offer_id = str(uuid.UUID(int=rng.getrandbits(128)))
            started = NOW - timedelta(hours=rng.randint(1, 140))
            offers.append(
                {
                    "offer_id": offer_id,
                    "case_id": case_id,
                    "doctor_id": doctor["doctor_id"],
                    "therapeutic_area": "oncology",
                    "status": "accepted",
                    "created_at": started - timedelta(hours=2),
                    "respond_by": started + timedelta(hours=22),
                    "review_deadline_at": started + timedelta(days=7),
                    "closed_at": started,
                    "decline_reason": None,
                }
            )
            assignments.append(
                {
                    "assignment_id": str(uuid.UUID(int=rng.getrandbits(128))),
                    "case_id": case_id,
                    "doctor_id": doctor["doctor_id"],
                    "offer_id": offer_id,
                    "started_at": started,
                    "deadline_at": started + timedelta(days=7),
                    "released_at": None,
                    "release_reason": None,
                }
            )
            slots.append({"case_id": case_id, "doctors_needed": 1, "assigned_count": 1})
    absences = [
        {
            "absence_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "doctor_id": doctor["doctor_id"],
            "starts_at": NOW + timedelta(days=rng.randint(-5, 10)),
            "ends_at": NOW + timedelta(days=rng.randint(11, 25)),
            "created_at": NOW - timedelta(days=30),
            "cancelled_at": None,
        }
        for doctor in rng.sample(doctors, DOCTORS // 20)
    ]
    await _bulk(engine, ReferentDoctor, doctors)
    for model, rows in (
        (DoctorArea, area_rows),
        (DoctorLanguage, language_rows),
        (DoctorSubSpecialty, sub_rows),
        (Offer, offers),
        (Assignment, assignments),
        (CaseSlots, slots),
        (Absence, absences),
    ):
        await _bulk(engine, model, rows)
    async with engine.begin() as connection:
        await connection.execute(text("ANALYZE"))
    return doctors


async def run() -> list[LatencyStats]:
    rng = random.Random(20260601)
    areas = [area.code for area in load_catalog().areas]
    started_at = time.perf_counter()
    async with fresh_postgres_database("bench_matching") as url:
        await upgrade_to_head_async(url, migrations_dir("matching"))
        engine = create_engine(url)
        try:
            doctors = await seed(engine, rng)
            seeded_in = time.perf_counter() - started_at
            sessions = session_factory(engine)
            count = SAMPLES + WARMUP
            case_ids = [f"bench-case-{rng.randrange(OPEN_CASES):06d}" for _ in range(count)]
            accounts = {str(d["doctor_id"]): str(d["account_id"]) for d in doctors}

            async def indexed_select(case_id: str) -> None:
                async with sessions() as session:
                    await session.execute(
                        select(Assignment.assignment_id, Assignment.doctor_id).where(
                            Assignment.case_id == case_id
                        )
                    )

            def pick_request(index: int) -> PickRequest:
                return PickRequest(
                    case_id=f"new-case-{index}",
                    therapeutic_area=areas[index % len(areas)],
                    doctor_count=1 + (index % 10 == 0),  # one collegial request in ten
                    alternate_count=2,
                )

            async def domain_pick(index: int) -> Proposal:
                async with sessions() as session:
                    outcome = await propose(session, pick_request(index), NOW)
                assert isinstance(outcome, Proposal), outcome
                return outcome

            # Offers to accept: the platform's own picks, one offer per new case.
            async def make_offers(prefix: str) -> list[tuple[str, str]]:
                made: list[tuple[str, str]] = []
                for index in range(count):
                    proposal = await domain_pick(index + (1000 if prefix == "rpc" else 0))
                    doctor_id = proposal.candidates[0].doctor_id
                    async with sessions.begin() as session:
                        offer = await create_offer(
                            session,
                            NewOffer(
                                case_id=f"{prefix}-case-{index}",
                                doctor_id=doctor_id,
                                therapeutic_area=areas[
                                    (index + (1000 if prefix == "rpc" else 0)) % len(areas)
                                ],
                                respond_by=NOW + timedelta(hours=24),
                                review_deadline_at=NOW + timedelta(days=7),
                            ),
                            NOW,
                        )
                    made.append((offer.offer_id, accounts[doctor_id]))
                return made

            domain_offers = await make_offers("domain")

            async def domain_accept(offer_id: str, account_id: str) -> None:
                async with sessions.begin() as session:
                    await accept_offer(session, offer_id, account_id, NOW)

            baseline = await _time([lambda c=c: indexed_select(c) for c in case_ids])  # type: ignore[misc]
            picks = await _time([lambda i=i: domain_pick(i) for i in range(count)])  # type: ignore[misc]
            accepts = await _time(
                [lambda o=o, a=a: domain_accept(o, a) for o, a in domain_offers]  # type: ignore[misc]
            )

            with tempfile.TemporaryDirectory() as keys:
                keys_dir = Path(keys)
                for issuer in ("identity", "worker"):
                    generate_keypair(keys_dir, issuer)
                rpc_offers = await make_offers("rpc")
                identity = TokenSigner.from_keys_dir(keys_dir, "identity")
                doctor_tokens = {a: identity.mint(a, Role.REFERENT_DOCTOR, "bench")[0] for _, a in rpc_offers}
                settings = MatchingSettings(database_url=url, environment=Environment.TEST, port=0)
                async with (
                    running(settings, InternalAuthSettings(keys_dir=keys_dir), clock=lambda: NOW) as server,
                    open_channel(
                        server.target, ServiceTokenProvider(TokenSigner.from_keys_dir(keys_dir, "worker"))
                    ) as worker_channel,
                    open_channel(server.target, lambda: None) as doctor_channel,
                ):
                    worker = pb_grpc.MatchingServiceStub(worker_channel)
                    as_doctors = pb_grpc.MatchingServiceStub(doctor_channel)
                    doctor_ids = [str(d["doctor_id"]) for d in rng.sample(doctors, count)]

                    async def rpc_get(doctor_id: str) -> None:
                        await worker.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=doctor_id))

                    async def rpc_pick(index: int) -> None:
                        request = pick_request(index + 2000)
                        response = await worker.ProposeAssignment(
                            pb.ProposeAssignmentRequest(
                                case_id=request.case_id,
                                therapeutic_area=request.therapeutic_area,
                                doctor_count=request.doctor_count,
                                alternate_count=request.alternate_count,
                                as_of=to_timestamp(NOW),
                            )
                        )
                        assert response.WhichOneof("outcome") == "proposal"

                    async def rpc_accept(offer_id: str, account_id: str) -> None:
                        await as_doctors.AcceptOffer(
                            pb.AcceptOfferRequest(idempotency_key=f"accept:{offer_id}", offer_id=offer_id),
                            metadata=(("authorization", f"Bearer {doctor_tokens[account_id]}"),),
                        )

                    rpc_baseline = await _time([lambda d=d: rpc_get(d) for d in doctor_ids])  # type: ignore[misc]
                    rpc_picks = await _time([lambda i=i: rpc_pick(i) for i in range(count)])  # type: ignore[misc]
                    rpc_accepts = await _time(
                        [lambda o=o, a=a: rpc_accept(o, a) for o, a in rpc_offers]  # type: ignore[misc]
                    )
            async with sessions() as session:
                over = await session.scalar(
                    select(ReferentDoctor.doctor_id)
                    .where(ReferentDoctor.current_load > ReferentDoctor.max_concurrent_cases)
                    .limit(1)
                )
            assert over is None, "a doctor exceeded their capacity"
        finally:
            await engine.dispose()
    measured = [
        _stats("indexed SELECT assignment by case_id (baseline)", baseline),
        _stats("platform pick (domain, 1-2 doctors + 2 alternates)", picks),
        _stats("accept offer (domain, conditional UPDATEs)", accepts),
        _stats("GetReferentDoctor over gRPC (baseline)", rpc_baseline),
        _stats("ProposeAssignment over gRPC", rpc_picks),
        _stats("AcceptOffer over gRPC", rpc_accepts),
    ]
    rows = [row for row, _ in measured]
    p95 = {row.name: value for row, value in measured}
    ratios = {
        "pick_vs_select_p95": round(measured[1][1] / measured[0][1], 2),
        "accept_vs_select_p95": round(measured[2][1] / measured[0][1], 2),
        "rpc_pick_vs_rpc_get_p95": round(measured[4][1] / measured[3][1], 2),
        "rpc_accept_vs_rpc_get_p95": round(measured[5][1] / measured[3][1], 2),
    }
    total = round(time.perf_counter() - started_at, 1)
    path = write_results(
        "matching_pick",
        rows,
        {
            "p95_ms": p95,
            "ratios_p95": ratios,
            "doctors": DOCTORS,
            "open_cases": OPEN_CASES,
            "seed_seconds": round(seeded_in, 1),
            "total_seconds": total,
        },
    )
    print(table(rows))
    print(f"{'measurement':58} {'p95 ms':>9}")
    for name, value in p95.items():
        print(f"{name:58} {value:>9.3f}")
    print(f"p95 ratios: {ratios}")
    print(
        f"{DOCTORS} doctors, {OPEN_CASES} open cases; seeded in {seeded_in:.1f} s, total {total} s ({path})"
    )
    return rows


if __name__ == "__main__":
    import asyncio

    asyncio.run(run())
