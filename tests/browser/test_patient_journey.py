"""A patient in a real browser: sign-up with the current terms, login with the SMS code
(read from the development outbox, as a person would read their phone), the emergency
warning at login, a new opinion request, the case page and the dashboard."""

from __future__ import annotations

import re

import pytest
from playwright.async_api import Page, expect
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2, notifications_pb2_grpc

from services.shared.grpc_client import open_channel
from tests.browser.conftest import axe_violations, screenshot
from tests.support.stack import Stack


async def publish_terms(stack: Stack) -> identity_pb2.LegalText:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        published = await identity_pb2_grpc.IdentityServiceStub(channel).PublishLegalText(
            identity_pb2.PublishLegalTextRequest(
                idempotency_key="terms-2026.1",
                kind=identity_pb2.LEGAL_TEXT_KIND_TERMS,
                version="2026.1",
                locale="fr",
                body="Conditions générales d'utilisation — version de test.",
            )
        )
    return published.text


async def latest_sms_code(stack: Stack) -> str:
    async with open_channel(stack.target("notifications"), stack.ops_tokens()) as channel:
        outbox = await notifications_pb2_grpc.NotificationsServiceStub(channel).ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_SMS, page_size=10)
        )
    codes = [
        match.group(0)
        for message in outbox.messages
        if message.template == notifications_pb2.NOTIFICATION_TEMPLATE_LOGIN_CODE
        for match in [re.search(r"\b\d{6}\b", message.rendered_text)]
        if match
    ]
    assert codes, "no login code in the outbox"
    return codes[0]


@pytest.mark.req("ACC-01", "ACC-05", "CASE-07", "CNS-01", "CASE-12")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_patient_signs_up_logs_in_with_the_sms_code_and_files_a_request(
    stack: Stack, page: Page
) -> None:
    terms = await publish_terms(stack)
    base = stack.gateway_url
    await page.goto(base + "/signup")
    await expect(page.get_by_text(f"(v{terms.version})")).to_be_visible()
    assert await axe_violations(page) == []
    await page.get_by_label("Adresse e-mail").fill("Camille.Patient@example.org")
    await page.get_by_label("Téléphone mobile").fill("06 12 34 56 78")
    await page.get_by_label("Mot de passe").fill("Lumiere-Ete-2026")
    await page.get_by_label("Votre âge").fill("44")
    await page.get_by_label("J'ai lu et j'accepte").check()
    await page.get_by_role("button", name="Créer un compte").click()
    await expect(page.get_by_role("status")).to_contain_text("Compte créé")

    await page.get_by_label("Adresse e-mail").fill("camille.patient@example.org")
    await page.get_by_label("Mot de passe").fill("Lumiere-Ete-2026")
    await page.get_by_role("button", name="Se connecter").last.click()
    await expect(page.get_by_text("Un code à 6 chiffres a été envoyé")).to_be_visible()
    await screenshot(page, "patient-login-code")
    await page.get_by_label("Code reçu par SMS").fill(await latest_sms_code(stack))
    await page.get_by_role("button", name="Valider").click()

    # The emergency warning greets every login (CASE-07).
    await expect(page.get_by_role("alert")).to_contain_text("ne traite pas les urgences")
    session = {c["name"]: c for c in await page.context.cookies()}["so_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    await screenshot(page, "patient-dashboard-empty")

    await page.get_by_role("link", name="Nouvelle demande d'avis").click()
    assert await axe_violations(page) == []
    await page.get_by_label("Domaine thérapeutique").select_option("cardiology")
    await page.get_by_label("Avis avant une demande d'indemnisation").check()
    await page.get_by_role("button", name="Envoyer").click()
    await expect(page.get_by_test_id("case-status")).to_have_text("Envoyée")
    assert "/cases/" in page.url
    await screenshot(page, "patient-case")

    await page.get_by_role("link", name="Retour").click()
    await expect(page.get_by_role("cell", name="Cardiologie")).to_be_visible()
    assert await axe_violations(page) == []
    # Logging out ends the session on the server, not only in the browser.
    await page.get_by_role("button", name="Se déconnecter").click()
    await page.goto(base + "/dashboard")
    assert page.url.endswith("/login")
