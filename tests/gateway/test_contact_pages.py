""" "Mon compte / My account": changing one's email and mobile phone over HTTP against the
real services (ACC-06): the step-up for changing credentials first, then a code sent to the
new address or the new phone, the old one in force until the code is entered; clear errors,
CSRF on every POST, 429 with Retry-After on code sending, French and English."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from secondopinion.identity.v1 import identity_pb2
from secondopinion.notifications.v1 import notifications_pb2

from services.gateway.web.security import DEFAULT_LIMITS, Limit, RateLimiter
from services.shared.auth import Role
from tests.gateway.support import Person, Portal, csrf

PAGE = "/account/contact"
FORM_KEY = re.compile(r'name="form_key" value="([^"]+)"')
OLD_PHONE = "+33612345678"
NEW_PHONE = "+33699887766"


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


def browser(portal: Portal, person: Person) -> httpx.AsyncClient:
    http = httpx.AsyncClient(base_url=portal.url)
    http.cookies.set("so_session", person.session)
    return http


async def form(http: httpx.AsyncClient) -> dict[str, str]:
    page = await http.get(PAGE)
    token = await csrf(http, PAGE)
    found = FORM_KEY.search(page.text)
    return {"csrf_token": token, **({"form_key": found.group(1)} if found else {})}


async def phone_on_file(portal: Portal, person: Person) -> str:
    identity = portal.as_person("identity", person.account_id, Role.PATIENT)
    got = await identity.GetAccount(identity_pb2.GetAccountRequest(account_id=person.account_id))
    return str(got.account.phone_number)


async def last_sms_recipient(portal: Portal) -> str:
    outbox = await portal.ops("notifications").ListOutbox(
        notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_SMS, page_size=5)
    )
    return str(outbox.messages[0].recipient)


async def email_on_file(portal: Portal, person: Person) -> str:
    identity = portal.as_person("identity", person.account_id, Role.PATIENT)
    got = await identity.GetAccount(identity_pb2.GetAccountRequest(account_id=person.account_id))
    return str(got.account.email)


async def email_code(portal: Portal, recipient: str) -> str:
    """The code of the newest email-verification message to this address."""
    for _ in range(50):
        outbox = await portal.ops("notifications").ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_EMAIL, page_size=50)
        )
        for message in outbox.messages:
            if (
                message.template == notifications_pb2.NOTIFICATION_TEMPLATE_EMAIL_VERIFICATION_CODE
                and message.recipient == recipient
            ):
                found = re.search(r"\b\d{6}\b", message.rendered_text)
                assert found, "the email carries the code"
                return found.group(0)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no email code to {recipient}")


async def pass_step_up(portal: Portal, http: httpx.AsyncClient) -> None:
    before = await portal.sms_count()
    started = await http.post(f"{PAGE}/step-up/start", data=await form(http))
    assert started.status_code == 200, started.text
    assert 'data-testid="contact-step-up-code"' in started.text
    code = await portal.latest_sms_code(after=before)
    verified = await http.post(f"{PAGE}/step-up/verify", data={**await form(http), "code": code})
    assert verified.status_code == 303, verified.text
    assert verified.headers["location"] == PAGE


@pytest.mark.req("ACC-06")
@pytest.mark.req("SEC-01")
async def test_a_person_changes_phone_and_email_from_my_account(portal: Portal) -> None:
    person = await portal.patient()
    async with browser(portal, person) as http:
        account = await http.get("/account")
        assert f'href="{PAGE}"' in account.text
        page = await http.get(PAGE)
        assert page.status_code == 200
        assert 'data-testid="contact-step-up"' in page.text
        assert person.email in page.text
        assert OLD_PHONE not in page.text and "78" in page.text  # masked

        # CSRF on every POST.
        for path in (
            "/step-up/start",
            "/step-up/verify",
            "/email",
            "/email/confirm",
            "/email/cancel",
            "/phone",
            "/phone/confirm",
            "/phone/cancel",
        ):
            refused = await http.post(f"{PAGE}{path}", data={"csrf_token": "forged", "code": "123456"})
            assert refused.status_code == 403, path

        # A change without the step-up asks for it.
        asked = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": "06 99 88 77 66"})
        assert asked.status_code in (200, 403)
        assert 'data-testid="contact-step-up' in asked.text

        # The step-up: the code goes to the phone on file; a wrong code is told clearly.
        before = await portal.sms_count()
        started = await http.post(f"{PAGE}/step-up/start", data=await form(http))
        assert 'data-testid="contact-step-up-code"' in started.text
        assert await last_sms_recipient(portal) == OLD_PHONE
        code = await portal.latest_sms_code(after=before)
        bad = await http.post(f"{PAGE}/step-up/verify", data={**await form(http), "code": "000000"})
        assert bad.status_code == 401
        assert "Code incorrect" in bad.text
        good = await http.post(f"{PAGE}/step-up/verify", data={**await form(http), "code": code})
        assert good.status_code == 303
        page = await http.get(PAGE)
        assert 'data-testid="contact-phone"' in page.text and 'data-testid="contact-email"' in page.text

        # Bad numbers and the same number are told clearly.
        fixed = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": "01 23 45 67 89"})
        assert fixed.status_code == 400 and "téléphone mobile" in fixed.text
        same = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": OLD_PHONE})
        assert same.status_code == 409

        # The new phone gets a code; the old number stays in force until it is entered.
        before = await portal.sms_count()
        sent = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": "06 99 88 77 66"})
        assert sent.status_code == 200, sent.text
        assert 'data-testid="contact-confirm-phone"' in sent.text
        assert NEW_PHONE not in sent.text and "66" in sent.text
        assert await last_sms_recipient(portal) == NEW_PHONE
        new_code = await portal.latest_sms_code(after=before)
        assert await phone_on_file(portal, person) == OLD_PHONE
        # Reloading keeps the confirmation step.
        assert 'data-testid="contact-confirm-phone"' in (await http.get(PAGE)).text

        wrong = f"{(int(new_code) + 1) % 1_000_000:06d}"
        refused = await http.post(f"{PAGE}/phone/confirm", data={**await form(http), "code": wrong})
        assert refused.status_code == 401
        assert await phone_on_file(portal, person) == OLD_PHONE
        confirmed = await http.post(f"{PAGE}/phone/confirm", data={**await form(http), "code": new_code})
        assert confirmed.status_code == 303
        assert confirmed.headers["location"] == f"{PAGE}?done=phone"
        done = await http.get(confirmed.headers["location"])
        assert "numéro de téléphone a été modifié" in done.text
        assert await phone_on_file(portal, person) == NEW_PHONE

        # The email (a fresh budget: this browser already spent most of the code sending one).
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
        # One in use, a malformed one and the one on file are refused clearly.
        other = await portal.patient()
        taken = await http.post(f"{PAGE}/email", data={**await form(http), "email": other.email.upper()})
        assert taken.status_code == 409 and "déjà utilisée" in taken.text
        invalid = await http.post(f"{PAGE}/email", data={**await form(http), "email": "not-an-email"})
        assert invalid.status_code == 400 and "non valide" in invalid.text
        same = await http.post(f"{PAGE}/email", data={**await form(http), "email": person.email})
        assert same.status_code == 409 and "adresse e-mail enregistrée" in same.text

        # A new address gets a code; the old one stays the login until the code is entered.
        new_email = f"moved-{person.account_id[:8]}@example.org"
        sent = await http.post(f"{PAGE}/email", data={**await form(http), "email": new_email})
        assert sent.status_code == 200, sent.text
        assert 'data-testid="contact-confirm-email"' in sent.text
        assert new_email in sent.text  # shown as typed, so that a typo shows
        email_code_sent = await email_code(portal, new_email)
        assert await email_on_file(portal, person) == person.email
        # Reloading keeps the confirmation step.
        assert 'data-testid="contact-confirm-email"' in (await http.get(PAGE)).text

        wrong = f"{(int(email_code_sent) + 1) % 1_000_000:06d}"
        refused = await http.post(f"{PAGE}/email/confirm", data={**await form(http), "code": wrong})
        assert refused.status_code == 401 and "Code incorrect" in refused.text
        assert 'data-testid="contact-confirm-email"' in refused.text
        assert await email_on_file(portal, person) == person.email
        moved = await http.post(f"{PAGE}/email/confirm", data={**await form(http), "code": email_code_sent})
        assert moved.status_code == 303
        assert moved.headers["location"] == f"{PAGE}?done=email"
        done = await http.get(moved.headers["location"])
        assert "adresse e-mail a été modifiée" in done.text and new_email in done.text
        assert await email_on_file(portal, person) == new_email
        # The old and the new address are told.
        outbox = await portal.ops("notifications").ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_EMAIL, page_size=50)
        )
        told = {
            m.recipient
            for m in outbox.messages
            if m.template == notifications_pb2.NOTIFICATION_TEMPLATE_ACCOUNT_DETAILS_CHANGED
        }
        assert {person.email, new_email} <= told

        # English too.
        english = await http.get(f"{PAGE}?lang=en")
        assert "Email address and phone" in english.text

    identity = portal.as_person("identity", person.account_id, Role.PATIENT)
    events = await identity.ListAuthenticationEvents(
        identity_pb2.ListAuthenticationEventsRequest(account_id=person.account_id)
    )
    changed = [
        e for e in events.events if e.kind == identity_pb2.AUTHENTICATION_EVENT_KIND_CONTACT_DETAILS_CHANGED
    ]
    assert len(changed) == 2


@pytest.mark.req("ACC-06")
async def test_code_sending_is_rate_limited_and_a_pending_change_can_be_cancelled(portal: Portal) -> None:
    person = await portal.patient()
    async with browser(portal, person) as http:
        await pass_step_up(portal, http)
        portal.app.state.rate_limiter = RateLimiter({"contact_code": Limit(1, 60)})
        sent = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": "06 99 88 77 66"})
        assert sent.status_code == 200
        again = await http.post(f"{PAGE}/phone", data={**await form(http), "phone_number": "06 99 88 77 66"})
        assert again.status_code == 429
        assert int(again.headers["Retry-After"]) > 0
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)

        cancelled = await http.post(f"{PAGE}/phone/cancel", data=await form(http))
        assert cancelled.status_code == 303
        assert 'data-testid="contact-phone"' in (await http.get(PAGE)).text
        assert await phone_on_file(portal, person) == OLD_PHONE


@pytest.mark.req("ACC-06")
async def test_an_email_change_is_rate_limited_cancellable_and_restarted_when_its_code_fails(
    portal: Portal,
) -> None:
    person = await portal.patient()
    new_email = f"next-{person.account_id[:8]}@example.org"
    async with browser(portal, person) as http:
        await pass_step_up(portal, http)
        portal.app.state.rate_limiter = RateLimiter({"contact_code": Limit(1, 60)})
        sent = await http.post(f"{PAGE}/email", data={**await form(http), "email": new_email})
        assert sent.status_code == 200
        again = await http.post(f"{PAGE}/email", data={**await form(http), "email": new_email})
        assert again.status_code == 429
        assert int(again.headers["Retry-After"]) > 0
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)

        # Cancelled here: the form comes back and the address on file is unchanged.
        cancelled = await http.post(f"{PAGE}/email/cancel", data=await form(http))
        assert cancelled.status_code == 303
        assert 'data-testid="contact-email"' in (await http.get(PAGE)).text
        assert await email_on_file(portal, person) == person.email

        # Three wrong codes end the change: the person is asked to start again.
        sent = await http.post(f"{PAGE}/email", data={**await form(http), "email": new_email})
        assert 'data-testid="contact-confirm-email"' in sent.text
        code = await email_code(portal, new_email)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for _ in range(3):
            refused = await http.post(f"{PAGE}/email/confirm", data={**await form(http), "code": wrong})
            assert refused.status_code == 401
        ended = await http.post(f"{PAGE}/email/confirm", data={**await form(http), "code": code})
        assert ended.status_code == 409 and "recommencez" in ended.text
        assert 'data-testid="contact-email"' in ended.text
        assert await email_on_file(portal, person) == person.email

        # Identity's own cap per account and hour: 429 with Retry-After too.
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
        for attempt in range(5):
            data = {**await form(http), "email": f"x{attempt}-{new_email}"}
            answer = await http.post(f"{PAGE}/email", data=data)
            if answer.status_code == 429:
                break
        assert answer.status_code == 429
        assert answer.headers["Retry-After"] == "3600"
        assert "nouvelles adresses" in answer.text

        # English too (the last code sent still awaits its confirmation).
        english = await http.get(f"{PAGE}?lang=en")
        assert "Code received at the new email address" in english.text


async def test_the_contact_page_needs_a_session(portal: Portal) -> None:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        response = await http.get(PAGE)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
