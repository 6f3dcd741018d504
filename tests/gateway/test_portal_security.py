"""Issue 9 §6 and the authorization matrix: every API route with an id, for the owner,
another patient, an unassigned doctor, a partner user and an anonymous caller; CSRF,
cookies, CSP, no-store, ids only in URLs, the upload limit while streaming, 429s."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.shared.auth import Role
from tests.dossier.samples import pdf
from tests.gateway.conftest import TEST_UPLOAD_LIMIT
from tests.gateway.support import Portal, csrf

CASE = {
    "filing_capacity": "self",
    "therapeutic_area": "cardiology",
    "purpose": "second_opinion",
    "doctor_choice_mode": "platform_chosen",
}
ID_PARAMS = {
    "case_id", "document_id", "report_id", "invoice_id", "offer_id", "abuse_report_id", "text_id",
    "request_id",
}  # fmt: skip


def route_paths(routes: Any, prefix: str = "") -> Iterator[str]:
    """Every path the app serves, included routers unfolded (FastAPI keeps them nested)."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from route_paths(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path"):
            yield prefix + route.path


async def _upload(portal: Portal, account_id: str, case_id: str) -> str:
    dossier = portal.as_person("dossier", account_id, Role.PATIENT)
    body = pdf()

    async def stream() -> AsyncIterator[dossier_pb2.UploadDocumentRequest]:
        yield dossier_pb2.UploadDocumentRequest(
            idempotency_key=f"doc-{case_id}",
            metadata=dossier_pb2.UploadDocumentMetadata(
                case_id=case_id, purpose=dossier_pb2.DOCUMENT_PURPOSE_MEDICAL_RECORD,
                file_name="bilan.pdf", declared_size_bytes=len(body),
            ),
        )  # fmt: skip
        yield dossier_pb2.UploadDocumentRequest(chunk=body)

    uploaded = await dossier.UploadDocument(stream())
    return str(uploaded.document.document_id)


@pytest.mark.req("CASE-12")
@pytest.mark.req("DOC-02")
@pytest.mark.req("SEC-05")
async def test_authorization_matrix_over_every_route_with_an_id(portal: Portal) -> None:
    owner = await portal.patient("owner@example.org")
    other = await portal.patient("other@example.org")
    doctor = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "unassigned@example.org", "Dr Other"
    )
    partner = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_PARTNER_USER, "partner@example.org", "Partner", partner_id=portal.partner_id
    )
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**owner.bearer, "Idempotency-Key": "matrix-1"}
        )
        assert created.status_code == 201, created.text
        case_id = created.json()["case_id"]
        message = await http.post(
            f"/api/v1/cases/{case_id}/messages", json={"body": "Bonjour"},
            headers={**owner.bearer, "Idempotency-Key": "matrix-msg-1"},
        )  # fmt: skip
        assert message.status_code == 201, message.text
    document_id = await _upload(portal, owner.account_id, case_id)
    routes = [
        f"/api/v1/cases/{case_id}",
        f"/api/v1/cases/{case_id}/documents",
        f"/api/v1/documents/{document_id}",
        f"/api/v1/cases/{case_id}/messages",
        f"/api/v1/cases/{case_id}/reports",
    ]
    async with httpx.AsyncClient(base_url=portal.url) as http:
        for route in routes:
            assert (await http.get(route, headers=owner.bearer)).status_code == 200, route
            assert (await http.get(route)).status_code == 401, route
            for intruder in (other, doctor, partner):
                answer = await http.get(route, headers=intruder.bearer)
                assert answer.status_code in (403, 404), (route, intruder.email, answer.status_code)
                assert case_id not in answer.text and "Bonjour" not in answer.text
        # Ids nobody owns look exactly like ids of others: no existence is revealed.
        for route in ("/api/v1/invoices/00000000-0000-0000-0000-000000000000", "/api/v1/reports/nope"):
            assert (await http.get(route)).status_code == 401
            assert (await http.get(route, headers=other.bearer)).status_code in (403, 404)
        # The pages too: the owner sees the case, others never do.
        for page in (f"/cases/{case_id}", f"/cases/{case_id}/pay", f"/doctor/cases/{case_id}",
                     f"/coordination/cases/{case_id}", f"/documents/{document_id}"):  # fmt: skip
            anonymous = await http.get(page)
            assert anonymous.status_code == 303 and anonymous.headers["location"] == "/login"
            for intruder in (other, doctor, partner):
                http.cookies.set("so_session", intruder.session)
                answer = await http.get(page)
                http.cookies.clear()
                assert answer.status_code in (303, 403, 404), (page, intruder.email)
                assert "Bonjour" not in answer.text and "bilan.pdf" not in answer.text


@pytest.mark.req("SEC-05")
@pytest.mark.req("CNS-09")
async def test_cookies_csrf_csp_no_store_and_ids_only_in_urls(portal: Portal) -> None:
    owner = await portal.patient("csrf@example.org")
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**owner.bearer, "Idempotency-Key": "csrf-0001"}
        )
        case_id = created.json()["case_id"]
        http.cookies.set("so_session", owner.session)
        token = await csrf(http, f"/cases/{case_id}")
        page = await http.get(f"/cases/{case_id}")
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        csrf_cookie = next(h for h in page.headers.get_list("set-cookie") if h.startswith("so_csrf="))
        assert "HttpOnly" in csrf_cookie and "SameSite=strict" in csrf_cookie
        assert "Secure" not in csrf_cookie  # plain-HTTP test environment; production below
        body = {"body": "Message", "message_key": "k-csrf-0001"}
        assert (await http.post(f"/cases/{case_id}/messages", data=body)).status_code == 403
        forged = await http.post(
            f"/cases/{case_id}/messages",
            data={**body, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        sent = await http.post(f"/cases/{case_id}/messages", data={**body, "csrf_token": token})
        assert sent.status_code == 303
    # Only ids, kinds and outcomes travel in paths: never health data.
    paths = list(route_paths(portal.app.routes))
    assert len(paths) > 60 and "/cases/{case_id}" in paths
    for path in paths:
        params = set(re.findall(r"{([a-z_]+)}", path))
        assert params <= ID_PARAMS | {"kind", "outcome", "path"}, path


def test_cookies_are_secure_outside_development(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from services.gateway.app import create_app
    from services.gateway.settings import GatewaySettings
    from services.shared.settings import Environment
    from tests.support.stack import make_keys

    app = create_app(
        GatewaySettings(environment=Environment.PRODUCTION, identity_target="127.0.0.1:1"),
        make_keys(tmp_path / "keys"),
        connect_temporal=False,
    )
    with TestClient(app, base_url="https://portal.example") as client:
        answer = client.get("/login")
    cookie = next(h for h in answer.headers.get_list("set-cookie") if h.startswith("so_csrf="))
    assert "Secure" in cookie and "HttpOnly" in cookie
    assert client.get("/api/openapi.json").status_code == 404  # no API docs in production


@pytest.mark.req("CASE-04")
async def test_upload_limit_is_enforced_while_streaming(portal: Portal) -> None:
    owner = await portal.patient("upload@example.org")
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**owner.bearer, "Idempotency-Key": "upload-0001"}
        )
        case_id = created.json()["case_id"]
        http.cookies.set("so_session", owner.session)
        token = await csrf(http, f"/cases/{case_id}")
        headers = {"Accept": "application/json", "X-CSRF-Token": token,
                   "Content-Type": "multipart/form-data; boundary=xyz"}  # fmt: skip
        # Announced too large: refused before a byte is read.
        announced = await http.post(
            f"/cases/{case_id}/documents", content=b"x" * (TEST_UPLOAD_LIMIT + 128 * 1024), headers=headers
        )
        assert announced.status_code == 413 and "trop volumineux" in announced.json()["error"]
        # Streamed without a length: cut as soon as the limit is crossed, never parsed.
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(64):
                sent += 256 * 1024
                yield b"\0" * (256 * 1024)

        streamed = await http.post(
            f"/cases/{case_id}/documents",
            content=endless(),
            headers=headers,
        )
        assert streamed.status_code == 413
        listed = await http.get(f"/api/v1/cases/{case_id}/documents", headers=owner.bearer)
        assert listed.json()["documents"] == []  # nothing reached the dossier
        # A real file under the limit goes through to the dossier.
        ok = await http.post(
            f"/cases/{case_id}/documents",
            files={"file": ("compte-rendu.pdf", pdf(), "application/pdf")},
            data={"csrf_token": token, "upload_key": "upload-key-1"},
        )
        assert ok.status_code == 303, ok.text
        assert sent > TEST_UPLOAD_LIMIT


@pytest.mark.req("ACC-07")
async def test_429_with_retry_after_on_login_codes_uploads_and_payments(portal: Portal) -> None:
    owner = await portal.patient("limits@example.org")
    try:
        async with httpx.AsyncClient(base_url=portal.url) as http:
            token = await csrf(http)
            bad = {"csrf_token": token, "email": "x@example.org", "password": "Bad-0"}
            statuses = [
                (await http.post("/login", data=bad)).status_code
                for _ in range(DEFAULT_LIMITS["login"].requests + 1)
            ]
            assert statuses[-1] == 429
            last = await http.post(
                "/login", data={"csrf_token": token, "email": "x@example.org", "password": "Bad-0"}
            )
            assert int(last.headers["retry-after"]) > 0
            created = await http.post(
                "/api/v1/cases", json=CASE, headers={**owner.bearer, "Idempotency-Key": "limits-0001"}
            )
            case_id = created.json()["case_id"]
            http.cookies.set("so_session", owner.session)
            token = await csrf(http, f"/cases/{case_id}")
            for action, path, data in (
                (
                    "payment",
                    f"/cases/{case_id}/pay/coverage",
                    {"code": "BAD-CODE", "attempt_key": "attempt-key-1"},
                ),
                ("login_code", "/step-up/verify", {"code": "000000"}),
            ):
                answers = [
                    await http.post(path, data={**data, "csrf_token": token})
                    for _ in range(DEFAULT_LIMITS[action].requests + 1)
                ]
                assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) > 0, action
            uploads = [
                await http.post(
                    f"/cases/{case_id}/documents", files={"file": ("a.pdf", pdf(), "application/pdf")},
                    data={"csrf_token": token},
                )
                for _ in range(DEFAULT_LIMITS["upload"].requests + 1)
            ]  # fmt: skip
            assert uploads[-1].status_code == 429 and uploads[-1].headers["retry-after"]
    finally:
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


async def test_psp_endpoints_refuse_unsigned_messages(portal: Portal) -> None:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        for path in ("/api/payments/psp/notification", "/api/payments/psp/return/accepted"):
            assert (await http.get(path)).status_code == 400
            forged = await http.get(
                path + "?amount=35000&ref=SO123&auto=XXXXXX&error=00000&trans=1&Sign=AAAA"
            )
            assert forged.status_code == 400 and forged.headers["content-type"] == "application/problem+json"
        assert (await http.get("/api/payments/psp/return/unknown?x=1")).status_code == 422
