"""Doctor and referring-doctor pages in a real browser: a referent doctor declines an offer
with a reason and asks for a new copy of an incomplete document; a referring doctor invites
a patient (name and email only), and the invitation is in the development outbox."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from playwright.async_api import Browser, expect
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2
from secondopinion.notifications.v1 import notifications_pb2

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from tests.browser.conftest import axe_violations, login, screenshot
from tests.gateway.support import Person, Portal
from tests.gateway.test_portal_security import CASE, _upload


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


async def _case(portal: Portal, patient: Person, key: str) -> str:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        created = await http.post(
            "/api/v1/cases", json=CASE, headers={**patient.bearer, "Idempotency-Key": key}
        )
    assert created.status_code == 201, created.text
    case_id = str(created.json()["case_id"])
    await portal.set_status(case_id, "awaiting_assignment")
    return case_id


@pytest.mark.req("DOC-01")
@pytest.mark.req("CASE-05")
async def test_a_doctor_declines_an_offer_and_asks_for_a_new_copy_of_a_document(
    portal: Portal, browser: Browser
) -> None:
    patient = await portal.patient("flagged.patient@example.org")
    declined_case = await _case(portal, patient, "staff-declined")
    accepted_case = await _case(portal, patient, "staff-accepted")
    document_id = await _upload(portal, patient.account_id, accepted_case)
    await portal.scanned_clean(document_id)
    doctor = await portal.staff(identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "dr.refus@example.org", "Dr Refus")
    await portal.enrol_totp(doctor)
    declined_offer = await portal.offer(declined_case, doctor)
    context = await browser.new_context(locale="fr-FR")
    page = await context.new_page()
    try:
        await login(page, portal, doctor.email, doctor.totp_secret)
        offer = page.get_by_test_id("offer")
        await expect(offer).to_have_count(1)
        await offer.get_by_label("Motif du refus").select_option("conflict_of_interest")
        await offer.get_by_role("button", name="Refuser").click()
        await expect(page.get_by_test_id("offer")).to_have_count(0)
        found = await portal.worker("matching").GetOffer(
            matching_pb2.GetOfferRequest(offer_id=declined_offer)
        )
        assert found.offer.status == matching_pb2.OFFER_STATUS_DECLINED
        assert found.offer.decline_reason == matching_pb2.DECLINE_REASON_CONFLICT_OF_INTEREST

        await portal.offer(accepted_case, doctor)
        await page.reload()
        await page.get_by_test_id("offer").get_by_role("button", name="Accepter", exact=True).click()
        assignments = await portal.worker("matching").ListAssignments(
            matching_pb2.ListAssignmentsRequest(case_id=accepted_case)
        )
        await portal.assign(accepted_case, doctor, assignments.assignments[0].assignment_id)
        await page.goto(f"{portal.url}/doctor/cases/{accepted_case}")
        document = page.locator("article.document", has_text="bilan.pdf")
        await document.get_by_label("Motif").select_option("incomplete")
        await document.get_by_role("button", name="Demander une nouvelle copie").click()
        await expect(page.locator("article.document", has_text="bilan.pdf")).to_contain_text(
            "nouvelle copie demandée"
        )
        await screenshot(page, "doctor-flagged-document")
        stored = await portal.worker("dossier").GetDocument(
            dossier_pb2.GetDocumentRequest(document_id=document_id)
        )
        assert stored.document.status == dossier_pb2.DOCUMENT_STATUS_FLAGGED
        assert stored.document.flag_reason == dossier_pb2.DOCUMENT_FLAG_REASON_INCOMPLETE
    finally:
        await context.close()


@pytest.mark.req("ACC-15")
@pytest.mark.req("SEC-08")
async def test_a_referring_doctor_invites_a_patient(portal: Portal, browser: Browser) -> None:
    referrer = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERRING_DOCTOR, "dr.traitant@example.org", "Dr Traitant"
    )
    await portal.enrol_totp(referrer)
    context = await browser.new_context(locale="fr-FR")
    page = await context.new_page()
    try:
        await login(page, portal, referrer.email, referrer.totp_secret)
        await expect(page).to_have_url(re.compile("/referrals"))
        assert await axe_violations(page) == []
        # Neither an email nor a phone: refused with a clear message.
        await page.get_by_label("Prénom").fill("Jeanne")
        await page.get_by_label("Nom", exact=True).fill("Invitée")
        await page.get_by_role("button", name="Inviter le patient").click()
        await expect(page.get_by_role("alert")).to_contain_text("e-mail ou un téléphone")
        await page.go_back()
        await page.get_by_label("Prénom").fill("Jeanne")
        await page.get_by_label("Nom", exact=True).fill("Invitée")
        await page.get_by_label("Adresse e-mail").fill("jeanne.invitee@example.org")
        await page.get_by_role("button", name="Inviter le patient").click()
        await expect(page).to_have_url(re.compile(r"/referrals\?invited=1$"))
        await expect(page.get_by_text(re.compile("Jeanne Invitée · invité"))).to_be_visible()
        await screenshot(page, "referrer-invited")
    finally:
        await context.close()
    # The invitation, in the development outbox, to the address given.
    for _ in range(50):
        outbox = await portal.ops("notifications").ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_EMAIL, page_size=100)
        )
        sent = [m for m in outbox.messages if m.recipient == "jeanne.invitee@example.org"]
        if sent:
            break
        await asyncio.sleep(0.1)
    assert len(sent) == 1, [(m.recipient, m.template) for m in outbox.messages]
    assert "/signup" in sent[0].rendered_text or "http" in sent[0].rendered_text
