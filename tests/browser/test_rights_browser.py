"""Data-subject rights in a real browser (issue 10): a patient opens "Mes données" and
files an access request from their account; the erasure page is reached only after a
fresh code; the DPO logs in (SMS code then TOTP), finds the request on the desk sorted by
deadline, opens it and records the answer; the patient then reads the answer. Every new
page is checked with axe-core and kept as a screenshot in tests/artifacts/.

The rights-request workflow is not run here (no Temporal in the browser tests): the desk
records the answer in identity directly, as it does when the workflow cannot be reached;
tests/gateway/test_rights_pages.py runs the same pages with the workflow."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, expect
from secondopinion.identity.v1 import identity_pb2, lifecycle_pb2

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from tests.browser.conftest import axe_violations, login, screenshot
from tests.gateway.support import Portal


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


@pytest.mark.req("GDPR-01")
@pytest.mark.req("GDPR-03")
@pytest.mark.req("GDPR-07")
@pytest.mark.req("GDPR-08")
async def test_a_patient_files_an_access_request_and_reads_the_dpos_answer(
    portal: Portal, browser: Browser
) -> None:
    patient = await portal.patient("rights.browser@example.org")
    officer = await portal.staff(identity_pb2.ACCOUNT_ROLE_DPO, "dpo.browser@example.org", "Délégué")
    await portal.enrol_totp(officer)

    person_context = await browser.new_context(locale="fr-FR")
    person = await person_context.new_page()
    dpo_context = await browser.new_context(locale="fr-FR")
    desk = await dpo_context.new_page()
    try:
        # The patient: "Mes données" from the navigation, the form, the request's page.
        await login(person, portal, patient.email)
        await person.get_by_role("link", name="Mes données").click()
        await expect(person.get_by_role("heading", level=1)).to_have_text("Mes données")
        assert await axe_violations(person) == []
        await screenshot(person, "rights-my-data")
        form = person.get_by_test_id("rights-form")
        await form.get_by_label("Accès à mes données").check()
        await form.get_by_label("Votre demande").fill("Je souhaite recevoir la liste de mes données.")
        await form.get_by_role("button", name="Envoyer la demande au DPO").click()
        await expect(person.get_by_role("status")).to_contain_text("Votre demande a été enregistrée")
        await expect(person.get_by_test_id("rights-status")).to_have_text("Reçue")
        match = re.search(r"/privacy/requests/([0-9a-f-]{36})", person.url)
        assert match, person.url
        request_id = match.group(1)
        assert "liste de mes données" not in person.url  # only the id travels in the URL
        assert await axe_violations(person) == []
        await screenshot(person, "rights-request-filed")

        # Erasure: a fresh code first, then its own page.
        await person.goto(portal.url + "/privacy")
        await person.get_by_role("link", name="Demander l'effacement de mes données").click()
        await person.wait_for_url("**/step-up?next=*")
        before = await portal.sms_count()
        await person.get_by_role("button", name="Recevoir un code").click()
        await person.get_by_label("Code reçu par SMS").fill(await portal.latest_sms_code(after=before))
        await person.get_by_role("button", name="Valider").click()
        await person.wait_for_url("**/privacy/erasure")
        await expect(person.get_by_role("heading", level=1)).to_have_text("Effacement")
        assert await axe_violations(person) == []
        await screenshot(person, "rights-erasure")

        # The DPO: the desk, the request, the answer.
        await login(desk, portal, officer.email, officer.totp_secret)
        await desk.get_by_role("link", name="Demandes d'exercice de droits").click()
        await expect(desk.get_by_role("heading", level=1)).to_have_text("Demandes d'exercice de droits")
        row = desk.locator(f'[data-request-id="{request_id}"]')
        await expect(row).to_contain_text("Accès à mes données")
        await expect(row).to_contain_text("votre espace en ligne")
        workflow = row.get_by_role("link", name=re.compile("Voir le workflow"))
        assert await workflow.get_attribute("href") == (
            f"http://127.0.0.1:8233/namespaces/default/workflows/rights-request-{request_id}"
        )
        assert await axe_violations(desk) == []
        await screenshot(desk, "dpo-desk")
        await row.get_by_role("link", name=request_id[:8].upper(), exact=True).click()
        await expect(desk.get_by_text("Je souhaite recevoir la liste de mes données.")).to_be_visible()
        assert await axe_violations(desk) == []
        await screenshot(desk, "dpo-request")
        answer = desk.get_by_test_id("answer-form")
        await answer.get_by_label("Réponse donnée").select_option("granted")
        await answer.get_by_role("button", name="Enregistrer la réponse").click()
        await expect(desk.get_by_role("status")).to_have_text("Réponse enregistrée.")
        await expect(desk.get_by_test_id("rights-outcome")).to_contain_text("Demande satisfaite")
        await screenshot(desk, "dpo-request-answered")
        saved = await portal.worker("identity").GetRightsRequest(
            identity_pb2.GetRightsRequestRequest(request_id=request_id)
        )
        assert saved.rights_request.outcome == lifecycle_pb2.RIGHTS_REQUEST_OUTCOME_GRANTED

        # The patient reads the answer.
        await person.goto(f"{portal.url}/privacy/requests/{request_id}")
        await expect(person.get_by_test_id("rights-status")).to_have_text("Répondue")
        await expect(person.get_by_test_id("rights-outcome")).to_contain_text("Demande satisfaite")
        assert await axe_violations(person) == []
        await screenshot(person, "rights-request-answered")
    finally:
        await person_context.close()
        await dpo_context.close()
