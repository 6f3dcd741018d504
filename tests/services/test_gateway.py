"""The gateway: authentication through identity sessions, problem bodies, no-store, API3."""

from __future__ import annotations

import httpx
import pytest
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc

from services.shared.grpc_client import open_channel
from tests.support.stack import Stack


async def patient_session(stack: Stack, email: str) -> str:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        account = await identity_pb2_grpc.IdentityServiceStub(channel).SignUp(
            identity_pb2.SignUpRequest(
                idempotency_key=f"signup-{email}",
                email=email,
                phone_number="+33612345678",
                password="Gateway-2026",
                declared_age=33,
            )
        )
    return await stack.open_session(account.account_id)


CASE = {
    "filing_capacity": "self",
    "therapeutic_area": "cardiology",
    "purpose": "second_opinion",
    "doctor_choice_mode": "platform_chosen",
}


@pytest.mark.req("ACC-01")
@pytest.mark.req("SEC-05")
async def test_api_requires_a_session_and_answers_with_problem_bodies(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        anonymous = await http.get("/api/v1/me")
        assert anonymous.status_code == 401
        assert anonymous.headers["content-type"] == "application/problem+json"
        assert anonymous.json()["status"] == 401
        forged = await http.get("/api/v1/me", headers={"Authorization": "Bearer not-a-session"})
        assert forged.status_code == 401
    async with httpx.AsyncClient(base_url=stack.gateway_url, cookies={"so_session": "x" * 43}) as http:
        assert (await http.get("/api/v1/me")).status_code == 401
        no_account = await http.post("/api/v1/cases", json=CASE, headers={"Idempotency-Key": "abcdefgh"})
        assert no_account.status_code == 401


@pytest.mark.req("CASE-12")
async def test_patient_sees_own_account_and_cases_only(stack: Stack) -> None:
    alice = {"Authorization": f"Bearer {await patient_session(stack, 'alice@example.org')}"}
    bob = {"Authorization": f"Bearer {await patient_session(stack, 'bob@example.org')}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        me = await http.get("/api/v1/me", headers=alice)
        assert me.status_code == 200 and me.json()["email"] == "alice@example.org"
        assert me.headers["cache-control"] == "no-store"
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**alice, "Idempotency-Key": "alice-case-1"}
        )
        assert created.status_code == 201, created.text
        case_id = created.json()["case_id"]
        assert (await http.get(f"/api/v1/cases/{case_id}", headers=alice)).status_code == 200
        other = await http.get(f"/api/v1/cases/{case_id}", headers=bob)
        assert other.status_code == 404 and other.headers["content-type"] == "application/problem+json"


async def test_bad_input_gets_clear_4xx_never_500(stack: Stack) -> None:
    alice = {"Authorization": f"Bearer {await patient_session(stack, 'carol@example.org')}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        # API3: a person cannot set the status (or any field the platform owns).
        extra = await http.post(
            "/api/v1/cases",
            json={**CASE, "status": "report_delivered"},
            headers={**alice, "Idempotency-Key": "k-12345678"},
        )
        assert extra.status_code == 422 and "status" in extra.json()["detail"]
        missing_key = await http.post("/api/v1/cases", json=CASE, headers=alice)
        assert missing_key.status_code == 422
        unknown_area = await http.post(
            "/api/v1/cases",
            json={**CASE, "therapeutic_area": "astrology"},
            headers={**alice, "Idempotency-Key": "k-area-1"},
        )
        assert unknown_area.status_code == 400 and "catalog" in unknown_area.json()["detail"]
        not_json = await http.post(
            "/api/v1/cases", content=b"{", headers={**alice, "Idempotency-Key": "k-json-1"}
        )
        assert not_json.status_code == 422
        unknown_case = await http.get("/api/v1/cases/does-not-exist", headers=alice)
        assert unknown_case.status_code == 404


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_a_service_outage_is_a_retryable_503(stack: Stack) -> None:
    session = await patient_session(stack, "dave@example.org")
    await stack.servers["dossier"].stop()
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        response = await http.get("/api/v1/cases/some-case", headers={"Authorization": f"Bearer {session}"})
        assert response.status_code == 503
        assert response.headers["retry-after"]
        ready = await http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["services"]["dossier"] != "SERVING"
