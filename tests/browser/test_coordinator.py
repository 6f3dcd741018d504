"""A habilitated coordinator in a real browser: login with the SMS code then TOTP, the
escalated cases and those at risk of missing their deadline, the link to each case in the
Temporal UI, a document received by post, a form filled in for the patient under the
personal-assistant mandate (traced in the dossier's access log with that purpose), and
the abuse-report queue.

The case workflow is not driven here: the statuses and deadlines it sets are set with
direct gRPC calls under the worker's identity, exactly the RPCs it calls."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import pytest
from playwright.async_api import Browser, FilePayload, expect
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.shared.auth import Role
from tests.browser.conftest import axe_violations, login, screenshot
from tests.dossier.samples import pdf
from tests.gateway.support import Person, Portal, ts
from workflows.case.models import case_workflow_id

CASE = {
    "filing_capacity": "self",
    "therapeutic_area": "cardiology",
    "purpose": "second_opinion",
    "doctor_choice_mode": "platform_chosen",
}


async def _new_case(portal: Portal, patient: Person, key: str) -> dossier_pb2.Case:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**patient.bearer, "Idempotency-Key": key}
        )
    assert created.status_code == 201, created.text
    found = await portal.worker("dossier").GetCase(
        dossier_pb2.GetCaseRequest(case_id=created.json()["case_id"])
    )
    case: dossier_pb2.Case = found.case
    return case


@pytest.mark.req("CASE-04")
@pytest.mark.req("CASE-14")
@pytest.mark.req("CASE-17")
@pytest.mark.req("SEC-05")
async def test_coordinator_handles_escalated_and_at_risk_cases(portal: Portal, browser: Browser) -> None:
    patient = await portal.patient("coordinated.patient@example.org")
    escalated = await _new_case(portal, patient, "coord-escalated")
    at_risk = await _new_case(portal, patient, "coord-at-risk")
    calm = await _new_case(portal, patient, "coord-calm")
    # As the workflow would: no doctor found in time (escalated); a review whose deadline
    # is hours away (at risk); a review with a week left (neither).
    await portal.set_status(escalated.case_id, "awaiting_assignment", "escalated")
    for case, left in ((at_risk, timedelta(hours=6)), (calm, timedelta(days=7))):
        await portal.set_status(case.case_id, "awaiting_assignment", "in_review")
        await portal.worker("dossier").SetCaseDeadline(
            dossier_pb2.SetCaseDeadlineRequest(
                idempotency_key=f"deadline-{case.case_id}", case_id=case.case_id,
                deadline_at=ts(datetime.now(UTC) + left),
                reason=dossier_pb2.DEADLINE_CHANGE_REASON_REVIEW_STARTED,
            )
        )  # fmt: skip
    # The doctor reviewing the case at risk sends a message the patient reports as abusive.
    doctor = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "dr.coord@example.org", "Dr Abusif"
    )
    await portal.worker("dossier").RecordAssignment(
        dossier_pb2.RecordAssignmentRequest(
            idempotency_key=f"assign-{at_risk.case_id}", case_id=at_risk.case_id,
            assignment_id=str(uuid.uuid4()), doctor_id=doctor.doctor_id, doctor_account_id=doctor.account_id,
        )
    )  # fmt: skip
    sent = await portal.as_person("dossier", doctor.account_id, Role.REFERENT_DOCTOR).SendMessage(
        dossier_pb2.SendMessageRequest(
            idempotency_key="coord-msg", case_id=at_risk.case_id, kind=dossier_pb2.MESSAGE_KIND_GENERAL,
            body="Message à modérer",
        )
    )  # fmt: skip
    dossier = portal.as_person("dossier", patient.account_id, Role.PATIENT)
    await dossier.ReportAbuse(
        dossier_pb2.ReportAbuseRequest(
            idempotency_key="coord-abuse", case_id=at_risk.case_id,
            target_kind=dossier_pb2.ABUSE_TARGET_KIND_MESSAGE, target_id=sent.message.message_id,
            category=dossier_pb2.ABUSE_CATEGORY_SPAM,
        )
    )  # fmt: skip

    coordinator = await portal.coordinator("coordination@example.org", "Camille Coordination")
    await portal.enrol_totp(coordinator)
    context = await browser.new_context(locale="fr-FR")
    page = await context.new_page()
    try:
        await login(page, portal, coordinator.email, coordinator.totp_secret)
        assert page.url.startswith(portal.url + "/coordination")
        await expect(page.get_by_role("alert")).to_contain_text("ne traite pas les urgences")

        # The escalated case and the case at risk, each in its own list (CASE-17).
        escalated_list = page.get_by_test_id("escalated")
        at_risk_list = page.get_by_test_id("at-risk")
        await expect(escalated_list).to_contain_text(escalated.case_reference)
        await expect(at_risk_list).to_contain_text(at_risk.case_reference)
        await expect(escalated_list).not_to_contain_text(at_risk.case_reference)
        await expect(at_risk_list).not_to_contain_text(calm.case_reference)
        assert calm.case_reference not in await page.content()
        assert await axe_violations(page) == []
        await screenshot(page, "coordinator-home")

        # The Temporal UI link of each case.
        expected = f"http://127.0.0.1:8233/namespaces/default/workflows/{case_workflow_id(escalated.case_id)}"
        workflow_link = escalated_list.get_by_role("link", name=re.compile("Voir le workflow"))
        assert await workflow_link.get_attribute("href") == expected
        await escalated_list.get_by_role("link", name=escalated.case_reference, exact=True).click()
        await expect(page.get_by_test_id("temporal-link")).to_have_attribute("href", expected)
        await expect(page.get_by_test_id("case-status")).to_have_text("Suivi par la coordination")

        # A document received by post (CASE-04), marked as such.
        await page.get_by_label("Reçu le").fill((date.today() - timedelta(days=2)).isoformat())
        await page.get_by_label("Document numérisé").set_input_files(
            files=FilePayload(name="courrier-cardiologue.pdf", mimeType="application/pdf", buffer=pdf())
        )
        await page.get_by_role("button", name="Ajouter le document reçu par courrier").click()
        await expect(
            page.get_by_text(re.compile(r"courrier-cardiologue\.pdf .*reçu par courrier"))
        ).to_be_visible()
        documents = await portal.worker("dossier").ListDocuments(
            dossier_pb2.ListDocumentsRequest(case_id=escalated.case_id)
        )
        postal = [d for d in documents.documents if d.file_name == "courrier-cardiologue.pdf"]
        assert len(postal) == 1 and postal[0].source == dossier_pb2.DOCUMENT_SOURCE_POSTAL_MAIL
        assert await axe_violations(page) == []
        await screenshot(page, "coordinator-case")

        # The pre-form filled in for the patient under the personal-assistant mandate (CASE-14).
        await page.get_by_role("link", name="Pré-formulaire").click()
        await page.locator("#f-patient-last_name").fill("Martin")
        await page.locator("#f-patient-first_name").fill("Louise")
        await page.locator("#f-patient-birth_date").fill("1950-03-02")
        await page.locator("#f-patient-sex").select_option("female")
        await page.locator("#f-sub_specialty").select_option("interventional")
        await page.locator("#f-preferred_language").select_option("fr")
        await page.get_by_role("button", name="Valider et envoyer le formulaire").click()
        await expect(page.get_by_test_id("case-status")).to_be_visible()
        answers = await portal.worker("dossier").GetFormAnswers(
            dossier_pb2.GetFormAnswersRequest(case_id=escalated.case_id, kind=dossier_pb2.FORM_KIND_PRE_FORM)
        )
        assert '"Louise"' in answers.answers.answers_json
        # Traced: the patient's access history names the mandate as the purpose.
        log = await dossier.ListAccessLog(dossier_pb2.ListAccessLogRequest(page_size=200))
        under_mandate = [
            e
            for e in log.entries
            if e.actor_account_id == coordinator.account_id
            and e.purpose == dossier_pb2.ACCESS_PURPOSE_PERSONAL_ASSISTANT
            and e.object_kind == dossier_pb2.ACCESS_OBJECT_KIND_FORM_ANSWERS
        ]
        assert under_mandate, [(e.actor_role, e.purpose, e.object_kind) for e in log.entries]

        # The abuse-report queue: the report is handled and leaves the queue.
        await page.get_by_role("link", name=re.compile("Retour")).click()
        report = page.get_by_test_id("abuse-report")
        await expect(report).to_contain_text("Spam")
        await report.get_by_label("Décision").select_option("content_hidden")
        await report.get_by_role("button").click()
        await expect(page.get_by_test_id("abuse-report")).to_have_count(0)
        resolved = await portal.as_person(
            "dossier", coordinator.account_id, Role.COORDINATOR
        ).ListAbuseReports(
            dossier_pb2.ListAbuseReportsRequest(status=dossier_pb2.ABUSE_REPORT_STATUS_RESOLVED, page_size=10)
        )
        assert [r.resolution for r in resolved.abuse_reports] == [dossier_pb2.ABUSE_RESOLUTION_CONTENT_HIDDEN]
        await screenshot(page, "coordinator-abuse-handled")
    finally:
        await context.close()


@pytest.mark.req("SEC-05")
async def test_a_coordinator_without_the_habilitation_sees_no_case(portal: Portal, browser: Browser) -> None:
    patient = await portal.patient("uncoordinated.patient@example.org")
    case = await _new_case(portal, patient, "coord-unhabilitated")
    await portal.set_status(case.case_id, "awaiting_assignment", "escalated")
    plain = await portal.staff(identity_pb2.ACCOUNT_ROLE_COORDINATOR, "plain.coord@example.org", "Plain")
    await portal.enrol_totp(plain)
    context = await browser.new_context(locale="fr-FR")
    page = await context.new_page()
    try:
        await login(page, portal, plain.email, plain.totp_secret)
        assert case.case_reference not in await page.content()
        response = await page.goto(f"{portal.url}/coordination/cases/{case.case_id}")
        assert response is not None and response.status == 404
    finally:
        await context.close()
