"""Lost, stolen or forgotten credentials in a real browser (ACC-08): from the login page's
"Mot de passe oublié ?" to the emailed link, clicked from another site as in a webmail
(the token leaves the address bar at once and no later request carries it, not even as a
referrer), the SMS code and the new password, then the login; declaring a loss or theft
from "Mon compte" logs the person out everywhere. A referring doctor's invitation, opened
from an email, signs the person up with its token (ACC-15). Every new page passes axe-core."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Request, expect
from secondopinion.identity.v1 import identity_pb2

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.shared.auth import Role
from tests.browser.conftest import axe_violations, login, screenshot
from tests.gateway.support import PASSWORD, Portal
from tests.gateway.test_password_reset_pages import LINK, RESET_EMAIL, emailed, invite

NEW_PASSWORD = "Orage-Printemps-2027"


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    opened = await browser.new_context(locale="fr-FR")
    yield opened
    await opened.close()


async def no_violations(page: Page, name: str) -> None:
    await screenshot(page, name)
    assert await axe_violations(page) == [], name


@pytest.mark.req("ACC-08")
async def test_a_forgotten_password_is_reset_from_the_emailed_link(
    portal: Portal, context: BrowserContext
) -> None:
    person = await portal.patient(f"oubli-{uuid.uuid4().hex[:8]}@example.org")
    page = await context.new_page()
    await page.goto(portal.url + "/login")
    await page.get_by_role("link", name="Mot de passe oublié ?").click()
    await expect(page).to_have_url(re.compile("/password-reset$"))
    await expect(page.get_by_label("Adresse e-mail")).to_be_focused()
    await no_violations(page, "password-reset")
    await page.get_by_label("Adresse e-mail").fill(person.email)
    await page.get_by_role("button", name="Recevoir le lien").click()
    await expect(page.get_by_test_id("reset-sent")).to_contain_text("Si un compte existe pour cette adresse")
    await no_violations(page, "password-reset-sent")
    token = await emailed(portal, RESET_EMAIL, person.email, LINK)

    # The link, clicked from another site (a webmail): a fresh tab with the email's link.
    requests: list[Request] = []
    mail = await context.new_page()
    mail.on("request", lambda request: requests.append(request))
    await mail.set_content(f'<a href="{portal.url}/password-reset?token={token}">Choisir un mot de passe</a>')
    await mail.get_by_role("link", name="Choisir un mot de passe").click()
    await expect(mail).to_have_url(portal.url + "/password-reset/new")
    await no_violations(mail, "password-reset-link")
    await mail.get_by_role("button", name="Recevoir le code par SMS").click()
    await expect(mail.get_by_label("Code reçu par SMS")).to_be_visible()
    await expect(mail.get_by_label("Code reçu par SMS")).to_be_focused()
    await no_violations(mail, "password-reset-code")
    code = await portal.latest_sms_code()

    # A wrong code first: said clearly, in an alert, and the form stays usable.
    await mail.get_by_label("Code reçu par SMS").fill("000000" if code != "000000" else "111111")
    await mail.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await mail.get_by_label("Confirmez le nouveau mot de passe").fill(NEW_PASSWORD)
    await mail.get_by_role("button", name="Enregistrer le nouveau mot de passe").click()
    await expect(mail.get_by_role("alert")).to_contain_text("Code incorrect ou expiré")
    await no_violations(mail, "password-reset-wrong-code")
    await mail.get_by_label("Code reçu par SMS").fill(code)
    await mail.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await mail.get_by_label("Confirmez le nouveau mot de passe").fill(NEW_PASSWORD)
    await mail.get_by_role("button", name="Enregistrer le nouveau mot de passe").click()
    await expect(mail).to_have_url(portal.url + "/login?reset=done")
    await expect(mail.get_by_test_id("reset-done")).to_contain_text("compte est débloqué")
    await no_violations(mail, "password-reset-done")

    # Only the link's own request held the token: no later URL, no referrer.
    holding = [r for r in requests if token in r.url or token in (await r.all_headers()).get("referer", "")]
    assert [r.url for r in holding] == [f"{portal.url}/password-reset?token={token}"]
    assert token not in mail.url

    # The new password opens the account.
    before = await portal.sms_count()
    await mail.get_by_label("Adresse e-mail").fill(person.email)
    await mail.get_by_label("Mot de passe", exact=True).fill(NEW_PASSWORD)
    await mail.get_by_role("button", name="Se connecter").last.click()
    await expect(mail).to_have_url(re.compile("/login/code$"))
    await mail.get_by_label("Code reçu par SMS").fill(await portal.latest_sms_code(after=before))
    await mail.get_by_role("button", name="Valider").click()
    await expect(mail).to_have_url(re.compile("/dashboard"))


@pytest.mark.req("ACC-08")
async def test_declaring_stolen_credentials_logs_out_and_points_to_the_reset(
    portal: Portal, context: BrowserContext
) -> None:
    person = await portal.patient(f"vol-{uuid.uuid4().hex[:8]}@example.org")
    page = await context.new_page()
    await login(page, portal, person.email)
    await page.goto(portal.url + "/account")
    await page.get_by_role("link", name="J'ai perdu mes identifiants / on me les a volés").click()
    await expect(page).to_have_url(re.compile("/account/credential-loss$"))
    await no_violations(page, "credential-loss")
    await page.get_by_label("On me les a volés, ou quelqu'un d'autre les connaît").check()
    await page.get_by_label("Je confirme : bloquer mon compte").check()
    await page.get_by_role("button", name="Bloquer mon compte").click()
    await expect(page).to_have_url(re.compile("/account/credential-loss/done$"))
    await expect(page.get_by_test_id("credential-loss-done")).to_contain_text(
        "toutes vos sessions sont fermées"
    )
    await no_violations(page, "credential-loss-done")
    await expect(page.get_by_role("button", name="Se déconnecter")).to_have_count(0)
    found = await portal.ops("identity").GetAccount(
        identity_pb2.GetAccountRequest(account_id=person.account_id)
    )
    assert found.account.status == identity_pb2.ACCOUNT_STATUS_BLOCKED
    await page.goto(portal.url + "/account")
    await expect(page).to_have_url(re.compile("/login$"))
    await page.goto(portal.url + "/account/credential-loss/done")
    await page.get_by_role("link", name="Réinitialiser mon mot de passe").click()
    await expect(page).to_have_url(re.compile("/password-reset$"))


@pytest.mark.req("ACC-15")
async def test_an_invited_person_signs_up_from_the_invitation_link(
    portal: Portal, context: BrowserContext
) -> None:
    address = f"invitee-{uuid.uuid4().hex[:8]}@example.org"
    doctor, invitation = await invite(portal, address)
    page = await context.new_page()
    await page.set_content(f'<a href="{portal.url}/signup?invitation={invitation}">Créer mon compte</a>')
    await page.get_by_role("link", name="Créer mon compte").click()
    await expect(page.get_by_test_id("invited")).to_be_visible()
    await no_violations(page, "signup-invited")
    await page.get_by_label("Adresse e-mail").fill(address)
    await page.get_by_label("Téléphone mobile").fill("06 12 34 56 78")
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_label("Votre âge").fill("40")
    await page.get_by_label("J'ai lu et j'accepte").check()
    await page.get_by_role("button", name="Créer un compte").last.click()
    await expect(page).to_have_url(portal.url + "/signup")  # the token is in no later URL
    await expect(page.get_by_role("heading", name="Se connecter")).to_be_visible()
    identity = portal.as_person("identity", doctor.account_id, Role.REFERRING_DOCTOR)
    listed = await identity.ListReferrals(identity_pb2.ListReferralsRequest(page_size=10))
    assert [p.status for p in listed.prospects] == [identity_pb2.PROSPECT_STATUS_ACCOUNT_CREATED]
