"""Thin gRPC layer of the dossier service."""

from __future__ import annotations

from typing import Any

from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain.cases import (
    CasePurpose,
    CaseStatus,
    DoctorChoiceMode,
    FilingCapacity,
    NewCase,
    change_status,
    open_case,
    read_case,
)
from services.dossier.models import Case, IdempotencyRecord
from services.shared.auth import Role
from services.shared.errors import InvalidArgument
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

# Who may file a request: the patient user (for self, a minor, a ward, a mandator).
FILERS = (Role.PATIENT,)


def case_to_pb(case: Case) -> pb.Case:
    return pb.Case(
        case_id=case.case_id,
        filer_account_id=case.filer_account_id,
        filing_capacity=to_pb_enum(pb.FilingCapacity, FilingCapacity(case.filing_capacity)),
        beneficiary_id=case.beneficiary_id,
        therapeutic_area=case.therapeutic_area,
        purpose=to_pb_enum(pb.CasePurpose, CasePurpose(case.purpose)),
        doctor_choice_mode=to_pb_enum(pb.DoctorChoiceMode, DoctorChoiceMode(case.doctor_choice_mode)),
        chosen_doctor_ids=case.chosen_doctor_ids,
        assigned_doctor_ids=case.assigned_doctor_ids,
        status=to_pb_enum(pb.CaseStatus, CaseStatus(case.status)),
        created_at=to_timestamp(case.created_at),
        updated_at=to_timestamp(case.updated_at),
    )


def _required(value: Any, field: str) -> Any:
    if value is None:
        raise InvalidArgument(f"{field} is required")
    return value


class DossierServicer(pb_grpc.DossierServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def CreateCase(self, request: pb.CreateCaseRequest, context: Any) -> pb.CreateCaseResponse:
        principal = require_role(*FILERS)
        new = NewCase(
            filer_account_id=principal.subject,
            filing_capacity=_required(
                from_pb_enum(pb.FilingCapacity, FilingCapacity, request.filing_capacity), "filing_capacity"
            ),
            therapeutic_area=request.therapeutic_area,
            purpose=_required(from_pb_enum(pb.CasePurpose, CasePurpose, request.purpose), "purpose"),
            doctor_choice_mode=_required(
                from_pb_enum(pb.DoctorChoiceMode, DoctorChoiceMode, request.doctor_choice_mode),
                "doctor_choice_mode",
            ),
            beneficiary_id=request.beneficiary_id,
            chosen_doctor_ids=list(request.chosen_doctor_ids),
        )

        async def create(session: AsyncSession) -> str:
            return (await open_case(session, new)).case_id

        # The key is scoped to the filer so two people can never collide on a key.
        case_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, f"CreateCase:{principal.subject}", create
        )
        async with self._sessions() as session:
            return pb.CreateCaseResponse(case=case_to_pb(await read_case(session, case_id, principal)))

    async def GetCase(self, request: pb.GetCaseRequest, context: Any) -> pb.GetCaseResponse:
        principal = require_role(*Role)
        async with self._sessions() as session:
            return pb.GetCaseResponse(case=case_to_pb(await read_case(session, request.case_id, principal)))

    async def UpdateCaseStatus(
        self, request: pb.UpdateCaseStatusRequest, context: Any
    ) -> pb.UpdateCaseStatusResponse:
        # Only the case workflow reports status: it is the source of truth for progress.
        require_role(Role.SERVICE, services=frozenset({"worker"}))
        status = _required(from_pb_enum(pb.CaseStatus, CaseStatus, request.status), "status")
        async with self._sessions.begin() as session:
            case = await change_status(session, request.case_id, status)
            return pb.UpdateCaseStatusResponse(case=case_to_pb(case))
