"""Walking skeleton: a request enters the gateway, reaches the dossier service over gRPC,
starts the case workflow on the real Temporal dev server, whose activities call the
matching and dossier services; one trace id spans all of it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
from opentelemetry.trace import SpanKind
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from temporalio.client import Client

from deploy.seed import with_luhn_digit
from services.shared.grpc_client import open_channel
from tests.support.stack import Stack, platform_stack
from tests.support.tracing import SPANS
from workflows.case.models import case_workflow_id
from workflows.case.workflow import CaseWorkflow
from workflows.temporal_client import with_data_converter


async def seed_doctor_and_patient(stack: Stack) -> str:
    tokens = stack.ops_tokens()
    async with open_channel(stack.target("matching"), tokens) as channel:
        await matching_pb2_grpc.MatchingServiceStub(channel).RegisterReferentDoctor(
            matching_pb2.RegisterReferentDoctorRequest(
                idempotency_key="seed-doc",
                account_id=str(uuid.uuid4()),
                rpps_number=with_luhn_digit("1234567890"),
                display_name="Dr Skeleton",
                therapeutic_areas=["oncology"],
                max_concurrent_cases=2,
            )
        )
    async with open_channel(stack.target("identity"), tokens) as channel:
        account = await identity_pb2_grpc.IdentityServiceStub(channel).SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key="seed-patient",
                email="skeleton@example.org",
                phone_number="+33612345678",
                password="Skeleton-2026",
                declared_age=40,
            )
        )
    return await stack.open_session(account.account_id)


@pytest.mark.temporal
@pytest.mark.req("SEC-01")
@pytest.mark.req("CASE-11")
async def test_one_trace_spans_gateway_services_and_workflow(tmp_path: Path, temporal_client: Client) -> None:
    queue = f"cases-{uuid.uuid4().hex[:8]}"
    async with platform_stack(tmp_path, "sqlite", temporal=temporal_client, task_queue=queue) as stack:
        session_token = await seed_doctor_and_patient(stack)
        SPANS.clear()
        async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
            response = await http.post(
                "/api/v1/cases",
                headers={"Authorization": f"Bearer {session_token}", "Idempotency-Key": "skeleton-case-1"},
                json={
                    "filing_capacity": "self",
                    "therapeutic_area": "oncology",
                    "purpose": "second_opinion",
                    "doctor_choice_mode": "platform_chosen",
                },
            )
            assert response.status_code == 201, response.text
            case_id = response.json()["case_id"]
            handle = temporal_client.get_workflow_handle(case_workflow_id(case_id))
            # The workflow now runs the whole case: it lists the doctors of the area, opens
            # the checkout (awaiting_payment) and waits there for terms, forms and payment.
            status = ""
            for _ in range(300):
                case = await http.get(
                    f"/api/v1/cases/{case_id}", headers={"Authorization": f"Bearer {session_token}"}
                )
                status = case.json()["status"]
                if status == "awaiting_payment":
                    break
                await asyncio.sleep(0.05)
            # The case service heard from the workflow: the service starts only after payment.
            assert status == "awaiting_payment"
            assert stack.temporal_settings is not None
            sealed = with_data_converter(temporal_client, stack.temporal_settings)
            view = await sealed.get_workflow_handle(case_workflow_id(case_id)).query(CaseWorkflow.state)
            assert view.candidate_doctor_count == 1
            description = await handle.describe()
            attributes = {key: value for key, value in description.search_attributes.items()}
            assert attributes["CaseStatus"] == ["awaiting_payment"]
            assert attributes["TherapeuticArea"] == ["oncology"]

    spans = SPANS.get_finished_spans()
    entry = next(s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST /api/v1/cases"))
    trace_id = entry.context.trace_id
    in_trace = [s for s in spans if s.context.trace_id == trace_id]
    names = {s.name for s in in_trace}
    expected = [
        "/secondopinion.identity.v1.IdentityService/ValidateSession",
        "/secondopinion.dossier.v1.DossierService/CreateCase",
        "StartWorkflow:CaseWorkflow",
        "RunWorkflow:CaseWorkflow",
        "RunActivity:list_candidate_doctors",
        "/secondopinion.matching.v1.MatchingService/ListReferentDoctors",
        "RunActivity:report_case_status",
        "/secondopinion.dossier.v1.DossierService/UpdateCaseStatus",
    ]
    for name in expected:
        assert name in names, f"{name} missing from the trace: {sorted(names)}"
    # The service-side spans come from gRPC servers (context propagated over the wire).
    servers = {s.name for s in in_trace if s.kind == SpanKind.SERVER}
    assert "/secondopinion.matching.v1.MatchingService/ListReferentDoctors" in servers
