"""The matching server alone (fresh database on SQLite and PostgreSQL), a settable clock,
and tokens for every kind of caller."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from secondopinion.matching.v1 import matching_pb2 as pb
from secondopinion.matching.v1 import matching_pb2_grpc as pb_grpc

from services.matching.app import running
from services.matching.settings import MatchingSettings
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine, session_factory
from services.shared.grpc_client import open_channel
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import service_database

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
ISSUERS = ("identity", "gateway", "worker", "ops")


class Clock:
    """The server's clock; tests move it instead of sleeping."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def rpps(index: int) -> str:
    """A valid-looking 11-digit RPPS number (Luhn check digit) for doctor `index`."""
    base = f"1{index:09d}"
    digits = [int(d) for d in base]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:
            digit *= 2
            digit = digit - 9 if digit > 9 else digit
        total += digit
    return base + str((10 - total % 10) % 10)


@dataclass
class Matching:
    target: str
    keys_dir: Path
    clock: Clock
    database_url: str
    _channels: list[grpc.aio.Channel] = field(default_factory=list)

    def _stub(self, provider: Callable[[], str | None]) -> pb_grpc.MatchingServiceAsyncStub:
        channel = open_channel(self.target, provider)
        self._channels.append(channel)
        return pb_grpc.MatchingServiceStub(channel)

    def service(self, name: str) -> pb_grpc.MatchingServiceAsyncStub:
        return self._stub(ServiceTokenProvider(TokenSigner.from_keys_dir(self.keys_dir, name)))

    def person(self, subject: str, role: Role) -> pb_grpc.MatchingServiceAsyncStub:
        token, _ = TokenSigner.from_keys_dir(self.keys_dir, "identity").mint(subject, role, f"s-{subject}")
        return self._stub(lambda: token)

    @property
    def worker(self) -> pb_grpc.MatchingServiceAsyncStub:
        return self.service("worker")

    @property
    def admin(self) -> pb_grpc.MatchingServiceAsyncStub:
        return self.person("admin-1", Role.ADMINISTRATOR)

    def doctor(self, account_id: str) -> pb_grpc.MatchingServiceAsyncStub:
        return self.person(account_id, Role.REFERENT_DOCTOR)

    async def register(
        self,
        index: int,
        areas: list[str],
        *,
        capacity: int = 3,
        languages: list[str] | None = None,
        sub_specialties: list[str] | None = None,
    ) -> pb.ReferentDoctor:
        response = await self.service("ops").RegisterReferentDoctor(
            pb.RegisterReferentDoctorRequest(
                idempotency_key=f"register-{index}",
                account_id=f"account-{index}",
                rpps_number=rpps(index),
                display_name=f"Dr {index:03d}",
                therapeutic_areas=areas,
                languages=languages if languages is not None else ["fr"],
                max_concurrent_cases=capacity,
                sub_specialties=sub_specialties or [],
            )
        )
        return response.doctor

    async def offer(
        self,
        case_id: str,
        doctor_id: str,
        area: str = "cardiology",
        *,
        respond_within: timedelta = timedelta(hours=24),
        doctors_needed: int = 0,
    ) -> pb.Offer:
        now = self.clock.now
        request = pb.CreateOfferRequest(
            idempotency_key=f"offer:{case_id}:{doctor_id}",
            case_id=case_id,
            doctor_id=doctor_id,
            therapeutic_area=area,
            doctors_needed=doctors_needed,
        )
        request.respond_by.FromDatetime(now + respond_within)
        request.review_deadline_at.FromDatetime(now + timedelta(days=7))
        return (await self.worker.CreateOffer(request)).offer

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


@pytest.fixture
async def matching(tmp_path: Path, backend: str) -> AsyncIterator[Matching]:
    keys_dir = tmp_path / "keys"
    for issuer in ISSUERS:
        generate_keypair(keys_dir, issuer)
    clock = Clock()
    async with service_database("matching", backend, tmp_path / "db") as url:
        settings = MatchingSettings(database_url=url, environment=Environment.TEST, port=0)
        async with running(settings, InternalAuthSettings(keys_dir=keys_dir), clock=clock) as server:
            client = Matching(server.target, keys_dir, clock, url)
            try:
                yield client
            finally:
                await client.close()


@pytest.fixture
async def sessions(matching: Matching) -> AsyncIterator[object]:
    """Direct database access to the server's database (checks of invariants)."""
    engine = create_engine(matching.database_url)
    try:
        yield session_factory(engine)
    finally:
        await engine.dispose()


async def expect_status(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == code, error.value.details()
    return str(error.value.details())
