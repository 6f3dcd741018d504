"""Playwright for Python driving Debian's Chromium (never a downloaded browser)."""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyotp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.gateway.support import PASSWORD, Portal, running_portal

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
AXE_JS = Path(str(__import__("axe_core_python").__file__)).with_name("axe.min.js")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.fail("Debian chromium is missing: `make test` installs it (make system-deps)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS, headless=True
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(locale="fr-FR")
    opened = await context.new_page()
    yield opened
    await context.close()


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def axe_violations(page: Page) -> list[dict[str, object]]:
    """Serious and critical accessibility violations on the current page (axe-core)."""
    # Evaluated through the DevTools protocol: the page's CSP (rightly) refuses inline scripts.
    await page.evaluate(AXE_JS.read_text())
    result = await page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [v for v in result["violations"] if v.get("impact") in ("serious", "critical")]


@pytest.fixture(scope="module")
async def portal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Portal]:
    """The whole platform, the PSP sandbox and the gateway (one per test module)."""
    async with running_portal(
        tmp_path_factory.mktemp("portal"), "sqlite", max_upload_bytes=2 * 1024 * 1024
    ) as running:
        yield running


async def login(page: Page, portal: Portal, email: str, totp_secret: str = "") -> None:
    """Email and password, the SMS code read from the outbox, then TOTP for staff."""
    before = await portal.sms_count()
    await page.goto(portal.url + "/login")
    await page.get_by_label("Adresse e-mail").fill(email)
    await page.get_by_label("Mot de passe").fill(PASSWORD)
    await page.get_by_role("button", name="Se connecter").last.click()
    try:
        await page.wait_for_url("**/login/code", timeout=10_000)
    except Exception:
        await screenshot(page, "login-failure")
        raise
    if await page.get_by_label("Code reçu par SMS").count():
        await page.get_by_label("Code reçu par SMS").fill(await portal.latest_sms_code(after=before))
        await page.get_by_role("button", name="Valider").click()
    if totp_secret:
        # The next time step: the current one may have been spent at enrolment (no replay).
        next_step_code = pyotp.TOTP(totp_secret).at(time.time() + 30)
        await page.get_by_label("Code de votre application d'authentification").fill(next_step_code)
        await page.get_by_role("button", name="Valider").click()
    try:
        await page.wait_for_url(lambda url: "/login" not in url, timeout=10_000)
    except Exception:
        await screenshot(page, "login-failure")
        raise
