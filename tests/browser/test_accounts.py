"""Account pages in a real browser: a staff member's first login (authenticator enrolment
with a typed key, recovery codes shown once, then the password change a breach forces),
filing for a minor with the proof uploaded first and the notice that fits, a minor from 15
attached with their own signed consent as a second file (ACC-13), a coverage
code instead of a payment, withdrawing the health-data consent (the account closes), and
closing one's account."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime

import pyotp
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.async_api import Browser, BrowserContext, FilePayload, Page, expect
from secondopinion.billing.v1 import billing_pb2
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.identity.v1 import identity_pb2

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.shared.auth import Role
from tests.browser.conftest import axe_violations, login, screenshot
from tests.dossier.samples import pdf
from tests.gateway.support import PASSWORD, Portal

NEW_PASSWORD = "Orage-Printemps-2027"


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    """Every test logs people in from the same address: each starts with fresh budgets."""
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(locale="fr-FR")
    yield opened
    await opened.close()


async def new_request(page: Page, portal: Portal, whom: str = "Pour moi-même") -> str:
    await page.goto(portal.url + "/cases/new")
    await page.get_by_label(whom).check()
    await page.get_by_label("Domaine thérapeutique").select_option("cardiology")
    await page.get_by_role("button", name="Envoyer").click()
    await expect(page.get_by_test_id("case-status")).to_be_visible()
    return page.url.rsplit("/", 1)[-1].split("?")[0]


async def account_status(portal: Portal, account_id: str) -> int:
    found = await portal.ops("identity").GetAccount(identity_pb2.GetAccountRequest(account_id=account_id))
    return int(found.account.status)


@pytest.mark.req("ACC-10")
@pytest.mark.req("ACC-12")
async def test_staff_first_login_enrols_the_authenticator_then_changes_a_breached_password(
    portal: Portal, context: BrowserContext
) -> None:
    doctor = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR, "dr.nouveau@example.org", "Dr Nouveau"
    )
    stamp = Timestamp()
    stamp.FromDatetime(datetime.now(UTC))
    await portal.ops("identity").FlagPasswordBreach(
        identity_pb2.FlagPasswordBreachRequest(
            idempotency_key="breach-nouveau", account_id=doctor.account_id, detected_at=stamp
        )
    )
    page = await context.new_page()
    await login(page, portal, doctor.email)  # SMS code only: no authenticator yet

    # First login: the authenticator comes first (ACC-12), with a key typed by hand.
    await expect(page).to_have_url(re.compile("/account/totp$"))
    assert await axe_violations(page) == []
    uri = await page.get_by_test_id("totp-uri").inner_text()
    assert uri.startswith("otpauth://totp/")
    key = (await page.get_by_test_id("totp-key").inner_text()).replace(" ", "")
    assert key and key in uri
    await page.goto(portal.url + "/doctor")  # nothing else opens before enrolment
    await expect(page).to_have_url(re.compile("/account/totp$"))
    key = (await page.get_by_test_id("totp-key").inner_text()).replace(" ", "")
    await page.get_by_label("Code de votre application d'authentification").fill("000000")
    await page.get_by_role("button", name="Valider").click()
    await expect(page.get_by_role("alert")).to_contain_text("ne correspond pas")
    await page.get_by_label("Code de votre application d'authentification").fill(pyotp.TOTP(key).now())
    await page.get_by_role("button", name="Valider").click()
    codes = page.get_by_test_id("recovery-codes").locator("li")
    await expect(codes.first).to_be_visible()
    assert await codes.count() >= 5
    await screenshot(page, "staff-recovery-codes")
    await page.get_by_role("link", name="Continuer").click()

    # Then the password a breach flagged must change before anything else (ACC-10).
    await expect(page).to_have_url(re.compile(r"/account/password\?forced=1$"))
    await expect(page.get_by_role("status")).to_contain_text("nouveau mot de passe")
    assert await axe_violations(page) == []
    await page.get_by_label("Mot de passe actuel").fill(PASSWORD)
    await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("Confirmez le nouveau mot de passe").fill(NEW_PASSWORD + "x")
    await page.get_by_role("button", name="Changer le mot de passe").click()
    await expect(page.get_by_role("alert")).to_contain_text("pas identiques")
    await page.get_by_label("Mot de passe actuel").fill("Pas-Le-Bon-2026")
    await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("Confirmez le nouveau mot de passe").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Changer le mot de passe").click()
    await expect(page.get_by_role("alert")).to_contain_text("incorrect")
    await page.get_by_label("Mot de passe actuel").fill(PASSWORD)
    await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("Confirmez le nouveau mot de passe").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Changer le mot de passe").click()
    await expect(page).to_have_url(re.compile("/doctor"))
    await expect(page.get_by_role("alert")).to_contain_text("ne traite pas les urgences")

    # Both are recorded by identity: the factor is enrolled, the new password is the one.
    account = await portal.ops("identity").GetAccount(
        identity_pb2.GetAccountRequest(account_id=doctor.account_id)
    )
    assert account.account.totp_enrolled and not account.account.must_change_password
    started = await portal._stub("identity", "gateway").StartLogin(
        identity_pb2.StartLoginRequest(
            idempotency_key="relogin-nouveau", email=doctor.email, password=NEW_PASSWORD
        )
    )
    assert identity_pb2.SECOND_FACTOR_KIND_TOTP in started.required_factors


@pytest.mark.req("ACC-03")
@pytest.mark.req("ACC-13")
@pytest.mark.req("CNS-04")
async def test_a_parent_files_for_a_minor_with_the_proof_and_the_notice_that_fits(
    portal: Portal, context: BrowserContext
) -> None:
    parent = await portal.patient("parent@example.org")
    page = await context.new_page()
    await login(page, portal, parent.email)
    await page.goto(portal.url + "/cases/new")
    await page.get_by_role("link", name="Ajouter une personne pour qui je dépose").click()
    assert await axe_violations(page) == []
    ten_years_ago = date.today().replace(year=date.today().year - 10).isoformat()
    await page.get_by_label("Parent d'un enfant mineur").check()
    await page.get_by_label("Prénom").fill("Léo")
    await page.get_by_label("Nom", exact=True).fill("Petit")
    await page.get_by_label("Date de naissance").fill(ten_years_ago)
    await page.get_by_label("Justificatif").set_input_files(
        files=FilePayload(name="livret-de-famille.pdf", mimeType="application/pdf", buffer=pdf())
    )
    # Under 15 the parent guarantees the child was informed: refused without it, clearly.
    await page.get_by_role("button", name="Ajouter", exact=True).click()
    await expect(page.locator(".upload-error")).to_contain_text("under 15")
    await page.get_by_label(re.compile("moins de 15 ans")).check()
    await page.get_by_role("button", name="Ajouter", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("La personne a été ajoutée")
    listed = await portal.as_person("identity", parent.account_id, Role.PATIENT).ListBeneficiaries(
        identity_pb2.ListBeneficiariesRequest()
    )
    assert [(b.first_name, b.kind) for b in listed.beneficiaries] == [
        ("Léo", identity_pb2.BENEFICIARY_KIND_MINOR)
    ]
    assert listed.beneficiaries[0].proof_document_id

    case_id = await new_request(page, portal, whom="Léo Petit (Parent d'un enfant mineur)")
    case = await portal.worker("dossier").GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))
    assert case.case.beneficiary_id == listed.beneficiaries[0].beneficiary_id
    assert case.case.filing_capacity == dossier_pb2.FILING_CAPACITY_LEGAL_REPRESENTATIVE_OF_MINOR
    # The notice of the legal representative, not the one for oneself.
    await page.get_by_role("link", name="Notice d'information et consentements").click()
    await expect(page.get_by_text("Notice du représentant légal.")).to_be_visible()
    await screenshot(page, "parent-notice")


@pytest.mark.req("ACC-13")
async def test_a_parent_attaches_a_minor_of_16_with_the_minor_s_own_consent(
    portal: Portal, context: BrowserContext
) -> None:
    parent = await portal.patient("parent16@example.org", phone="+33612340016")
    as_parent = portal.as_person("identity", parent.account_id, Role.PATIENT)
    page = await context.new_page()
    await login(page, portal, parent.email)
    await page.goto(portal.url + "/account/beneficiaries")
    assert await axe_violations(page) == []
    sixteen = date(date.today().year - 16, 1, 1).isoformat()  # 16 on any day of this year
    await page.get_by_label("Parent d'un enfant mineur").check()
    await page.get_by_label("Prénom").fill("Inès")
    await page.get_by_label("Nom", exact=True).fill("Grand")
    await page.get_by_label("Date de naissance").fill(sixteen)
    await page.get_by_label("Justificatif").set_input_files(
        files=FilePayload(name="livret-de-famille.pdf", mimeType="application/pdf", buffer=pdf())
    )
    # From 15 the minor consents alone: the parent's attestation is not enough without
    # the minor's signed consent, and the refusal says what is missing, in French.
    await page.get_by_label(re.compile("moins de 15 ans")).check()
    await page.get_by_role("button", name="Ajouter", exact=True).click()
    await expect(page.locator(".upload-error")).to_contain_text(
        "À partir de 15 ans, l'enfant consent lui-même"
    )
    listed = await as_parent.ListBeneficiaries(identity_pb2.ListBeneficiariesRequest())
    assert list(listed.beneficiaries) == []

    # The second file is held to the same limit as the first, while it streams in.
    consent_input = page.get_by_label(re.compile("Consentement signé de l'enfant"))
    too_large = b"%PDF-1.4\n" + b"0" * (3 * 1024 * 1024)
    await consent_input.set_input_files(
        files=FilePayload(name="consentement.pdf", mimeType="application/pdf", buffer=too_large)
    )
    await page.get_by_role("button", name="Ajouter", exact=True).click()
    await expect(page.locator(".upload-error")).to_contain_text("trop volumineux")
    await consent_input.set_input_files(
        files=FilePayload(name="consentement-ines.pdf", mimeType="application/pdf", buffer=pdf())
    )
    await page.get_by_role("button", name="Ajouter", exact=True).click()
    await expect(page.get_by_role("status")).to_contain_text("La personne a été ajoutée")
    listed = await as_parent.ListBeneficiaries(identity_pb2.ListBeneficiariesRequest())
    [minor] = listed.beneficiaries
    assert (minor.first_name, minor.kind) == ("Inès", identity_pb2.BENEFICIARY_KIND_MINOR)
    assert minor.minor_consent_mode == identity_pb2.MINOR_CONSENT_MODE_MINOR_OWN_CONSENT
    assert minor.proof_document_id and minor.minor_consent_document_id
    assert minor.minor_consent_document_id != minor.proof_document_id
    # Both files are the parent's account-level documents, each with its own purpose.
    dossier = portal.as_person("dossier", parent.account_id, Role.PATIENT)
    proof = await dossier.GetDocument(dossier_pb2.GetDocumentRequest(document_id=minor.proof_document_id))
    consent = await dossier.GetDocument(
        dossier_pb2.GetDocumentRequest(document_id=minor.minor_consent_document_id)
    )
    assert proof.document.purpose == dossier_pb2.DOCUMENT_PURPOSE_PROOF_OF_REPRESENTATION
    assert consent.document.purpose == dossier_pb2.DOCUMENT_PURPOSE_MINOR_CONSENT
    assert consent.document.file_name == "consentement-ines.pdf"
    assert not consent.document.case_id


@pytest.mark.req("ACC-13")
async def test_the_missing_minor_consent_is_explained_in_english(
    portal: Portal, context: BrowserContext
) -> None:
    parent = await portal.patient("parent17@example.org", phone="+33612340017")
    page = await context.new_page()
    await login(page, portal, parent.email)
    await context.add_cookies([{"name": "so_lang", "value": "en", "url": portal.url}])  # chosen by the person
    await page.goto(portal.url + "/account/beneficiaries")
    await page.get_by_label("Parent of a minor").check()
    await page.get_by_label("First name").fill("Tom")
    await page.get_by_label("Last name").fill("Grand")
    await page.get_by_label("Date of birth").fill(date(date.today().year - 17, 1, 1).isoformat())
    await page.get_by_label("Proof", exact=True).set_input_files(
        files=FilePayload(name="proof.pdf", mimeType="application/pdf", buffer=pdf())
    )
    await page.get_by_role("button", name="Add", exact=True).click()
    await expect(page.locator(".upload-error")).to_contain_text("From 15, the child consents alone")
    listed = await portal.as_person("identity", parent.account_id, Role.PATIENT).ListBeneficiaries(
        identity_pb2.ListBeneficiariesRequest()
    )
    assert list(listed.beneficiaries) == []


@pytest.mark.req("BIL-01")
@pytest.mark.req("CASE-11")
async def test_a_coverage_code_replaces_the_payment(portal: Portal, context: BrowserContext) -> None:
    covered = await portal.patient("covered@example.org")
    page = await context.new_page()
    await login(page, portal, covered.email)
    case_id = await new_request(page, portal)
    await page.goto(f"{portal.url}/cases/{case_id}/pay")
    await page.get_by_label(re.compile("Code de prise en charge")).fill("NOT-A-REAL-CODE")
    await page.get_by_role("button", name="Utiliser ce code").click()
    await expect(page.get_by_role("alert")).to_contain_text("pas valable")
    await page.goto(f"{portal.url}/cases/{case_id}/pay")
    await page.get_by_label(re.compile("Code de prise en charge")).fill(await portal.coverage_code())
    await page.get_by_role("button", name="Utiliser ce code").click()
    await expect(page).to_have_url(re.compile(rf"/cases/{case_id}\?covered=1$"))
    order = await portal.ops("billing").GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))
    assert order.order.status == billing_pb2.ORDER_STATUS_COVERED
    await page.goto(f"{portal.url}/cases/{case_id}/pay")
    await expect(page.get_by_role("button", name="Payer par carte")).to_have_count(0)


@pytest.mark.req("CNS-06")
@pytest.mark.req("CNS-02")
async def test_withdrawing_the_health_data_consent_closes_the_account(
    portal: Portal, context: BrowserContext
) -> None:
    person = await portal.patient("withdraws@example.org")
    page = await context.new_page()
    await login(page, portal, person.email)
    case_id = await new_request(page, portal)
    await page.goto(f"{portal.url}/cases/{case_id}/consents")
    await page.get_by_label("J'ai lu la notice d'information").check()
    await page.get_by_label(re.compile("traitement de mes données de santé")).check()
    await page.get_by_role("button", name="Valider").click()
    await page.goto(portal.url + "/account")
    withdrawal = page.locator("form", has_text="Traitement des données de santé")
    await expect(withdrawal).to_contain_text("clôture")
    await withdrawal.get_by_label("Je confirme").check()
    await withdrawal.get_by_role("button", name="Retirer").click()
    await expect(page.get_by_role("status")).to_contain_text("Votre compte est clôturé")
    assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_CLOSED
    assert "so_session" not in {c["name"] for c in await context.cookies()}
    await page.goto(portal.url + "/dashboard")
    await expect(page).to_have_url(re.compile("/login$"))


@pytest.mark.req("ACC-11")
async def test_a_person_closes_their_account(portal: Portal, context: BrowserContext) -> None:
    person = await portal.patient("leaves@example.org")
    page = await context.new_page()
    await login(page, portal, person.email)
    case_id = await new_request(page, portal)
    await page.goto(portal.url + "/account")
    closure = page.locator("form", has_text="Clôturer mon compte")
    await closure.get_by_role("button", name="Clôturer mon compte").click()  # not confirmed: nothing happens
    assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_ACTIVE
    await closure.get_by_label("Je confirme").check()
    await closure.get_by_role("button", name="Clôturer mon compte").click()
    await expect(page.get_by_role("status")).to_contain_text("archivées, pas supprimées")
    assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_CLOSED
    # Archived, not deleted: the case is still held by the dossier.
    kept = await portal.worker("dossier").GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))
    assert kept.case.case_id == case_id
    # The closed account no longer logs in.
    await page.goto(portal.url + "/login")
    await page.get_by_label("Adresse e-mail").fill(person.email)
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").last.click()
    await expect(page.get_by_role("alert")).to_be_visible()
    await expect(page).to_have_url(re.compile("/login$"))
