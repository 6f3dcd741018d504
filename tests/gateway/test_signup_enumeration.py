"""The sign-up page does not tell whether an email has an account (security checklist:
no account enumeration): a known email gets the same page, "signed up, now log in", as a
new one; nothing is created and the owner is told by email. The login that follows is
enumeration-safe on its own (tests/identity/test_login.py)."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from sqlalchemy import func, select

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.identity.models import Account
from tests.gateway.support import PASSWORD, Portal, csrf

CSRF_VALUE = re.compile(r'name="csrf_token" value="[0-9a-f]+"')


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


async def sign_up(http: httpx.AsyncClient, email: str, phone: str, password: str) -> httpx.Response:
    token = await csrf(http, "/signup")
    return await http.post(
        "/signup",
        data={
            "csrf_token": token,
            "email": email,
            "phone_number": phone,
            "password": password,
            "declared_age": "40",
            "accept_terms": "yes",
        },
    )


async def accounts_with(portal: Portal, email: str) -> int:
    assert portal.stack._identity_sessions is not None
    async with portal.stack._identity_sessions() as session:
        count = await session.scalar(select(func.count()).where(Account.email_normalized == email))
    return int(count or 0)


async def attempt_notices(portal: Portal) -> list[str]:
    return [t for t in await portal.outbox_texts() if "essayé de créer un compte" in t]


@pytest.mark.req("ACC-01")
@pytest.mark.req("ACC-04")
async def test_a_known_email_gets_the_same_signed_up_page_and_its_owner_an_email(portal: Portal) -> None:
    email = "deja.inscrite@example.org"
    async with httpx.AsyncClient(base_url=portal.url) as http:
        first = await sign_up(http, email, "06 12 34 56 78", PASSWORD)
        again = await sign_up(http, email.upper(), "06 99 88 77 66", "Autre-Secret-42")
    assert first.status_code == again.status_code == 200
    assert "Compte créé" in first.text
    # The same page, but for the email echoed in the login form and the form's token.
    same = [CSRF_VALUE.sub("", r.text).replace(email.upper(), email) for r in (first, again)]
    assert same[0] == same[1]
    assert "existe" not in again.text and "exists" not in again.text

    assert await accounts_with(portal, email) == 1
    for _ in range(100):  # posted by identity after its answer
        if notices := await attempt_notices(portal):
            break
        await asyncio.sleep(0.05)
    assert len(notices) == 1
    assert "/login" in notices[0] and "06 99" not in notices[0] and "+33699" not in notices[0]


@pytest.mark.req("ACC-01")
async def test_a_refused_sign_up_still_says_why(portal: Portal) -> None:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        weak = await sign_up(http, "faible@example.org", "06 12 34 56 78", "Password1")
    assert weak.status_code == 400 and "Compte créé" not in weak.text
    assert await accounts_with(portal, "faible@example.org") == 0
