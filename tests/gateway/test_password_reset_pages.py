"""Lost, stolen or forgotten credentials over HTTP against the real services (ACC-08): the
reset from the emailed link (token taken from the recorded email) to the login page, the
token out of every URL after the landing, one answer for every email address, wrong codes,
weak passwords, expired and used links, 429s with Retry-After, CSRF; declaring loss or
theft from "Mon compte" blocks the account and ends every session, and the reset unblocks
it. And the referring doctor's invitation, carried from its link to identity (ACC-15).
On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import html
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import timedelta

import httpx
import pytest
from secondopinion.identity.v1 import identity_pb2
from secondopinion.notifications.v1 import notifications_pb2
from sqlalchemy import update

from services.gateway.web.security import DEFAULT_LIMITS, RateLimiter
from services.identity.domain.login import RESET as RESET_PURPOSE
from services.identity.models import Challenge, ResetLink
from services.shared.auth import Role
from services.shared.db import create_engine, utcnow
from tests.conftest import BACKENDS
from tests.gateway.support import PASSWORD, Person, Portal, csrf, running_portal
from tests.support.databases import postgres_available
from tests.support.tracing import SPANS

NEW_PASSWORD = "Orage-Printemps-2027"
LINK = re.compile(r"/password-reset\?token=([A-Za-z0-9_-]+)")
INVITATION = re.compile(r"/signup\?invitation=([A-Za-z0-9_-]+)")
RESET_EMAIL = notifications_pb2.NOTIFICATION_TEMPLATE_PASSWORD_RESET
INVITATION_EMAIL = notifications_pb2.NOTIFICATION_TEMPLATE_REFERRAL_INVITATION


@pytest.fixture(scope="module", params=BACKENDS)
async def portal(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Portal]:
    if request.param == "postgres" and not await postgres_available():
        if os.environ.get("SO_TEST_ALLOW_NO_POSTGRES") == "1":
            pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
        pytest.fail("PostgreSQL must run on 127.0.0.1:5432 (or set SO_TEST_POSTGRES_DSN)")
    async with running_portal(tmp_path_factory.mktemp("reset"), str(request.param)) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_rate_limits(portal: Portal) -> None:
    portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)


class Browser(httpx.AsyncClient):
    """A client that remembers every URL it asked for (the token must leave them all)."""

    def __init__(self, portal: Portal) -> None:
        self.urls: list[str] = []
        super().__init__(base_url=portal.url, event_hooks={"request": [self._record]})

    async def _record(self, request: httpx.Request) -> None:
        self.urls.append(str(request.url))


def email() -> str:
    return f"reset-{uuid.uuid4().hex[:10]}@example.org"


async def emailed(
    portal: Portal, template: int, recipient: str, pattern: re.Pattern[str], seen: Iterable[str] = ()
) -> str:
    """The token of the newest such email to this address (not one already seen)."""
    known = set(seen)
    for _ in range(100):
        outbox = await portal.ops("notifications").ListOutbox(
            notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_EMAIL, page_size=100)
        )
        for message in outbox.messages:
            if message.template == template and message.recipient == recipient:
                found = pattern.search(message.rendered_text)
                assert found, "the email carries the link"
                if found.group(1) not in known:
                    return found.group(1)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no new email to {recipient}")


async def emails_to(portal: Portal, recipient: str) -> int:
    outbox = await portal.ops("notifications").ListOutbox(
        notifications_pb2.ListOutboxRequest(channel=notifications_pb2.CHANNEL_EMAIL, page_size=100)
    )
    return sum(1 for m in outbox.messages if m.recipient == recipient)


async def until_emails(portal: Portal, recipient: str, count: int) -> None:
    for _ in range(100):
        if await emails_to(portal, recipient) >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} emails to {recipient}")


async def ask_for_link(http: httpx.AsyncClient, address: str, form_key: str = "") -> httpx.Response:
    """The email form, filled and sent (with the key of the form shown, or the one given)."""
    page = await http.get("/password-reset")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    key = re.search(r'name="form_key" value="([^"]+)"', page.text)
    assert token and key
    return await http.post(
        "/password-reset",
        data={"csrf_token": token.group(1), "email": address, "form_key": form_key or key.group(1)},
    )


async def land(http: httpx.AsyncClient, link_token: str) -> httpx.Response:
    landing = await http.get(f"/password-reset?token={link_token}")
    assert landing.status_code == 303, landing.text
    assert landing.headers["location"] == "/password-reset/new"
    assert landing.headers["referrer-policy"] == "no-referrer"
    return landing


async def send_code(http: httpx.AsyncClient, portal: Portal) -> str:
    before = await portal.sms_count()
    token = await csrf(http, "/password-reset/new")
    sent = await http.post("/password-reset/code", data={"csrf_token": token})
    assert sent.status_code == 303 and sent.headers["location"] == "/password-reset/new", sent.text
    return await portal.latest_sms_code(after=before)


async def complete(
    http: httpx.AsyncClient, code: str, password: str, confirm: str | None = None
) -> httpx.Response:
    token = await csrf(http, "/password-reset/new")
    return await http.post(
        "/password-reset/new",
        data={
            "csrf_token": token,
            "code": code,
            "new_password": password,
            "confirm_password": password if confirm is None else confirm,
        },
    )


async def reset_to(portal: Portal, http: httpx.AsyncClient, address: str, password: str) -> None:
    assert (await ask_for_link(http, address)).status_code == 200
    await land(http, await emailed(portal, RESET_EMAIL, address, LINK))
    code = await send_code(http, portal)
    done = await complete(http, code, password)
    assert done.status_code == 303 and done.headers["location"] == "/login?reset=done", done.text


async def password_works(portal: Portal, address: str, password: str) -> int:
    """The login's first step: 303 to the code page when the password is right."""
    async with httpx.AsyncClient(base_url=portal.url) as http:
        token = await csrf(http)
        answer = await http.post("/login", data={"csrf_token": token, "email": address, "password": password})
        return answer.status_code


async def account_status(portal: Portal, account_id: str) -> int:
    found = await portal.ops("identity").GetAccount(identity_pb2.GetAccountRequest(account_id=account_id))
    return int(found.account.status)


async def session_valid(portal: Portal, token: str) -> bool:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        http.cookies.set("so_session", token)
        answer = await http.get("/account")
    return answer.status_code == 200


@pytest.mark.req("ACC-08")
async def test_the_whole_reset_from_the_emailed_link_with_the_token_in_no_later_url(portal: Portal) -> None:
    person = await portal.patient(email())
    async with Browser(portal) as http:
        login_page = await http.get("/login")
        assert 'href="/password-reset"' in login_page.text and "Mot de passe oublié ?" in login_page.text
        form = await http.get("/password-reset")
        assert form.status_code == 200 and form.headers["cache-control"] == "no-store"
        assert 'autocomplete="username"' in form.text and 'for="reset-email"' in form.text
        sent = await ask_for_link(http, person.email)
        assert sent.status_code == 200 and "un e-mail contenant un lien" in sent.text
        assert person.email not in sent.text
        link_token = await emailed(portal, RESET_EMAIL, person.email, LINK)

        SPANS.clear()
        landing = await land(http, link_token)
        cookie = next(h for h in landing.headers.get_list("set-cookie") if h.startswith("so_reset_link="))
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/password-reset" in cookie
        assert "Max-Age=900" in cookie
        first = len(http.urls)
        page = await http.get("/password-reset/new")
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert 'action="/password-reset/code"' in page.text and link_token not in page.text
        code = await send_code(http, portal)
        page = await http.get("/password-reset/new")
        assert "Un code à 6 chiffres a été envoyé au" in page.text and "+33612345678" not in page.text
        assert 'autocomplete="new-password"' in page.text and 'autocomplete="one-time-code"' in page.text
        assert "8 à 25 caractères" in page.text  # the terms' password rules are shown
        done = await complete(http, code, NEW_PASSWORD)
        assert done.status_code == 303 and done.headers["location"] == "/login?reset=done"
        back = await http.get(done.headers["location"])
        assert "Votre mot de passe a été changé et votre compte est débloqué" in back.text
        # After the landing, the token is in no URL the browser asked for.
        assert all(link_token not in url for url in http.urls[first:]), http.urls
        assert link_token in http.urls[first - 1]
        # Nor in a span attribute (the landing URL included) or a page.
        recorded = [str(v) for span in SPANS.get_finished_spans() for v in (span.attributes or {}).values()]
        assert not [value for value in recorded if link_token in value]
    # The new password opens the account; the old one, and the old session, no longer do.
    assert await password_works(portal, person.email, NEW_PASSWORD) == 303
    assert await password_works(portal, person.email, PASSWORD) != 303
    assert not await session_valid(portal, person.session)


@pytest.mark.req("ACC-08")
async def test_every_email_gets_the_same_answer(portal: Portal) -> None:
    person = await portal.patient(email())
    unknown = email()
    async with httpx.AsyncClient(base_url=portal.url) as http:
        answers = [
            await ask_for_link(http, address)
            for address in (person.email, unknown, "pas-une-adresse", person.email.upper())
        ]
        assert {a.status_code for a in answers} == {200}
        assert len({a.text for a in answers}) == 1  # same body: the address is not even repeated
        await until_emails(portal, person.email, 2)  # the two spellings of the known address
        assert await emails_to(portal, unknown) == 0
        # One form posted twice sends one email; reused for another address, it still answers
        # (a fresh client budget: five links per client and ten minutes).
        portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
        key = str(uuid.uuid4())
        twice = [await ask_for_link(http, person.email, key) for _ in range(2)]
        other = await ask_for_link(http, unknown, key)
        assert {a.status_code for a in (*twice, other)} == {200} and other.text == answers[0].text
        await until_emails(portal, person.email, 3)
        await asyncio.sleep(0.5)  # the courier posts in the background: no second one comes
        assert await emails_to(portal, person.email) == 3
        assert await emails_to(portal, unknown) == 0


@pytest.mark.req("ACC-08")
async def test_wrong_code_weak_password_and_differing_passwords_are_told_clearly(portal: Portal) -> None:
    person = await portal.patient(email())
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await ask_for_link(http, person.email)
        await land(http, await emailed(portal, RESET_EMAIL, person.email, LINK))
        code = await send_code(http, portal)
        wrong = "000000" if code != "000000" else "111111"
        refused = await complete(http, wrong, NEW_PASSWORD)
        assert refused.status_code == 400 and "Code incorrect ou expiré." in refused.text
        assert 'aria-invalid="true"' in refused.text
        malformed = await complete(http, "12ab", NEW_PASSWORD)
        assert malformed.status_code == 400 and "exactement 6 chiffres" in malformed.text
        for weak, message in (
            ("Court-1", "de 8 à 25 caractères"),
            ("tout-en-minuscules-1", "des majuscules, des minuscules"),
            ("Password123", "trop courant"),
        ):
            answer = await complete(http, code, weak)
            assert answer.status_code == 400 and message in answer.text, (weak, answer.text)
            assert f'value="{code}"' in answer.text  # the code is kept: it was not spent
        differ = await complete(http, code, NEW_PASSWORD, "Orage-Printemps-2028")
        assert differ.status_code == 400 and "ne sont pas identiques" in differ.text
        # In English for an English speaker.
        http.cookies.set("so_lang", "en")
        english = await complete(http, code, "tout-en-minuscules-1")
        assert english.status_code == 400 and "needs upper case, lower case" in english.text
        http.cookies.delete("so_lang")
        # None of that spent the code or the reset.
        done = await complete(http, code, NEW_PASSWORD)
        assert done.status_code == 303, done.text
    assert await password_works(portal, person.email, NEW_PASSWORD) == 303


async def code_sent_long_ago(portal: Portal, account_id: str) -> None:
    """As if the last code had left IDENTITY_CODE_RESEND_INTERVAL_SECONDS ago."""
    engine = create_engine(portal.stack.database_urls["identity"])
    try:
        async with engine.begin() as connection:
            await connection.execute(
                update(Challenge)
                .where(Challenge.account_id == account_id, Challenge.purpose == RESET_PURPOSE)
                .values(last_code_sent_at=utcnow() - timedelta(minutes=2))
            )
    finally:
        await engine.dispose()


@pytest.mark.req("ACC-08")
async def test_a_code_that_never_came_is_sent_again_from_the_page(portal: Portal) -> None:
    # A number of its own: notifications limits SMS per recipient, and other tests share one.
    person = await portal.patient(email(), phone=f"+33612{secrets.randbelow(10**6):06d}")
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await ask_for_link(http, person.email)
        await land(http, await emailed(portal, RESET_EMAIL, person.email, LINK))
        first = await send_code(http, portal)
        page = await http.get("/password-reset/new")
        assert 'action="/password-reset/resend"' in page.text and "Renvoyer un code par SMS" in page.text
        token = await csrf(http, "/password-reset/new")
        assert (await http.post("/password-reset/resend", data={})).status_code == 403  # CSRF
        # Straight after the first code: identity says to wait; the page says so, with 429.
        too_soon = await http.post("/password-reset/resend", data={"csrf_token": token})
        assert too_soon.status_code == 429 and int(too_soon.headers["retry-after"]) > 0
        assert "Patientez une minute" in too_soon.text and 'name="code"' in too_soon.text
        # A minute later: a new code, the page says it, and only that code works.
        await code_sent_long_ago(portal, person.account_id)
        before = await portal.sms_count()
        resent = await http.post("/password-reset/resend", data={"csrf_token": token})
        assert resent.status_code == 303 and resent.headers["location"] == "/password-reset/new?resent=1"
        cookie = next(h for h in resent.headers.get_list("set-cookie") if h.startswith("so_reset="))
        assert "HttpOnly" in cookie and "Path=/password-reset" in cookie
        second = await portal.latest_sms_code(after=before)
        shown = await http.get(resent.headers["location"])
        assert "Un nouveau code vient d'être envoyé" in html.unescape(shown.text)
        assert 'role="status"' in shown.text
        if second != first:
            stale = await complete(http, first, NEW_PASSWORD)
            assert stale.status_code == 400 and "Code incorrect ou expiré." in stale.text
        done = await complete(http, second, NEW_PASSWORD)
        assert done.status_code == 303 and done.headers["location"] == "/login?reset=done", done.text
        # The reset is over: a resend now leads back to the email form.
        http.cookies.set("so_reset", resent.cookies.get("so_reset") or "", path="/password-reset")
        ended = await http.post("/password-reset/resend", data={"csrf_token": token})
        assert ended.status_code == 410 and "Demandez un nouveau lien" in ended.text
    assert await password_works(portal, person.email, NEW_PASSWORD) == 303


@pytest.mark.req("ACC-08")
async def test_used_expired_and_unknown_links_are_refused_with_a_way_forward(portal: Portal) -> None:
    person = await portal.patient(email())
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await ask_for_link(http, person.email)
        used = await emailed(portal, RESET_EMAIL, person.email, LINK)
        await land(http, used)
        await complete(http, await send_code(http, portal), NEW_PASSWORD)
        # Used already: the link's page says so and offers a new request.
        await land(http, used)
        token = await csrf(http, "/password-reset/new")
        again = await http.post("/password-reset/code", data={"csrf_token": token})
        assert again.status_code == 410 and "n&#39;est plus valable" in again.text
        assert 'action="/password-reset"' in again.text
        # Expired.
        await ask_for_link(http, person.email)
        late = await emailed(portal, RESET_EMAIL, person.email, LINK, seen=[used])
        assert portal.stack._identity_sessions is not None
        async with portal.stack._identity_sessions.begin() as session:
            await session.execute(
                update(ResetLink)
                .where(ResetLink.account_id == person.account_id, ResetLink.redeemed_at.is_(None))
                .values(expires_at=utcnow() - timedelta(minutes=1))
            )
        await land(http, late)
        expired = await http.post("/password-reset/code", data={"csrf_token": token})
        assert expired.status_code == 410 and "n&#39;est plus valable" in expired.text
        # Unknown, malformed, or no link at all.
        for bogus in ("A" * 43, "x"):
            landing = await http.get(f"/password-reset?token={bogus}")
            assert landing.status_code == 303
            refused = await http.post("/password-reset/code", data={"csrf_token": token})
            assert refused.status_code == 410 and "n&#39;est plus valable" in refused.text
        # The last step with no reset under way.
        ended = await complete(http, "123456", NEW_PASSWORD)
        assert ended.status_code == 410 and "Demandez un nouveau lien" in ended.text


@pytest.mark.req("ACC-08")
async def test_csrf_and_429_with_retry_after_on_the_request_the_code_and_the_completion(
    portal: Portal,
) -> None:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await http.get("/password-reset")
        for path, data in (
            ("/password-reset", {"email": "a@example.org"}),
            ("/password-reset/code", {}),
            ("/password-reset/new", {"code": "123456", "new_password": NEW_PASSWORD}),
        ):
            assert (await http.post(path, data=data)).status_code == 403, path
        token = await csrf(http, "/password-reset")
        for path, data, action in (
            ("/password-reset", {"email": email()}, "password_reset"),
            ("/password-reset/code", {}, "login_code"),
            ("/password-reset/new", {"code": "123456", "new_password": NEW_PASSWORD}, "login_code"),
        ):
            portal.app.state.rate_limiter = RateLimiter(DEFAULT_LIMITS)
            answers = [
                await http.post(path, data={**data, "csrf_token": token})
                for _ in range(DEFAULT_LIMITS[action].requests + 1)
            ]
            assert answers[0].status_code != 429, path
            assert answers[-1].status_code == 429 and int(answers[-1].headers["retry-after"]) > 0, path
            assert answers[-1].headers["cache-control"] == "no-store"


@pytest.mark.req("ACC-08")
async def test_declared_loss_blocks_the_account_and_ends_every_session_and_the_reset_unblocks_it(
    portal: Portal,
) -> None:
    person = await portal.patient(email())
    other_device = await portal.stack.open_session(person.account_id)
    async with httpx.AsyncClient(base_url=portal.url) as http:
        http.cookies.set("so_session", person.session)
        account = await http.get("/account")
        assert 'href="/account/credential-loss"' in account.text
        assert "J&#39;ai perdu mes identifiants / on me les a volés" in account.text
        form = await http.get("/account/credential-loss")
        assert form.status_code == 200 and 'name="kind"' in form.text
        key = re.search(r'name="form_key" value="([^"]+)"', form.text)
        assert key
        token = await csrf(http, "/account/credential-loss")
        body = {"kind": "theft", "confirm": "yes", "form_key": key.group(1)}
        assert (await http.post("/account/credential-loss", data=body)).status_code == 403
        forged = await http.post(
            "/account/credential-loss",
            data={**body, "csrf_token": token},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        unconfirmed = await http.post(
            "/account/credential-loss", data={**body, "confirm": "", "csrf_token": token}
        )
        assert unconfirmed.status_code == 400 and "Cochez la case" in unconfirmed.text
        no_kind = await http.post("/account/credential-loss", data={**body, "kind": "", "csrf_token": token})
        assert no_kind.status_code == 400 and "perte ou vol" in no_kind.text
        assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_ACTIVE
        declared = await http.post("/account/credential-loss", data={**body, "csrf_token": token})
        assert declared.status_code == 303 and declared.headers["location"] == "/account/credential-loss/done"
        gone = next(h for h in declared.headers.get_list("set-cookie") if h.startswith("so_session="))
        assert "Max-Age=0" in gone or "expires=Thu, 01 Jan 1970" in gone
        done = await http.get("/account/credential-loss/done")
        assert "Votre compte est bloqué" in done.text and 'href="/password-reset"' in done.text
        assert 'action="/logout"' not in done.text  # logged out here
    assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_BLOCKED
    assert not await session_valid(portal, person.session)
    assert not await session_valid(portal, other_device)
    assert await password_works(portal, person.email, PASSWORD) == 403  # blocked
    async with httpx.AsyncClient(base_url=portal.url) as http:
        await reset_to(portal, http, person.email, NEW_PASSWORD)
    assert await account_status(portal, person.account_id) == identity_pb2.ACCOUNT_STATUS_ACTIVE
    assert await password_works(portal, person.email, NEW_PASSWORD) == 303


@pytest.mark.req("ACC-08")
async def test_the_account_page_asks_to_log_in_first(portal: Portal) -> None:
    async with httpx.AsyncClient(base_url=portal.url) as http:
        page = await http.get("/account/credential-loss")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        token = await csrf(http, "/login")
        posted = await http.post(
            "/account/credential-loss", data={"csrf_token": token, "kind": "loss", "confirm": "yes"}
        )
        assert posted.status_code == 303 and posted.headers["location"] == "/login"


async def invite(portal: Portal, patient_email: str) -> tuple[Person, str]:
    doctor = await portal.staff(
        identity_pb2.ACCOUNT_ROLE_REFERRING_DOCTOR, f"dr-{uuid.uuid4().hex[:8]}@example.org", "Dr Adresseur"
    )
    identity = portal.as_person("identity", doctor.account_id, Role.REFERRING_DOCTOR)
    await identity.ReferProspect(
        identity_pb2.ReferProspectRequest(
            idempotency_key=f"refer-{patient_email}", first_name="Marie", last_name="Invitée",
            email=patient_email, locale="fr",
        )
    )  # fmt: skip
    return doctor, await emailed(portal, INVITATION_EMAIL, patient_email, INVITATION)


async def sign_up(http: httpx.AsyncClient, page: httpx.Response, address: str) -> httpx.Response:
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert token
    hidden = re.search(r'name="invitation" value="([^"]*)"', page.text)
    return await http.post(
        "/signup",
        data={
            "csrf_token": token.group(1),
            "email": address,
            "phone_number": "06 12 34 56 78",
            "password": PASSWORD,
            "declared_age": "40",
            "accept_terms": "yes",
            **({"invitation": hidden.group(1)} if hidden else {}),
        },
    )


@pytest.mark.req("ACC-15")
async def test_an_invitation_link_carries_its_token_to_identity_in_a_hidden_field(portal: Portal) -> None:
    address = email()
    doctor, invitation = await invite(portal, address)
    async with Browser(portal) as http:
        SPANS.clear()
        page = await http.get(f"/signup?invitation={invitation}")
        assert page.status_code == 200 and page.headers["referrer-policy"] == "strict-origin"
        assert f'name="invitation" value="{invitation}"' in page.text and 'action="/signup"' in page.text
        signed_up = await sign_up(http, page, address)
        assert signed_up.status_code == 200, signed_up.text
        assert all(invitation not in url for url in http.urls[1:])
        # The server span of the landing keeps the query's names, never its values.
        recorded = [str(v) for span in SPANS.get_finished_spans() for v in (span.attributes or {}).values()]
        assert any("invitation=REDACTED" in value for value in recorded)
        assert not any(invitation in value for value in recorded)
    identity = portal.as_person("identity", doctor.account_id, Role.REFERRING_DOCTOR)
    listed = await identity.ListReferrals(identity_pb2.ListReferralsRequest(page_size=10))
    assert [p.status for p in listed.prospects] == [identity_pb2.PROSPECT_STATUS_ACCOUNT_CREATED]


@pytest.mark.req("ACC-15")
async def test_a_stale_invitation_is_said_and_the_person_still_signs_up(portal: Portal) -> None:
    address = email()
    async with httpx.AsyncClient(base_url=portal.url) as http:
        page = await http.get(f"/signup?invitation={'B' * 43}")
        refused = await sign_up(http, page, address)
        assert refused.status_code == 400 and "invitation n&#39;est plus valable" in refused.text
        assert 'name="invitation"' not in refused.text
        signed_up = await sign_up(http, refused, address)
        assert signed_up.status_code == 200, signed_up.text
    assert await password_works(portal, address, PASSWORD) == 303
