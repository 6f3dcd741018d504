"""Public pages in a real browser: the emergency warning, the cookie banner, French first
with English on request, accessibility (axe-core), a strict CSP that the pages respect."""

from __future__ import annotations

import pytest
from playwright.async_api import Page

from tests.browser.conftest import axe_violations, screenshot
from tests.support.stack import Stack


@pytest.mark.req("CASE-07")
@pytest.mark.req("CNS-09")
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_home_warns_about_emergencies_and_asks_about_cookies(stack: Stack, page: Page) -> None:
    csp_errors: list[str] = []
    page.on(
        "console",
        lambda message: (
            csp_errors.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    await page.goto(stack.gateway_url + "/")
    assert "112" in await page.locator("footer").inner_text()
    banner = page.get_by_role("region", name="Cookies")
    await banner.wait_for()
    await screenshot(page, "home-fr")
    assert await axe_violations(page) == []
    # Only strictly necessary cookies until the person chooses.
    names = {cookie["name"] for cookie in await page.context.cookies()}
    assert names <= {"so_csrf", "so_lang"}
    async with page.expect_navigation():
        await page.get_by_role("button", name="Continuer sans accepter").click()
    assert await page.get_by_role("region", name="Cookies").count() == 0
    choice = {c["name"]: c for c in await page.context.cookies()}["so_cookie_choice"]
    assert choice["value"] == "necessary" and choice["httpOnly"]
    # English on request, remembered.
    async with page.expect_navigation():
        await page.get_by_role("link", name="English").click()
    assert await page.locator("html").get_attribute("lang") == "en"
    await page.goto(stack.gateway_url + "/login")
    assert await page.get_by_role("heading", name="Log in").count() == 1
    assert csp_errors == []


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
async def test_forms_are_labelled_and_protected(stack: Stack, page: Page) -> None:
    for path in ("/login", "/signup"):
        response = await page.goto(stack.gateway_url + path)
        assert response is not None
        assert response.headers["cache-control"] == "no-store"
        assert "script-src 'self'" in response.headers["content-security-policy"]
        assert await axe_violations(page) == []
        await screenshot(page, path.strip("/"))
    # A cross-site post without the CSRF token is refused.
    answer = await page.request.post(stack.gateway_url + "/login", form={"email": "a@b.fr", "password": "x"})
    assert answer.status == 403
