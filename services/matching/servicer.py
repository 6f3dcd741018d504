"""Thin gRPC layer of the matching service."""

from __future__ import annotations

from typing import Any

from secondopinion.matching.v1 import matching_pb2 as pb
from secondopinion.matching.v1 import matching_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.matching.domain.registry import NewReferentDoctor, list_doctors, register_doctor
from services.matching.models import IdempotencyRecord, ReferentDoctor
from services.shared.auth import Role
from services.shared.idempotency import run_once
from services.shared.principals import require_role


def doctor_to_pb(doctor: ReferentDoctor) -> pb.ReferentDoctor:
    return pb.ReferentDoctor(
        doctor_id=doctor.doctor_id,
        account_id=doctor.account_id,
        rpps_number=doctor.rpps_number,
        display_name=doctor.display_name,
        therapeutic_areas=[area.area for area in doctor.areas],
        languages=doctor.languages,
        max_concurrent_cases=doctor.max_concurrent_cases,
        current_load=doctor.current_load,
    )


class MatchingServicer(pb_grpc.MatchingServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def RegisterReferentDoctor(
        self, request: pb.RegisterReferentDoctorRequest, context: Any
    ) -> pb.RegisterReferentDoctorResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        new = NewReferentDoctor(
            account_id=request.account_id,
            rpps_number=request.rpps_number,
            display_name=request.display_name,
            therapeutic_areas=list(request.therapeutic_areas),
            languages=list(request.languages),
            max_concurrent_cases=request.max_concurrent_cases,
        )

        async def create(session: AsyncSession) -> str:
            return (await register_doctor(session, new)).doctor_id

        doctor_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "RegisterReferentDoctor", create
        )
        async with self._sessions() as session:
            doctor = await session.get(ReferentDoctor, doctor_id)
            assert doctor is not None
            return pb.RegisterReferentDoctorResponse(doctor=doctor_to_pb(doctor))

    async def ListReferentDoctors(
        self, request: pb.ListReferentDoctorsRequest, context: Any
    ) -> pb.ListReferentDoctorsResponse:
        # DOC-01: the platform lists its referent doctors to anyone signed in.
        require_role(*Role)
        async with self._sessions() as session:
            doctors, next_token = await list_doctors(
                session, request.therapeutic_area, request.page_size, request.page_token
            )
            return pb.ListReferentDoctorsResponse(
                doctors=[doctor_to_pb(d) for d in doctors], next_page_token=next_token
            )
