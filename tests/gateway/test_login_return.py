"""A signed-out person following an email's link ("your invoice is available") logs in and
lands on that page, greeted by the emergency warning like every login (CASE-07). Where the
login ends comes from a cookie the gateway set itself, holding a path of ids only: no link
can send a login elsewhere (no open redirect)."""

from __future__ import annotations

import uuid

import httpx
import pytest

from services.gateway.web.page import NEXT_COOKIE
from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from tests.gateway.support import PASSWORD, Portal, csrf

WARNING = "Ce service ne traite pas les urgences"


def phone() -> str:
    """A number of one's own: login codes to one number are rate limited (notifications)."""
    return f"+33612{uuid.uuid4().int % 10**6:06d}"


async def log_in(portal: Portal, http: httpx.AsyncClient, email: str) -> httpx.Response:
    """Password then SMS code, as the login pages do; the last answer (a redirect). The
    tests log in many times from one address: each login gets a fresh client budget."""
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
    token = await csrf(http)
    before = await portal.sms_count()
    first = await http.post("/login", data={"csrf_token": token, "email": email, "password": PASSWORD})
    assert first.status_code == 303 and first.headers["location"] == "/login/code"
    code = await portal.latest_sms_code(after=before)
    return await http.post("/login/code", data={"csrf_token": token, "code": code})


@pytest.mark.req("CASE-07")
async def test_a_login_ends_on_the_page_the_email_linked_to_with_the_warning(portal: Portal) -> None:
    person = await portal.patient(f"return-{uuid.uuid4().hex[:8]}@example.org", phone())
    async with httpx.AsyncClient(base_url=portal.url) as http:
        asked = await http.get("/invoices")
        assert asked.status_code == 303 and asked.headers["location"] == "/login"
        assert (http.cookies.get(NEXT_COOKIE) or "").strip('"') == "/invoices"  # quoted: it holds "/"
        # The login pages themselves are never where a login returns.
        await http.get("/login")
        assert (http.cookies.get(NEXT_COOKIE) or "").strip('"') == "/invoices"
        done = await log_in(portal, http, person.email)
        assert done.status_code == 303 and done.headers["location"] == "/invoices?login=1"
        assert NEXT_COOKIE not in http.cookies  # used once
        landed = await http.get(done.headers["location"])
        assert landed.status_code == 200
        assert f'<div class="alert warning" role="alert">{WARNING}' in landed.text
        # Once signed in, the flag is gone and so is the warning banner.
        again = await http.get("/invoices")
        assert 'class="alert warning"' not in again.text


@pytest.mark.req("CASE-07")
async def test_a_forged_return_cookie_cannot_send_a_login_elsewhere(portal: Portal) -> None:
    person = await portal.patient(f"forged-{uuid.uuid4().hex[:8]}@example.org", phone())
    for forged in ("//evil.example/phish", "https://evil.example/", "/cases/x?token=1", "/login/code"):
        async with httpx.AsyncClient(base_url=portal.url) as http:
            http.cookies.set(NEXT_COOKIE, forged)
            done = await log_in(portal, http, person.email)
            assert done.headers["location"] == "/home?login=1", forged
    # A signed-out POST records nothing: only pages asked for by GET are returned to.
    async with httpx.AsyncClient(base_url=portal.url) as http:
        token = await csrf(http)
        await http.post("/account/contact/email", data={"csrf_token": token, "email": "x@example.org"})
        assert NEXT_COOKIE not in http.cookies


@pytest.mark.req("CASE-07")
async def test_a_forced_password_change_at_login_still_ends_on_the_page_asked_for(portal: Portal) -> None:
    from services.identity.models import Account

    person = await portal.patient(f"forced-{uuid.uuid4().hex[:8]}@example.org", phone())
    assert portal.stack._identity_sessions is not None
    async with portal.stack._identity_sessions.begin() as session:
        account = await session.get(Account, person.account_id)
        assert account is not None
        account.must_change_password = True  # as after provisional credentials
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await http.get("/invoices")
        done = await log_in(portal, http, person.email)
        assert done.headers["location"] == "/account/password?forced=1"
        token = await csrf(http, "/account/password?forced=1")
        changed = await http.post(
            "/account/password",
            data={
                "csrf_token": token, "current_password": PASSWORD, "new_password": "Brume-Automne-2031",
                "confirm_password": "Brume-Automne-2031", "form_key": uuid.uuid4().hex,
            },
        )  # fmt: skip
        assert changed.status_code == 303 and changed.headers["location"] == "/invoices?login=1"
        assert NEXT_COOKIE not in http.cookies
