"""A patient and a referent doctor in a real browser, from sign-up to the delivered report
and the invoice: the notice and separate consents, the pre-form and the pathology form,
an upload with its progress bar, card payment through the PSP sandbox, the offer accepted
by the doctor (SMS then TOTP), a request for information and its answer, the report
written and submitted, then read by the patient behind a fresh code, and the invoice.

The case workflow is not driven here (its own tests run it on Temporal): its worker's
steps are made with direct gRPC calls under the worker's identity (status changes, the
offer, the assignment, the report's sealing, the invoices), exactly the RPCs it calls."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Browser, FilePayload, Page, expect
from secondopinion.identity.v1 import identity_pb2
from secondopinion.matching.v1 import matching_pb2

from services.billing.psp.sandbox import SUCCESS_CARD
from tests.browser.conftest import axe_violations, login, screenshot
from tests.dossier.samples import pdf
from tests.gateway.support import PASSWORD, Portal

QUESTION = "Faut-il opérer la valve mitrale maintenant ?"
REPORT = "Avis : une surveillance échographique à 6 mois est préférable à une chirurgie immédiate."


async def sign_up_and_log_in(page: Page, portal: Portal, email: str) -> None:
    await page.goto(portal.url + "/signup")
    await expect(page.get_by_text("(v2026.1)")).to_be_visible()
    assert await axe_violations(page) == []
    await page.get_by_label("Adresse e-mail").fill(email)
    await page.get_by_label("Téléphone mobile").fill("06 12 34 56 78")
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_label("Votre âge").fill("44")
    await page.get_by_label("J'ai lu et j'accepte").check()
    await page.get_by_role("button", name="Créer un compte").click()
    await expect(page.get_by_role("status")).to_contain_text("Compte créé")
    await login(page, portal, email.lower())


@pytest.mark.req("ACC-01")
@pytest.mark.req("ACC-05")
@pytest.mark.req("ACC-06")
@pytest.mark.req("ACC-12")
@pytest.mark.req("CASE-02")
@pytest.mark.req("CASE-03")
@pytest.mark.req("CASE-04")
@pytest.mark.req("CASE-05")
@pytest.mark.req("CASE-06")
@pytest.mark.req("CASE-07")
@pytest.mark.req("CASE-12")
@pytest.mark.req("CNS-01")
@pytest.mark.req("CNS-02")
@pytest.mark.req("CNS-04")
@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
@pytest.mark.req("BIL-08")
@pytest.mark.req("DOC-04")
@pytest.mark.req("SEC-08")
async def test_patient_from_sign_up_to_the_report_and_invoice_with_the_doctor(
    portal: Portal, browser: Browser
) -> None:
    patient_context = await browser.new_context(locale="fr-FR", accept_downloads=True)
    doctor_context = await browser.new_context(locale="fr-FR")
    page = await patient_context.new_page()
    doctor_page = await doctor_context.new_page()
    csp_errors: list[str] = []
    for p in (page, doctor_page):
        p.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        await sign_up_and_log_in(page, portal, "Camille.Patient@example.org")
        # The emergency warning greets every login (CASE-07); the session cookie is guarded.
        await expect(page.get_by_role("alert")).to_contain_text("ne traite pas les urgences")
        session = {c["name"]: c for c in await patient_context.cookies()}["so_session"]
        assert session["httpOnly"] and session["sameSite"] == "Lax"

        # A new request.
        await page.get_by_role("link", name="Nouvelle demande d'avis").click()
        assert await axe_violations(page) == []
        await page.get_by_label("Domaine thérapeutique").select_option("cardiology")
        await page.get_by_role("button", name="Envoyer").click()
        await expect(page.get_by_test_id("case-status")).to_have_text("Envoyée")
        case_id = page.url.rsplit("/", 1)[-1]
        assert re.fullmatch(r"[0-9a-f-]{36}", case_id)  # ids only in URLs, never health data
        await screenshot(page, "patient-case-checkout")

        # The notice that fits (filing for oneself) and each consent on its own (CNS-04).
        await page.get_by_role("link", name="Notice d'information et consentements").click()
        await expect(page.get_by_role("heading", name="Notice d'information (v2026.1)")).to_be_visible()
        assert await axe_violations(page) == []
        await page.get_by_label("J'ai lu la notice d'information").check()
        await page.get_by_label(re.compile("traitement de mes données de santé")).check()
        await page.get_by_label(re.compile("envoyé à mon médecin traitant")).check()
        await page.get_by_role("button", name="Valider").click()
        await expect(page.locator(".checklist li").first).to_contain_text("fait")

        # The pre-form, rendered from its JSON Schema definition.
        await page.get_by_role("link", name="Pré-formulaire").click()
        assert await axe_violations(page) == []
        await page.locator("#f-patient-last_name").fill("Martin")
        await page.locator("#f-patient-first_name").fill("Camille")
        await page.locator("#f-patient-birth_date").fill("1982-04-12")
        await page.locator("#f-patient-sex").select_option("female")
        await page.locator("#f-sub_specialty").select_option("interventional")
        await page.locator("#f-preferred_language").select_option("fr")
        await page.get_by_role("button", name="Valider et envoyer le formulaire").click()
        await expect(page.get_by_test_id("case-status")).to_be_visible()

        # The pathology form: a missing required answer is explained, then fixed.
        await page.get_by_role("link", name="Formulaire pathologie").click()
        await page.locator("#f-condition").select_option("valve_disease")
        await page.get_by_role("button", name="Valider et envoyer le formulaire").click()
        await expect(page.get_by_role("alert")).to_contain_text("Vérifiez le formulaire")
        await page.locator("#f-nyha_class").select_option("II")
        await page.locator("#f-question_for_doctors").fill(QUESTION)
        await page.get_by_role("checkbox", name="Breathlessness").check()
        await screenshot(page, "patient-pathology-form")
        await page.get_by_role("button", name="Valider et envoyer le formulaire").click()
        await expect(page.get_by_test_id("case-status")).to_be_visible()

        # An upload with its progress bar; a file over the limit is refused with a clear message.
        upload = page.get_by_label("Ajouter un document médical")
        await upload.set_input_files(
            files=FilePayload(
                name="trop-gros.pdf", mimeType="application/pdf", buffer=b"%PDF" + b"0" * 3_000_000
            )
        )
        await page.get_by_role("button", name="Envoyer le fichier").click()
        await expect(page.locator(".upload-error")).to_contain_text("trop volumineux")
        await upload.set_input_files(
            files=FilePayload(
                name="échographie cardiaque.pdf", mimeType="application/pdf", buffer=pdf(pages=2)
            )
        )
        await page.get_by_role("button", name="Envoyer le fichier").click()
        await expect(page.get_by_role("cell", name="échographie cardiaque.pdf")).to_be_visible()
        await page.get_by_label("Commentaires et questions pour les médecins").fill(
            "Merci de regarder l'échographie."
        )
        await page.get_by_role("button", name="Enregistrer", exact=True).click()

        # Payment by card on the PSP's page (BIL-02, BIL-06).
        await page.get_by_role("link", name="Paiement ou prise en charge").click()
        await expect(page.get_by_test_id("order-total")).to_contain_text("EUR")
        assert await axe_violations(page) == []
        await page.get_by_role("button", name="Payer par carte").click()
        await page.get_by_role("button", name="Continuer vers la page de paiement sécurisée").click()
        await page.get_by_label("Card number").fill(SUCCESS_CARD)
        await page.get_by_label("Expiry").fill("12/30")
        await page.get_by_label("CVV").fill("123")
        await page.get_by_role("button", name="Pay").click()
        await expect(page.get_by_test_id("payment-outcome")).to_contain_text("Paiement accepté")
        await expect(page.get_by_test_id("order-status")).to_have_text("Payée")
        assert "?payment=accepted" in page.url and portal.url in page.url
        await screenshot(page, "patient-paid")

        # The workflow's worker: paid, matching, an offer to the doctor.
        doctor = await portal.staff(
            identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "dr.durand@example.org", "Dr Claire Durand"
        )
        await portal.enrol_totp(doctor)
        await portal.set_status(case_id, "awaiting_payment", "awaiting_assignment")
        await portal.offer(case_id, doctor)

        # The doctor logs in with the SMS code then TOTP (ACC-12) and accepts the offer.
        await login(doctor_page, portal, doctor.email, doctor.totp_secret)
        await expect(doctor_page.get_by_role("alert")).to_contain_text("ne traite pas les urgences")
        await expect(doctor_page.get_by_test_id("offer")).to_contain_text("Cardiologie")
        assert await axe_violations(doctor_page) == []
        await screenshot(doctor_page, "doctor-offers")
        await doctor_page.get_by_test_id("offer").get_by_role("button", name="Accepter", exact=True).click()
        assignments = await portal.worker("matching").ListAssignments(
            matching_pb2.ListAssignmentsRequest(case_id=case_id)
        )
        await portal.assign(case_id, doctor, assignments.assignments[0].assignment_id)
        await doctor_page.reload()
        await expect(doctor_page.get_by_test_id("deadline")).not_to_have_text("—")
        await doctor_page.get_by_role("link", name=re.compile(r"SO-|[0-9A-F]{8}")).first.click()

        # The file: the forms and the document shown in the browser.
        await expect(doctor_page.get_by_text(QUESTION)).to_be_visible()
        assert await axe_violations(doctor_page) == []
        document = doctor_page.get_by_role("link", name="échographie cardiaque.pdf")
        if await document.count():  # clean after the malware scan: shown in the browser
            async with doctor_page.context.expect_page() as opened:
                await document.click()
            document_tab = await opened.value
            await document_tab.wait_for_load_state()
            await document_tab.close()
        else:  # no clamd on this machine: the document stays quarantined, and says so
            await expect(
                doctor_page.get_by_text("échographie cardiaque.pdf · en cours d'analyse")
            ).to_be_visible()
        await screenshot(doctor_page, "doctor-case")
        await doctor_page.get_by_label("Type de message").select_option("information_request")
        await doctor_page.get_by_label("Votre message").fill("Avez-vous une coronarographie récente ?")
        await doctor_page.get_by_role("button", name="Envoyer", exact=True).click()

        # The patient answers the request.
        await page.goto(f"{portal.url}/cases/{case_id}")
        await expect(page.get_by_text("Avez-vous une coronarographie récente ?")).to_be_visible()
        await page.get_by_label("Répondre à la demande du médecin").fill("Non, aucune.")
        await page.get_by_role("button", name="Envoyer", exact=True).click()

        # The doctor writes and submits the report; the worker seals and delivers it.
        await doctor_page.reload()
        await expect(doctor_page.get_by_text("Non, aucune.")).to_be_visible()
        await doctor_page.get_by_label("Compte-rendu").fill(REPORT)
        await doctor_page.get_by_role("button", name="Transmettre l'avis").click()
        await expect(doctor_page.get_by_role("status")).to_contain_text("Avis transmis")
        await portal.deliver_report(case_id)
        await portal.issue_invoices(case_id, doctor)
        await doctor_page.reload()
        await expect(doctor_page.get_by_test_id("report-sealed")).to_be_visible()

        # The patient reads the report behind a fresh code (ACC-06).
        await page.goto(f"{portal.url}/cases/{case_id}")
        await expect(page.get_by_test_id("case-status")).to_have_text("Avis disponible")
        await page.get_by_role("link", name=re.compile("Lire l'avis")).click()
        await expect(page.get_by_role("heading", name="Confirmation par code")).to_be_visible()
        before = await portal.sms_count()
        await page.get_by_role("button", name="Recevoir un code").click()
        await page.get_by_label("Code reçu par SMS").fill(await portal.latest_sms_code(after=before))
        await page.get_by_role("button", name="Valider").click()
        await expect(page.get_by_test_id("report")).to_contain_text(REPORT)
        assert await axe_violations(page) == []
        await screenshot(page, "patient-report")

        # The invoices, downloaded from the account (BIL-08).
        await page.get_by_role("link", name="Mes factures").click()
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name=re.compile("Télécharger")).first.click()
        download = await download_info.value
        path = await download.path()
        assert path is not None and path.read_bytes()[:4] == b"%PDF"
        assert download.suggested_filename.endswith(".pdf")

        # The texts and consents given stay readable from the account (CNS-02).
        await page.get_by_role("link", name="Mon compte").click()
        evidence = page.get_by_test_id("evidence")
        await expect(evidence).to_contain_text("Traitement des données de santé")
        await expect(evidence).to_contain_text("Envoi de l'avis au médecin traitant")
        await page.get_by_role("link", name=re.compile("Notice d'information v2026.1")).first.click()
        await expect(page.get_by_text("version de test")).to_be_visible()
        await page.goto(portal.url + "/account/access-log")
        await expect(page.get_by_role("cell", name=re.compile("Médecin référent")).first).to_be_visible()
        await screenshot(page, "patient-access-log")

        # SEC-08: no SMS or email carried any health data.
        for text in await portal.outbox_texts():
            for secret in (QUESTION, REPORT, "échographie", "valve", "Cardiologie", "cardiology"):
                assert secret not in text
        assert csp_errors == []
    finally:
        await patient_context.close()
        await doctor_context.close()
