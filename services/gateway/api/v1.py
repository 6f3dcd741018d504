"""Routes of the JSON API: thin, every rule is enforced by the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2
from temporalio.common import WorkflowIDConflictPolicy

from services.gateway.api.schemas import (
    AccountOut,
    CaseCreate,
    CaseOut,
    ReferentDoctorOut,
    ReferentDoctorPage,
)
from services.gateway.dependencies import CallerDep, ClientsDep
from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code
from workflows.case.models import CaseWorkflowInput, case_workflow_id
from workflows.case.workflow import CaseWorkflow

router = APIRouter(prefix="/api/v1")
IdempotencyKey = Annotated[str, Header(alias="Idempotency-Key", min_length=8, max_length=100)]


def case_out(case: dossier_pb2.Case) -> CaseOut:
    return CaseOut(
        case_id=case.case_id,
        filing_capacity=pb_enum_to_code(dossier_pb2.FilingCapacity, case.filing_capacity),
        therapeutic_area=case.therapeutic_area,
        purpose=pb_enum_to_code(dossier_pb2.CasePurpose, case.purpose),
        doctor_choice_mode=pb_enum_to_code(dossier_pb2.DoctorChoiceMode, case.doctor_choice_mode),
        chosen_doctor_ids=list(case.chosen_doctor_ids),
        assigned_doctor_ids=list(case.assigned_doctor_ids),
        status=pb_enum_to_code(dossier_pb2.CaseStatus, case.status),
        created_at=case.created_at.ToDatetime(),
        updated_at=case.updated_at.ToDatetime(),
    )


@router.get("/me")
async def read_me(caller: CallerDep, clients: ClientsDep) -> AccountOut:
    response = await clients.identity.GetAccount(
        identity_pb2.GetAccountRequest(account_id=caller.account_id), metadata=caller.metadata
    )
    account = response.account
    return AccountOut(
        account_id=account.account_id,
        role=pb_enum_to_code(identity_pb2.AccountRole, account.role),
        email=account.email,
        display_name=account.display_name,
        status=pb_enum_to_code(identity_pb2.AccountStatus, account.status),
    )


@router.post("/cases", status_code=201)
async def create_case(
    body: CaseCreate, idempotency_key: IdempotencyKey, caller: CallerDep, clients: ClientsDep
) -> CaseOut:
    response = await clients.dossier.CreateCase(
        dossier_pb2.CreateCaseRequest(
            idempotency_key=idempotency_key,
            filing_capacity=code_to_pb_enum(dossier_pb2.FilingCapacity, body.filing_capacity),
            therapeutic_area=body.therapeutic_area,
            purpose=code_to_pb_enum(dossier_pb2.CasePurpose, body.purpose),
            doctor_choice_mode=code_to_pb_enum(dossier_pb2.DoctorChoiceMode, body.doctor_choice_mode),
            chosen_doctor_ids=body.chosen_doctor_ids,
            beneficiary_id=body.beneficiary_id,
        ),
        metadata=caller.metadata,
    )
    case = response.case
    if clients.temporal is not None:
        # One workflow per case; a retried request finds the running one.
        await clients.temporal.start_workflow(
            CaseWorkflow.run,
            CaseWorkflowInput(
                case_id=case.case_id,
                therapeutic_area=case.therapeutic_area,
                doctor_choice_mode=body.doctor_choice_mode,
            ),
            id=case_workflow_id(case.case_id),
            task_queue=clients.temporal_task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    return case_out(case)


@router.get("/cases/{case_id}")
async def read_case(case_id: str, caller: CallerDep, clients: ClientsDep) -> CaseOut:
    response = await clients.dossier.GetCase(
        dossier_pb2.GetCaseRequest(case_id=case_id), metadata=caller.metadata
    )
    return case_out(response.case)


@router.get("/referent-doctors")
async def list_referent_doctors(
    caller: CallerDep,
    clients: ClientsDep,
    therapeutic_area: Annotated[str, Query(max_length=64)] = "",
    page_token: Annotated[str, Query(max_length=64)] = "",
) -> ReferentDoctorPage:
    response = await clients.matching.ListReferentDoctors(
        matching_pb2.ListReferentDoctorsRequest(
            therapeutic_area=therapeutic_area, page_size=50, page_token=page_token
        ),
        metadata=caller.metadata,
    )
    return ReferentDoctorPage(
        doctors=[
            ReferentDoctorOut(
                doctor_id=d.doctor_id,
                display_name=d.display_name,
                therapeutic_areas=list(d.therapeutic_areas),
                languages=list(d.languages),
            )
            for d in response.doctors
        ],
        next_page_token=response.next_page_token,
    )
