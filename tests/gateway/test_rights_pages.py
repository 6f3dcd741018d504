"""Issue 10 in the portals: the person's "Mes données" page (their rights requests, one
form per right, erasure behind a fresh code) and the DPO's desk (open requests by deadline
with overdue and at-risk flags, one request, extension, answer, legal holds, the Temporal
UI link), over HTTP against the real services. The last test runs the rights-request
workflow on the lifecycle worker: the gateway starts it when a request is filed, the
extension goes through it (the person is emailed), and the access request is carried out
by it (the FHIR export is written) and answered."""

from __future__ import annotations

import asyncio
import html
import io
import re
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2, lifecycle_pb2
from temporalio.client import WorkflowQueryFailedError
from temporalio.testing import WorkflowEnvironment

from services.gateway.web.rights import PORTAL_KINDS
from services.gateway.web.rights import router as rights_router
from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.identity.domain.retention import add_months
from services.shared.auth import Role
from tests.gateway.support import Person, Portal, csrf, step_up, ts
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import lifecycle_worker
from workflows.lifecycle.workflows import rights_request_workflow_id
from workflows.temporal_client import with_data_converter

T = TypeVar("T")
RPPS = "10003456789"
FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


async def dpo(portal: Portal, email: str) -> Person:
    person = await portal.staff(identity_pb2.ACCOUNT_ROLE_DPO, email, "Délégué Test")
    await portal.enrol_totp(person)
    return person


def session(portal: Portal, person: Person) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=portal.url)
    http.cookies.set("so_session", person.session)
    return http


async def form_key(http: httpx.AsyncClient, path: str = "/privacy") -> str:
    found = FORM_KEY.search((await http.get(path)).text)
    assert found, path
    return found.group(1)


async def file(http: httpx.AsyncClient, kind: str, **fields: str) -> httpx.Response:
    token = await csrf(http, "/privacy")
    data = {"csrf_token": token, "kind": kind, "form_key": await form_key(http), **fields}
    return await http.post("/privacy/requests", data=data)


def request_id_of(response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    found = re.fullmatch(r"/privacy/requests/([0-9a-f-]{36})\?filed=1", response.headers["location"])
    assert found, response.headers["location"]
    return found.group(1)


async def record(portal: Portal, request_id: str) -> lifecycle_pb2.RightsRequest:
    found = await portal.worker("identity").GetRightsRequest(
        identity_pb2.GetRightsRequestRequest(request_id=request_id)
    )
    result: lifecycle_pb2.RightsRequest = found.rights_request
    return result


async def eventually(read: Callable[[], Awaitable[T]], done: Callable[[T], bool], seconds: float = 30) -> T:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        value = await read()
        if done(value) or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.2)


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-02")
@pytest.mark.req("GDPR-04")
@pytest.mark.req("GDPR-05")
@pytest.mark.req("GDPR-06")
@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_a_patient_files_each_right_from_my_data(portal: Portal) -> None:
    patient = await portal.patient("rights.each@example.org")
    async with session(portal, patient) as http:
        page = await http.get("/privacy")
        assert page.status_code == 200
        assert page.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "Mes données" in page.text and "aucune demande." in page.text
        for kind in PORTAL_KINDS:
            assert f'id="kind-{kind}"' in page.text and f'<label for="kind-{kind}">' in page.text
        english = await http.get("/privacy?lang=en")
        assert "My data" in english.text and "Name a doctor to access my data" in english.text
        http.cookies.delete("so_lang")

        filed: dict[str, str] = {}
        for kind in PORTAL_KINDS:
            extra = {"doctor_rpps": RPPS, "doctor_name": "Dr Claire Martin"} if "doctor" in kind else {}
            filed[kind] = request_id_of(await file(http, kind, details=f"Demande {kind}", **extra))

        # Recorded with the PORTAL channel and the session's verified identity; one month.
        for kind, request_id in filed.items():
            saved = await record(portal, request_id)
            assert saved.subject_id == patient.account_id
            assert saved.kind == lifecycle_pb2.RightsRequestKind.Value(f"RIGHTS_REQUEST_KIND_{kind.upper()}")
            assert saved.channel == lifecycle_pb2.RIGHTS_REQUEST_CHANNEL_PORTAL
            assert (
                saved.identity_verification
                == lifecycle_pb2.IDENTITY_VERIFICATION_METHOD_AUTHENTICATED_SESSION
            )
            assert saved.status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_RECEIVED
            assert saved.details == f"Demande {kind}"
            received = saved.received_at.ToDatetime().replace(tzinfo=UTC)
            assert saved.due_at.ToDatetime().replace(tzinfo=UTC) == add_months(received, 1)
        named = await record(portal, filed["designate_doctor_for_indirect_access"])
        assert named.designated_doctor_rpps_number == RPPS
        assert named.designated_doctor_display_name == "Dr Claire Martin"

        # One request's page: status, deadline, not answered yet; only ids in the URL.
        access = filed["access"]
        shown = await http.get(f"/privacy/requests/{access}?filed=1")
        assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
        due = (await record(portal, access)).due_at.ToDatetime().strftime("%d/%m/%Y")
        assert "Votre demande a été enregistrée" in shown.text
        assert "Reçue" in shown.text and due in shown.text and "Pas encore de réponse" in shown.text
        assert "votre espace en ligne" in shown.text

        # The list shows every request with its deadline.
        listing = await http.get("/privacy")
        assert listing.text.count('href="/privacy/requests/') == len(PORTAL_KINDS)
        assert due in listing.text

        # The same form sent twice is one request (idempotency key from the form).
        token = await csrf(http, "/privacy")
        key = await form_key(http)
        data = {"csrf_token": token, "kind": "objection", "form_key": key, "details": "Prospection"}
        first = request_id_of(await http.post("/privacy/requests", data=data))
        again = request_id_of(await http.post("/privacy/requests", data=data))
        assert first == again


@pytest.mark.req("SEC-03")
def test_only_ids_travel_in_the_paths_of_the_rights_pages() -> None:
    """Request ids (UUIDs) only: kinds, reasons, free text and doctors go in form bodies."""
    for route in rights_router.routes:
        params = set(re.findall(r"{([a-z_]+)}", getattr(route, "path", "")))
        assert params <= {"request_id"}, getattr(route, "path", "")


@pytest.mark.req("GDPR-03")
@pytest.mark.req("ACC-06")
async def test_erasure_is_filed_only_after_a_fresh_code(portal: Portal) -> None:
    patient = await portal.patient("rights.erasure@example.org")
    async with session(portal, patient) as http:
        # Without a fresh code: sent to the step-up page, whichever way the form is reached.
        gated = await http.get("/privacy/erasure")
        assert gated.status_code == 303 and gated.headers["location"] == "/step-up?next=%2Fprivacy%2Ferasure"
        smuggled = await file(http, "erasure", details="Effacer")
        assert smuggled.status_code == 303 and smuggled.headers["location"].startswith("/step-up?")
        step_page = await http.get(gated.headers["location"])
        assert step_page.status_code == 200 and 'value="/privacy/erasure"' in step_page.text

        await step_up(portal, patient)
        page = await http.get("/privacy/erasure")
        assert page.status_code == 200
        assert "factures" in page.text  # what the law keeps is said before filing
        token = await csrf(http, "/privacy/erasure")
        key = await form_key(http, "/privacy/erasure")
        unconfirmed = await http.post(
            "/privacy/erasure", data={"csrf_token": token, "form_key": key, "details": "Plus besoin"}
        )
        assert unconfirmed.status_code == 400 and "Plus besoin" in unconfirmed.text
        assert (
            await http.post("/privacy/erasure", data={"form_key": key, "confirm": "yes"})
        ).status_code == 403
        filed = await http.post(
            "/privacy/erasure",
            data={"csrf_token": token, "form_key": key, "details": "Plus besoin", "confirm": "yes"},
        )
        saved = await record(portal, request_id_of(filed))
        assert saved.kind == lifecycle_pb2.RIGHTS_REQUEST_KIND_ERASURE
        assert saved.identity_verification == lifecycle_pb2.IDENTITY_VERIFICATION_METHOD_STEP_UP


@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_bad_input_gets_a_clear_4xx_never_a_500(portal: Portal) -> None:
    patient = await portal.patient("rights.bad@example.org")
    other = await portal.patient("rights.other@example.org")
    officer = await dpo(portal, "dpo.bad@example.org")
    async with session(portal, other) as http:
        theirs = request_id_of(await file(http, "access"))
    async with session(portal, patient) as http:
        no_token = await http.post("/privacy/requests", data={"kind": "access", "form_key": "k" * 36})
        assert no_token.status_code == 403
        unknown_kind = await file(http, "everything")
        assert unknown_kind.status_code == 400 and "choisissez le droit" in unknown_kind.text
        no_doctor = await file(http, "designate_doctor_for_indirect_access", details="Mon médecin")
        assert no_doctor.status_code == 400 and "numéro RPPS" in no_doctor.text
        assert "Mon médecin" in no_doctor.text  # the form comes back as typed
        bad_rpps = await file(
            http, "designate_doctor_for_indirect_access", doctor_rpps="12AB", doctor_name="Dr X"
        )
        assert bad_rpps.status_code == 400 and "RPPS" in bad_rpps.text
        too_long = await file(http, "rectification", details="x" * 10_001)
        assert too_long.status_code == 400 and "10000" in too_long.text
        # Another person's request, an unknown one, a malformed id: the same 404.
        for request_id in (theirs, str(uuid.uuid4()), "not-an-id"):
            answer = await http.get(f"/privacy/requests/{request_id}")
            assert answer.status_code == 404, (request_id, answer.text)
        # The DPO's desk is not the patient's.
        for path in ("/dpo", f"/dpo/rights-requests/{theirs}"):
            assert (await http.get(path)).headers.get("location") == "/dashboard"
        token = await csrf(http, "/privacy")
        refused = await http.post(
            f"/dpo/rights-requests/{theirs}/answer", data={"csrf_token": token, "outcome": "granted"}
        )
        assert refused.status_code == 303 and refused.headers["location"] == "/dashboard"
        assert (await record(portal, theirs)).status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_RECEIVED
    async with httpx.AsyncClient(base_url=portal.url) as anonymous:
        for path in ("/privacy", "/privacy/erasure", f"/privacy/requests/{theirs}", "/dpo"):
            assert (await anonymous.get(path)).headers.get("location") == "/login", path
    async with session(portal, officer) as http:
        token = await csrf(http, "/dpo")
        base = f"/dpo/rights-requests/{theirs}"
        checks: list[tuple[str, dict[str, str], int]] = [
            (f"{base}/extend", {"months": "3", "reason": "complexity"}, 400),
            (f"{base}/extend", {"months": "1", "reason": "boredom"}, 400),
            (f"{base}/answer", {"outcome": "maybe"}, 400),
            (f"/dpo/rights-requests/{uuid.uuid4()}/answer", {"outcome": "granted"}, 404),
            (f"/dpo/rights-requests/{uuid.uuid4()}/extend", {"months": "1", "reason": "complexity"}, 404),
            (
                "/dpo/legal-holds",
                {"subject_id": str(uuid.uuid4()), "reason": "litigation", "form_key": "k" * 36},
                404,
            ),
            (
                "/dpo/legal-holds",
                {"subject_id": patient.account_id, "reason": "whim", "form_key": "k" * 36},
                400,
            ),
            ("/dpo/legal-holds/release", {"legal_hold_id": str(uuid.uuid4())}, 404),
            ("/dpo/legal-holds/release", {"legal_hold_id": ""}, 400),
        ]
        for path, data, status in checks:
            answer = await http.post(path, data={"csrf_token": token, **data})
            assert answer.status_code == status, (path, data, answer.status_code, answer.text[:300])
            assert "text/html" in answer.headers["content-type"]
        assert (await http.get(f"/dpo/rights-requests/{uuid.uuid4()}")).status_code == 404
        # The fulfilment needs the workflow: without Temporal the page says so (503, no change).
        fulfil = await http.post(f"{base}/fulfil", data={"csrf_token": token})
        assert fulfil.status_code == 503 and "injoignable" in fulfil.text
        assert (await record(portal, theirs)).status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_RECEIVED
        # CSRF on every POST of the desk.
        for path in (
            f"{base}/extend",
            f"{base}/answer",
            f"{base}/fulfil",
            "/dpo/legal-holds",
            "/dpo/legal-holds/release",
        ):
            assert (await http.post(path, data={"months": "1", "reason": "complexity"})).status_code == 403, (
                path
            )


@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
@pytest.mark.req("RET-06")
async def test_the_dpo_desk_sorts_flags_extends_answers_and_holds(portal: Portal) -> None:
    patient = await portal.patient("rights.desk@example.org")
    officer = await dpo(portal, "dpo.desk@example.org")
    desk = portal.as_person("identity", officer.account_id, Role.DPO)
    now = datetime.now(UTC)

    async def letter(days_ago: int, kind: lifecycle_pb2.RightsRequestKind.ValueType, details: str) -> str:
        """A letter the DPO received and recorded (identity document checked)."""
        recorded = await desk.RecordRightsRequest(
            identity_pb2.RecordRightsRequestRequest(
                idempotency_key=f"letter-{uuid.uuid4()}", subject_id=patient.account_id, kind=kind,
                channel=lifecycle_pb2.RIGHTS_REQUEST_CHANNEL_POSTAL_MAIL,
                identity_verification=lifecycle_pb2.IDENTITY_VERIFICATION_METHOD_IDENTITY_DOCUMENT,
                identity_proof_document_id=str(uuid.uuid4()), received_at=ts(now - timedelta(days=days_ago)),
                details=details,
            )
        )  # fmt: skip
        return str(recorded.rights_request.request_id)

    overdue = await letter(45, lifecycle_pb2.RIGHTS_REQUEST_KIND_RECTIFICATION, "Corriger mon adresse")
    at_risk = await letter(27, lifecycle_pb2.RIGHTS_REQUEST_KIND_OBJECTION, "Opposition")
    async with session(portal, patient) as http:
        fresh = request_id_of(await file(http, "access", details="Toutes mes données"))

    async with session(portal, officer) as http:
        page = await http.get("/dpo")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        rows = re.findall(r'data-request-id="([0-9a-f-]{36})"', page.text)
        mine = [r for r in rows if r in (overdue, at_risk, fresh)]
        assert mine == [overdue, at_risk, fresh]  # closest deadline first
        row = {r: page.text.split(f'data-request-id="{r}"')[1].split("</tr>")[0] for r in mine}
        assert "En retard" in row[overdue] and "Échéance proche" in row[at_risk]
        assert "En retard" not in row[fresh] and "Échéance proche" not in row[fresh]
        assert "courrier postal" in row[overdue] and "votre espace en ligne" in row[fresh]
        assert (
            f"http://127.0.0.1:8233/namespaces/default/workflows/{rights_request_workflow_id(fresh)}"
            in row[fresh]
        )

        # One request: what the person wrote, who they are, the workflow link.
        detail = await http.get(f"/dpo/rights-requests/{overdue}")
        assert detail.status_code == 200
        assert "Corriger mon adresse" in detail.text and patient.email in detail.text
        assert f"/workflows/{rights_request_workflow_id(overdue)}" in detail.text
        assert "pièce d'identité" in html.unescape(detail.text)

        # Extension: two months at most in total.
        token = await csrf(http, f"/dpo/rights-requests/{overdue}")
        before = await record(portal, overdue)
        extended = await http.post(
            f"/dpo/rights-requests/{overdue}/extend",
            data={"csrf_token": token, "months": "2", "reason": "complexity"},
        )
        assert extended.status_code == 303
        # Without Temporal the register moves and the page says the person is not told yet.
        assert extended.headers["location"].endswith("?done=extended_no_workflow")
        after = await record(portal, overdue)
        assert after.status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_EXTENDED
        received = before.received_at.ToDatetime().replace(tzinfo=UTC)
        assert after.due_at.ToDatetime().replace(tzinfo=UTC) == add_months(received, 3)
        shown = await http.get(extended.headers["location"])
        assert "prolongé de 2 mois" in shown.text and "pas encore été prévenue" in shown.text
        assert 'data-testid="extend-form"' not in shown.text  # nothing left to extend
        more = await http.post(
            f"/dpo/rights-requests/{overdue}/extend",
            data={"csrf_token": token, "months": "1", "reason": "complexity"},
        )
        assert more.status_code == 409 and "two months at most" in more.text

        # The answer, then the person sees it; a second answer is refused.
        answered = await http.post(
            f"/dpo/rights-requests/{overdue}/answer", data={"csrf_token": token, "outcome": "granted"}
        )
        assert answered.status_code == 303 and answered.headers["location"].endswith("?done=answered")
        saved = await record(portal, overdue)
        assert saved.status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_ANSWERED
        assert saved.outcome == lifecycle_pb2.RIGHTS_REQUEST_OUTCOME_GRANTED
        again = await http.post(
            f"/dpo/rights-requests/{overdue}/answer", data={"csrf_token": token, "outcome": "refused"}
        )
        assert again.status_code == 409 and "déjà reçu une réponse" in again.text
        assert overdue not in (await http.get("/dpo")).text  # no longer open

        # A legal hold on the person, from the request's page, then released from the desk.
        key = await form_key(http, f"/dpo/rights-requests/{at_risk}")
        held = await http.post(
            "/dpo/legal-holds",
            data={
                "csrf_token": token, "subject_id": patient.account_id, "reason": "litigation",
                "external_reference": "RG 26/00042", "form_key": key, "back_to": at_risk,
            },
        )  # fmt: skip
        assert (
            held.status_code == 303
            and held.headers["location"] == f"/dpo/rights-requests/{at_risk}?done=held"
        )
        holds = await desk.ListLegalHolds(identity_pb2.ListLegalHoldsRequest(subject_id=patient.account_id))
        assert [h.reason for h in holds.legal_holds] == [lifecycle_pb2.LEGAL_HOLD_REASON_LITIGATION]
        hold_id = holds.legal_holds[0].legal_hold_id
        retention = await desk.GetSubjectRetention(
            lifecycle_pb2.GetSubjectRetentionRequest(subject_id=patient.account_id)
        )
        assert retention.legal_hold
        listed = await http.get("/dpo")
        assert "RG 26/00042" in listed.text and "Contentieux" in listed.text
        released = await http.post(
            "/dpo/legal-holds/release", data={"csrf_token": token, "legal_hold_id": hold_id}
        )
        assert released.status_code == 303 and released.headers["location"] == "/dpo?done=released#holds"
        retention = await desk.GetSubjectRetention(
            lifecycle_pb2.GetSubjectRetentionRequest(subject_id=patient.account_id)
        )
        assert not retention.legal_hold
        twice = await http.post(
            "/dpo/legal-holds/release", data={"csrf_token": token, "legal_hold_id": hold_id}
        )
        assert twice.status_code == 303  # a second click is the same release (idempotency key)
        assert (
            len(
                (
                    await desk.ListLegalHolds(
                        identity_pb2.ListLegalHoldsRequest(subject_id=patient.account_id)
                    )
                ).legal_holds
            )
            == 0
        )
        history = await http.get(f"/dpo/rights-requests/{at_risk}")
        assert "levé le" in history.text

    async with session(portal, patient) as http:
        mine_page = await http.get(f"/privacy/requests/{overdue}")
        assert "Demande satisfaite" in mine_page.text and "délai prolongé de 2 mois" in mine_page.text
        assert "courrier postal" in mine_page.text


@pytest.fixture
async def lifecycle(
    portal: Portal, temporal_env: WorkflowEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Path]:
    """The lifecycle worker on its own queue, and the gateway connected to Temporal."""
    stack = portal.stack
    assert stack.temporal_settings is not None
    queue = f"lifecycle-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("LIFECYCLE_TASK_QUEUE", queue)
    settings = LifecycleSettings(
        task_queue=queue,
        identity_target=stack.target("identity"),
        dossier_target=stack.target("dossier"),
        matching_target=stack.target("matching"),
        billing_target=stack.target("billing"),
        notifications_target=stack.target("notifications"),
        export_dir=tmp_path / "exports",
    )
    clients: Any = portal.app.state.clients
    async with lifecycle_worker(temporal_env.client, settings, stack.auth, stack.temporal_settings):
        clients.temporal = with_data_converter(temporal_env.client, stack.temporal_settings)
        try:
            yield tmp_path / "exports"
        finally:
            clients.temporal = None


async def state_or_none(handle: Any) -> Any:
    """The workflow's state, or None while its first activity has not read the request yet
    (the query fails until then)."""
    try:
        return await handle.query("state")
    except WorkflowQueryFailedError:
        return None


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-08")
async def test_the_workflow_tells_the_person_and_carries_out_the_access_request(
    portal: Portal, lifecycle: Path
) -> None:
    patient = await portal.patient("rights.workflow@example.org")
    officer = await dpo(portal, "dpo.workflow@example.org")
    async with session(portal, patient) as http:
        request_id = request_id_of(await file(http, "access", details="Copie de mes données"))
    client = portal.app.state.clients.temporal
    handle = client.get_workflow_handle(rights_request_workflow_id(request_id))
    description = await handle.describe()
    assert description.workflow_type == "RightsRequestWorkflow"

    async with session(portal, officer) as http:
        token = await csrf(http, f"/dpo/rights-requests/{request_id}")
        # The extension goes through the workflow: it records it and emails the person.
        state = await eventually(lambda: state_or_none(handle), lambda s: s is not None)
        assert state is not None
        extended = await http.post(
            f"/dpo/rights-requests/{request_id}/extend",
            data={"csrf_token": token, "months": "1", "reason": "number_of_requests"},
        )
        assert extended.status_code == 303, extended.text
        assert extended.headers["location"].endswith("?done=extended")
        # The email links to the person's page for this request (the route above).
        link = f"/privacy/requests/{request_id}"
        texts = await eventually(portal.outbox_texts, lambda t: any(link in x for x in t))
        assert any(link in text for text in texts), "the person is emailed the new deadline"
        assert (await record(portal, request_id)).status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_EXTENDED

        # Carried out by the workflow: the FHIR export is written, stored in the dossier as
        # the person's document, and the answer recorded with it.
        started = await http.post(f"/dpo/rights-requests/{request_id}/fulfil", data={"csrf_token": token})
        assert started.status_code == 303 and started.headers["location"].endswith("?done=fulfilling")
        saved = await eventually(
            lambda: record(portal, request_id),
            lambda r: r.status == lifecycle_pb2.RIGHTS_REQUEST_STATUS_ANSWERED,
        )
        assert saved.outcome == lifecycle_pb2.RIGHTS_REQUEST_OUTCOME_GRANTED
        assert saved.answer_document_id
        assert not (lifecycle / request_id / "export.zip").exists()  # no copy on the worker
    await the_person_downloads_the_archive(portal, patient, request_id, saved.answer_document_id)


async def the_person_downloads_the_archive(
    portal: Portal, patient: Person, request_id: str, document_id: str
) -> None:
    """GDPR-01 / GDPR-05 from "Mes données": the link on the request's page, behind a fresh
    code (ACC-06); the person alone; logged by the dossier (SEC-01)."""
    link = f"/privacy/requests/{request_id}/export"
    async with session(portal, patient) as http:
        shown = await http.get(f"/privacy/requests/{request_id}")
        assert "Demande satisfaite" in shown.text
        assert f'href="{link}"' in shown.text
        assert "Télécharger l'archive de mes données" in html.unescape(shown.text)
        assert "nouveau code de sécurité vous sera demandé" in html.unescape(shown.text)
        listing = await http.get("/privacy")
        assert f'href="/privacy/requests/{request_id}#answer"' in listing.text

        # Without a fresh code: sent to the step-up page, which comes back here.
        gated = await http.get(link)
        assert gated.status_code == 303
        assert gated.headers["location"] == f"/step-up?next={quote(link, safe='')}"
        step_page = await http.get(gated.headers["location"])
        assert step_page.status_code == 200 and f'value="{link}"' in step_page.text
        await step_up(portal, patient)

        # While the malware scan has not passed, the page says so (no clamd on this stack).
        pending = await http.get(link)
        assert pending.status_code == 409 and "vérification antivirus" in html.unescape(pending.text)
        await portal.scanned_clean(document_id)
        async with http.stream("GET", link) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"] == "application/zip"
            assert response.headers["cache-control"] == "no-store"
            name = f"export-{request_id[:8]}.zip"
            assert response.headers["content-disposition"] == (
                f"attachment; filename=\"{name}\"; filename*=UTF-8''{name}"
            )
            assert "sandbox" in response.headers["content-security-policy"]
            body = b"".join([chunk async for chunk in response.aiter_bytes()])
        assert int(response.headers["content-length"]) == len(body)
        with zipfile.ZipFile(io.BytesIO(body)) as opened:
            assert {"fhir-bundle.json", "summary.txt"} <= set(opened.namelist())
            assert "Export de vos données personnelles" in opened.read("summary.txt").decode()

    # SEC-01: the download is in the person's access history.
    history = await portal.as_person("dossier", patient.account_id, Role.PATIENT).ListAccessLog(
        dossier_pb2.ListAccessLogRequest()
    )
    assert (patient.account_id, dossier_pb2.ACCESS_ACTION_DOWNLOAD) in {
        (e.actor_account_id, e.action) for e in history.entries if e.object_id == document_id
    }

    # Another person, even with a fresh code: the same 404 as for an unknown request.
    other = await portal.patient(f"rights.other.{uuid.uuid4().hex[:6]}@example.org")
    await step_up(portal, other)
    async with session(portal, other) as http:
        for path in (link, f"/privacy/requests/{uuid.uuid4()}/export", "/privacy/requests/not-an-id/export"):
            answer = await http.get(path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert "text/html" in answer.headers["content-type"]


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-05")
async def test_an_answer_without_an_archive_offers_no_download(portal: Portal) -> None:
    """An access request the DPO answered by hand (before the archive was stored online, or
    sent by post): the page says to ask the DPO and the download path answers 404."""
    patient = await portal.patient(f"rights.noarchive.{uuid.uuid4().hex[:6]}@example.org")
    officer = await dpo(portal, f"dpo.noarchive.{uuid.uuid4().hex[:6]}@example.org")
    async with session(portal, patient) as http:
        request_id = request_id_of(await file(http, "access"))
    await portal.as_person("identity", officer.account_id, Role.DPO).RecordRightsRequestAnswer(
        identity_pb2.RecordRightsRequestAnswerRequest(
            idempotency_key=f"answer-{request_id}",
            request_id=request_id,
            outcome=lifecycle_pb2.RIGHTS_REQUEST_OUTCOME_GRANTED,
        )
    )
    await step_up(portal, patient)
    async with session(portal, patient) as http:
        shown = await http.get(f"/privacy/requests/{request_id}")
        assert 'data-testid="rights-export"' in shown.text and "/export" not in shown.text
        assert "délégué à la protection des données vous la transmet" in html.unescape(shown.text)
        assert (await http.get(f"/privacy/requests/{request_id}/export")).status_code == 404


async def session_works(portal: Portal, person: Person) -> bool:
    async with session(portal, person) as http:
        return (await http.get("/account")).status_code == 200


@pytest.mark.req("ACC-08")
@pytest.mark.req("ACC-09")
async def test_the_dpo_issues_provisional_credentials_with_a_new_number_for_a_stolen_phone(
    portal: Portal,
) -> None:
    patient = await portal.patient(f"stolen-{uuid.uuid4().hex[:8]}@example.org")
    officer = await dpo(portal, f"dpo-{uuid.uuid4().hex[:8]}@example.org")
    async with session(portal, officer) as http:
        page = await http.get("/dpo")
        assert 'data-testid="provisional-form"' in page.text and 'for="provisional-phone"' in page.text
        token = await csrf(http, "/dpo")
        key = await form_key(http, "/dpo")
        form = {"csrf_token": token, "form_key": key, "account_id": patient.account_id}

        async def post(**changes: str) -> httpx.Response:
            return await http.post("/dpo/provisional-credentials", data={**form, **changes})

        # Each mistake is said, and changes nothing.
        assert (
            await http.post("/dpo/provisional-credentials", data={**form, "csrf_token": ""})
        ).status_code == 403
        unchecked = await post()
        assert unchecked.status_code == 400 and "identité de la personne vérifiée" in html.unescape(
            unchecked.text
        )
        landline = await post(identity_checked="yes", new_phone_number="+33 1 23 45 67 89")
        assert landline.status_code == 400 and "new_phone_number" in landline.text
        unknown = await post(identity_checked="yes", account_id=str(uuid.uuid4()))
        assert unknown.status_code == 404 and "Compte introuvable" in unknown.text
        assert await session_works(portal, patient)
        # Done: the number is replaced, the sessions end, the person is emailed the link.
        done = await post(identity_checked="yes", new_phone_number="06 12 55 44 33")
        assert done.status_code == 303 and done.headers["location"] == "/dpo?done=provisional#credentials"
        shown = await http.get(done.headers["location"])
        assert "Identifiants provisoires émis" in html.unescape(shown.text)
        # The same form sent twice (a double click) issues nothing more.
        assert (await post(identity_checked="yes", new_phone_number="06 12 55 44 33")).status_code == 303
    found = await portal.ops("identity").GetAccount(
        identity_pb2.GetAccountRequest(account_id=patient.account_id)
    )
    assert found.account.phone_number == "+33612554433"
    assert not await session_works(portal, patient)
    # A patient cannot reach the form's action at all.
    async with session(portal, await portal.patient()) as http:
        token = await csrf(http, "/account")
        refused = await http.post(
            "/dpo/provisional-credentials",
            data={"csrf_token": token, "form_key": "x" * 12, "account_id": patient.account_id,
                  "identity_checked": "yes", "new_phone_number": "0612000000"},
        )  # fmt: skip
        assert refused.status_code in (303, 403, 404)
    found = await portal.ops("identity").GetAccount(
        identity_pb2.GetAccountRequest(account_id=patient.account_id)
    )
    assert found.account.phone_number == "+33612554433"
