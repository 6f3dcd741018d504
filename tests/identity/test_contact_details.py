"""Changing one's email or phone behind a step-up (ACC-06), the new address or number confirmed
by a code sent to it, every change notified and logged (SEC-01);
the public keys that verify internal tokens. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import uuid
from datetime import timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy import update

from services.identity.domain import contact
from services.identity.models import Challenge
from services.shared.auth import Role
from services.shared.db import session_factory, utcnow
from tests.identity.conftest import Identity, expect

VERIFICATION = npb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
EMAIL_CODE = npb.NOTIFICATION_TEMPLATE_EMAIL_VERIFICATION_CODE
LOGIN_CODE = npb.NOTIFICATION_TEMPLATE_LOGIN_CODE
CHANGED = npb.NOTIFICATION_TEMPLATE_ACCOUNT_DETAILS_CHANGED
FP = grpc.StatusCode.FAILED_PRECONDITION


async def step_up(identity: Identity, me: Any, key: str, purpose: Any) -> None:
    started = await me.StartStepUp(pb.StartStepUpRequest(idempotency_key=key, purpose=purpose))
    await me.VerifyStepUp(
        pb.VerifyStepUpRequest(step_up_id=started.step_up_id, code=identity.code(VERIFICATION))
    )


def change(key: str, email: str = "", phone: str = "") -> pb.UpdateContactDetailsRequest:
    return pb.UpdateContactDetailsRequest(
        idempotency_key=key,
        email=email,
        phone_number=phone,
        client=pb.ClientInfo(ip_address="203.0.113.9", user_agent="pytest"),
    )


async def one_change_logged_after_a_wrong_code(me: Any, account_id: str) -> None:
    """The authentication log: one contact change, from the client's address, after a
    wrong code."""
    events = await me.ListAuthenticationEvents(pb.ListAuthenticationEventsRequest(account_id=account_id))
    kinds = [e.kind for e in events.events]
    assert kinds.count(pb.AUTHENTICATION_EVENT_KIND_CONTACT_DETAILS_CHANGED) == 1
    assert pb.AUTHENTICATION_EVENT_KIND_CODE_FAILED in kinds
    changed = [e for e in events.events if e.kind == pb.AUTHENTICATION_EVENT_KIND_CONTACT_DETAILS_CHANGED]
    assert changed[0].ip_address == "203.0.113.9"


@pytest.mark.req("ACC-06")
async def test_update_contact_details_no_longer_changes_anything(identity: Identity) -> None:
    account_id, me, _ = await stepped_up(identity, "deprecated@example.org")
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    # Even stepped up: an email goes through StartEmailChange, a phone through
    # StartPhoneNumberChange, each confirmed by a code sent to the new address or number.
    details = await expect(me.UpdateContactDetails(change("c-1", email="moved@example.org")), invalid)
    assert "StartEmailChange" in details
    details = await expect(me.UpdateContactDetails(change("c-2", phone="+33 6 99 88 77 66")), invalid)
    assert "StartPhoneNumberChange" in details
    await expect(me.UpdateContactDetails(change("c-3")), invalid)
    got = await me.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert got.account.email == "deprecated@example.org"
    assert not identity.sent_of(CHANGED)
    # Services have no contact details to change.
    await expect(
        identity.gateway.UpdateContactDetails(change("c-8", email="svc@example.org")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect(
        identity.gateway.StartPhoneNumberChange(start("p-svc", "+33 6 11 11 11 11")),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect(
        identity.gateway.StartEmailChange(start_email("e-svc", "svc@example.org")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


CLIENT = pb.ClientInfo(ip_address="203.0.113.9", user_agent="pytest")
NEW_PHONE = "+33699887766"


def start(key: str, phone: str = "+33 6 99 88 77 66") -> pb.StartPhoneNumberChangeRequest:
    return pb.StartPhoneNumberChangeRequest(idempotency_key=key, phone_number=phone, client=CLIENT)


def confirm(key: str, change_id: str, code: str) -> pb.ConfirmPhoneNumberChangeRequest:
    return pb.ConfirmPhoneNumberChangeRequest(
        idempotency_key=key, change_id=change_id, code=code, client=CLIENT
    )


def wrong(code: str) -> str:
    return f"{(int(code) + 1) % 1_000_000:06d}"


async def stepped_up(identity: Identity, email: str) -> tuple[str, Any, str]:
    account_id = await identity.sign_up(email)
    done = await identity.log_in(email)
    me = await identity.as_session(done.session_token)
    await step_up(identity, me, f"s-{email}", pb.STEP_UP_PURPOSE_CHANGE_CREDENTIALS)
    return account_id, me, done.session_token


async def phone_on_file(identity: Identity, me: Any, account_id: str) -> str:
    return str((await me.GetAccount(pb.GetAccountRequest(account_id=account_id))).account.phone_number)


@pytest.mark.req("ACC-06")
@pytest.mark.req("SEC-01")
async def test_a_new_phone_is_confirmed_by_a_code_sent_to_it_before_it_is_used(identity: Identity) -> None:
    account_id = await identity.sign_up("phone@example.org")
    done = await identity.log_in("phone@example.org")
    me = await identity.as_session(done.session_token)

    # The step-up for changing credentials comes first.
    await expect(me.StartPhoneNumberChange(start("p-0")), FP)
    await step_up(identity, me, "s-change", pb.STEP_UP_PURPOSE_CHANGE_CREDENTIALS)
    await expect(
        me.StartPhoneNumberChange(start("p-1", "+33 1 23 45 67 89")), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect(me.StartPhoneNumberChange(start("p-2", "+33 6 12 34 56 78")), FP)  # the same number

    started = await me.StartPhoneNumberChange(start("p-3"))
    assert started.masked_phone_number.endswith("66")
    assert NEW_PHONE not in started.masked_phone_number
    sms = identity.last(VERIFICATION)
    assert sms.phone_number == NEW_PHONE
    code = sms.variables.one_time_code
    assert len(code) == 6 and code.isdigit()
    # A retried start sends no second code.
    sent = len(identity.sent_of(VERIFICATION))
    assert (await me.StartPhoneNumberChange(start("p-3"))).change_id == started.change_id
    assert len(identity.sent_of(VERIFICATION)) == sent

    # Until confirmed, the number on file stays in force: login codes still go there.
    assert await phone_on_file(identity, me, account_id) == "+33612345678"
    await identity.start_login("phone@example.org")
    assert identity.last(npb.NOTIFICATION_TEMPLATE_LOGIN_CODE).phone_number == "+33612345678"

    # Another session of the same person cannot confirm this change.
    other = await identity.as_session(await identity.open_session(account_id))
    await expect(
        other.ConfirmPhoneNumberChange(confirm("k-other", started.change_id, code)), grpc.StatusCode.NOT_FOUND
    )
    # A wrong code is refused and logged; the right one switches the number.
    await expect(
        me.ConfirmPhoneNumberChange(confirm("k-1", started.change_id, wrong(code))),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect(
        me.ConfirmPhoneNumberChange(confirm("k-2", started.change_id, "12ab")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert await phone_on_file(identity, me, account_id) == "+33612345678"
    sent_before = len(identity.recorder.sent)
    confirmed = await me.ConfirmPhoneNumberChange(confirm("k-3", started.change_id, code))
    assert confirmed.account.phone_number == NEW_PHONE
    told = [m for m in identity.recorder.sent[sent_before:] if m.template == CHANGED]
    assert [m.email for m in told] == ["phone@example.org"]
    assert not told[0].variables.one_time_code
    # A retried confirmation answers again, without a second change or email; the code
    # itself is single-use.
    again = await me.ConfirmPhoneNumberChange(confirm("k-3", started.change_id, code))
    assert again.account.phone_number == NEW_PHONE
    assert len([m for m in identity.recorder.sent[sent_before:] if m.template == CHANGED]) == 1
    await expect(me.ConfirmPhoneNumberChange(confirm("k-4", started.change_id, code)), FP)

    # The next login code goes to the new number.
    attempt = await identity.start_login("phone@example.org")
    assert identity.last(npb.NOTIFICATION_TEMPLATE_LOGIN_CODE).phone_number == NEW_PHONE
    assert attempt.masked_phone_number.endswith("66")

    await one_change_logged_after_a_wrong_code(me, account_id)


@pytest.mark.req("ACC-06")
@pytest.mark.req("ACC-07")
async def test_a_phone_change_ends_after_three_wrong_codes_or_when_its_code_expires(
    identity: Identity,
) -> None:
    account_id, me, _ = await stepped_up(identity, "attempts@example.org")
    started = await me.StartPhoneNumberChange(start("a-1"))
    code = identity.code(VERIFICATION)
    for attempt in range(3):
        await expect(
            me.ConfirmPhoneNumberChange(confirm(f"w-{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    # Exhausted: even the right code is refused now, and the old number stays.
    await expect(me.ConfirmPhoneNumberChange(confirm("w-right", started.change_id, code)), FP)
    assert await phone_on_file(identity, me, account_id) == "+33612345678"

    # An expired code: the change has ended.
    started = await me.StartPhoneNumberChange(start("a-2"))
    code = identity.code(VERIFICATION)
    async with session_factory(identity.engine).begin() as session:
        past = utcnow() - timedelta(seconds=1)
        await session.execute(
            update(Challenge)
            .where(Challenge.challenge_id == started.change_id)
            .values(code_expires_at=past, expires_at=past)
        )
    await expect(me.ConfirmPhoneNumberChange(confirm("e-1", started.change_id, code)), FP)
    assert await phone_on_file(identity, me, account_id) == "+33612345678"

    # A new start replaces the pending change: the first code no longer works.
    first = await me.StartPhoneNumberChange(start("a-3", "+33 6 55 44 33 22"))
    first_code = identity.code(VERIFICATION)
    second = await me.StartPhoneNumberChange(start("a-4"))
    second_code = identity.code(VERIFICATION)
    await expect(me.ConfirmPhoneNumberChange(confirm("r-1", first.change_id, first_code)), FP)
    done = await me.ConfirmPhoneNumberChange(confirm("r-2", second.change_id, second_code))
    assert done.account.phone_number == NEW_PHONE
    # Five codes to new numbers in an hour at most.
    await me.StartPhoneNumberChange(start("a-5", "+33 6 55 44 33 22"))
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    await expect(me.StartPhoneNumberChange(start("a-6", "+33 6 55 44 33 22")), exhausted)
    # A wrong change id.
    await expect(
        me.ConfirmPhoneNumberChange(confirm("x-1", str(uuid.uuid4()), code)), grpc.StatusCode.NOT_FOUND
    )
    await expect(me.ConfirmPhoneNumberChange(confirm("x-2", "", code)), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.req("ACC-07")
async def test_wrong_codes_on_a_phone_change_count_toward_the_account_lock(identity: Identity) -> None:
    account_id, me, _ = await stepped_up(identity, "lock@example.org")
    started = await me.StartPhoneNumberChange(start("l-1"))
    code = identity.code(VERIFICATION)
    for attempt in range(3):
        await expect(
            me.ConfirmPhoneNumberChange(confirm(f"l-w{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    started = await me.StartPhoneNumberChange(start("l-2"))
    code = identity.code(VERIFICATION)
    for attempt in range(2):
        await expect(
            me.ConfirmPhoneNumberChange(confirm(f"l-x{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    account = await identity.ops.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert account.account.status == pb.ACCOUNT_STATUS_LOCKED
    assert account.account.phone_number == "+33612345678"
    assert identity.last(npb.NOTIFICATION_TEMPLATE_ACCOUNT_LOCKED).email == "lock@example.org"


def start_email(key: str, email: str = "New.Owner@example.org") -> pb.StartEmailChangeRequest:
    return pb.StartEmailChangeRequest(idempotency_key=key, email=email, client=CLIENT)


def confirm_email(key: str, change_id: str, code: str) -> pb.ConfirmEmailChangeRequest:
    return pb.ConfirmEmailChangeRequest(idempotency_key=key, change_id=change_id, code=code, client=CLIENT)


async def email_on_file(me: Any, account_id: str) -> str:
    return str((await me.GetAccount(pb.GetAccountRequest(account_id=account_id))).account.email)


async def login_code_goes_out(identity: Identity, email: str) -> bool:
    """Whether a login with this address reaches the code step (an unknown address gets the
    same refusal as a wrong password, and no code)."""
    before = len(identity.sent_of(LOGIN_CODE))
    refusal: grpc.StatusCode | None = None
    try:
        await identity.start_login(email)
    except grpc.aio.AioRpcError as error:
        refusal = error.code()
    assert refusal in (None, grpc.StatusCode.UNAUTHENTICATED)
    return len(identity.sent_of(LOGIN_CODE)) > before


@pytest.mark.req("ACC-06")
@pytest.mark.req("SEC-01")
async def test_a_new_email_is_confirmed_by_a_code_sent_to_it_before_it_replaces_the_old_one(
    identity: Identity,
) -> None:
    account_id = await identity.sign_up("owner@example.org")
    await identity.sign_up("taken@example.org")
    done = await identity.log_in("owner@example.org")
    me = await identity.as_session(done.session_token)

    # No fresh code yet, or a fresh code for another purpose: refused.
    await expect(me.StartEmailChange(start_email("e-0")), FP)
    await step_up(identity, me, "s-report", pb.STEP_UP_PURPOSE_VIEW_REPORT)
    await expect(me.StartEmailChange(start_email("e-1")), FP)
    await step_up(identity, me, "s-change", pb.STEP_UP_PURPOSE_CHANGE_CREDENTIALS)

    # Bad input, the address on file (whatever its case), an address another account uses.
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    await expect(me.StartEmailChange(start_email("e-2", "")), invalid)
    await expect(me.StartEmailChange(start_email("e-3", "not-an-email")), invalid)
    await expect(me.StartEmailChange(start_email("e-4", "OWNER@example.org")), FP)
    await expect(me.StartEmailChange(start_email("e-5", "TAKEN@example.org")), grpc.StatusCode.ALREADY_EXISTS)
    assert not identity.sent_of(EMAIL_CODE)

    started = await me.StartEmailChange(start_email("e-6"))
    assert started.email == "New.Owner@example.org"
    assert started.code_expires_at.seconds > 0
    sent = identity.last(EMAIL_CODE)
    assert sent.email == "New.Owner@example.org" and not sent.phone_number
    assert sent.channel == npb.CHANNEL_EMAIL
    code = sent.variables.one_time_code
    assert len(code) == 6 and code.isdigit()
    # Only the code and its expiry: no name, no link.
    assert not sent.variables.first_name and not sent.variables.link
    assert sent.variables.date.seconds == started.code_expires_at.seconds
    # A retried start sends no second code.
    assert (await me.StartEmailChange(start_email("e-6"))).change_id == started.change_id
    assert len(identity.sent_of(EMAIL_CODE)) == 1

    # Until confirmed, the address on file stays the login; the new one is not one yet.
    assert await email_on_file(me, account_id) == "owner@example.org"
    assert await login_code_goes_out(identity, "owner@example.org")
    assert not await login_code_goes_out(identity, "new.owner@example.org")

    # Another session of the same person cannot confirm this change.
    other = await identity.as_session(await identity.open_session(account_id))
    await expect(
        other.ConfirmEmailChange(confirm_email("k-other", started.change_id, code)), grpc.StatusCode.NOT_FOUND
    )
    # Nor can a phone-change confirmation answer it.
    await expect(
        me.ConfirmPhoneNumberChange(confirm("k-phone", started.change_id, code)), grpc.StatusCode.NOT_FOUND
    )
    # A wrong code is refused and logged; the right one switches the address.
    await expect(
        me.ConfirmEmailChange(confirm_email("k-1", started.change_id, wrong(code))),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await expect(me.ConfirmEmailChange(confirm_email("k-2", started.change_id, "12ab")), invalid)
    assert await email_on_file(me, account_id) == "owner@example.org"
    sent_before = len(identity.recorder.sent)
    confirmed = await me.ConfirmEmailChange(confirm_email("k-3", started.change_id, code))
    assert confirmed.account.email == "New.Owner@example.org"
    # Both the old and the new address are told, without any detail or code.
    told = [m for m in identity.recorder.sent[sent_before:] if m.template == CHANGED]
    assert sorted(m.email for m in told) == ["New.Owner@example.org", "owner@example.org"]
    assert not any(m.variables.one_time_code for m in told)
    # A retried confirmation answers again, without a second change or email; the code
    # itself is single-use.
    again = await me.ConfirmEmailChange(confirm_email("k-3", started.change_id, code))
    assert again.account.email == "New.Owner@example.org"
    assert len([m for m in identity.recorder.sent[sent_before:] if m.template == CHANGED]) == 2
    await expect(me.ConfirmEmailChange(confirm_email("k-4", started.change_id, code)), FP)

    # The new address is the login now (matched whatever its case); the old one is not.
    assert (await identity.log_in("new.owner@example.org")).completed
    assert not await login_code_goes_out(identity, "owner@example.org")

    await one_change_logged_after_a_wrong_code(me, account_id)


@pytest.mark.req("ACC-06")
@pytest.mark.req("ACC-07")
async def test_an_email_change_ends_after_three_wrong_codes_or_when_its_code_expires(
    identity: Identity,
) -> None:
    account_id, me, _ = await stepped_up(identity, "mail-attempts@example.org")
    started = await me.StartEmailChange(start_email("a-1"))
    code = identity.code(EMAIL_CODE)
    for attempt in range(3):
        await expect(
            me.ConfirmEmailChange(confirm_email(f"w-{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    # Exhausted: even the right code is refused now, and the old address stays.
    await expect(me.ConfirmEmailChange(confirm_email("w-right", started.change_id, code)), FP)
    assert await email_on_file(me, account_id) == "mail-attempts@example.org"

    # An expired code: the change has ended.
    started = await me.StartEmailChange(start_email("a-2"))
    code = identity.code(EMAIL_CODE)
    async with session_factory(identity.engine).begin() as session:
        past = utcnow() - timedelta(seconds=1)
        await session.execute(
            update(Challenge)
            .where(Challenge.challenge_id == started.change_id)
            .values(code_expires_at=past, expires_at=past)
        )
    await expect(me.ConfirmEmailChange(confirm_email("e-1", started.change_id, code)), FP)
    assert await email_on_file(me, account_id) == "mail-attempts@example.org"

    # A new start replaces the pending email change (a pending phone change stays).
    phone = await me.StartPhoneNumberChange(start("p-1"))
    phone_code = identity.code(VERIFICATION)
    first = await me.StartEmailChange(start_email("a-3", "typo@exmaple.org"))
    first_code = identity.code(EMAIL_CODE)
    second = await me.StartEmailChange(start_email("a-4"))
    second_code = identity.code(EMAIL_CODE)
    await expect(me.ConfirmEmailChange(confirm_email("r-1", first.change_id, first_code)), FP)
    done = await me.ConfirmEmailChange(confirm_email("r-2", second.change_id, second_code))
    assert done.account.email == "New.Owner@example.org"
    assert (
        await me.ConfirmPhoneNumberChange(confirm("r-3", phone.change_id, phone_code))
    ).account.phone_number
    # Five attempts an hour at most, an address in use counting as one (probing which
    # addresses have an account is not free).
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    await identity.sign_up("someone.else@example.org")
    await expect(
        me.StartEmailChange(start_email("a-5", "someone.else@example.org")), grpc.StatusCode.ALREADY_EXISTS
    )
    await expect(me.StartEmailChange(start_email("a-6", "later@example.org")), exhausted)
    await expect(me.StartEmailChange(start_email("a-7", "someone.else@example.org")), exhausted)
    # A wrong change id.
    await expect(
        me.ConfirmEmailChange(confirm_email("x-1", str(uuid.uuid4()), code)), grpc.StatusCode.NOT_FOUND
    )
    await expect(me.ConfirmEmailChange(confirm_email("x-2", "", code)), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.req("ACC-06")
async def test_an_address_taken_before_the_confirmation_ends_the_change(identity: Identity) -> None:
    account_id, me, _ = await stepped_up(identity, "slow@example.org")
    started = await me.StartEmailChange(start_email("t-1", "wanted@example.org"))
    code = identity.code(EMAIL_CODE)
    # Someone signs up with that address in the meantime.
    await identity.sign_up("Wanted@example.org")
    await expect(
        me.ConfirmEmailChange(confirm_email("t-2", started.change_id, code)), grpc.StatusCode.ALREADY_EXISTS
    )
    assert await email_on_file(me, account_id) == "slow@example.org"
    assert not identity.sent_of(CHANGED)
    await expect(me.ConfirmEmailChange(confirm_email("t-3", started.change_id, code)), FP)


@pytest.mark.req("ACC-06")
async def test_a_sign_up_in_the_instant_between_check_and_write_meets_the_unique_index(
    identity: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    account_id, me, _ = await stepped_up(identity, "instant@example.org")
    started = await me.StartEmailChange(start_email("i-1", "race@example.org"))
    code = identity.code(EMAIL_CODE)
    await identity.sign_up("race@example.org")

    async def not_seen_yet(*args: object) -> bool:
        return False  # the sign-up commits right after this check

    monkeypatch.setattr(contact, "_email_taken", not_seen_yet)
    await expect(
        me.ConfirmEmailChange(confirm_email("i-2", started.change_id, code)), grpc.StatusCode.ALREADY_EXISTS
    )
    assert await email_on_file(me, account_id) == "instant@example.org"
    assert not identity.sent_of(CHANGED)  # nobody was told of a change that did not happen


@pytest.mark.req("ACC-07")
async def test_wrong_codes_on_an_email_change_count_toward_the_account_lock(identity: Identity) -> None:
    account_id, me, _ = await stepped_up(identity, "mail-lock@example.org")
    started = await me.StartEmailChange(start_email("l-1"))
    code = identity.code(EMAIL_CODE)
    for attempt in range(3):
        await expect(
            me.ConfirmEmailChange(confirm_email(f"l-w{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    started = await me.StartEmailChange(start_email("l-2"))
    code = identity.code(EMAIL_CODE)
    for attempt in range(2):
        await expect(
            me.ConfirmEmailChange(confirm_email(f"l-x{attempt}", started.change_id, wrong(code))),
            grpc.StatusCode.UNAUTHENTICATED,
        )
    account = await identity.ops.GetAccount(pb.GetAccountRequest(account_id=account_id))
    assert account.account.status == pb.ACCOUNT_STATUS_LOCKED
    assert account.account.email == "mail-lock@example.org"
    # The lock notice goes to the address on file, never to the pending one.
    assert identity.last(npb.NOTIFICATION_TEMPLATE_ACCOUNT_LOCKED).email == "mail-lock@example.org"
    # Locked: even the right code no longer changes the address.
    await expect(
        me.ConfirmEmailChange(confirm_email("l-right", started.change_id, code)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


async def test_the_token_signing_keys_are_listed_with_their_key_ids(identity: Identity) -> None:
    listed = await identity.as_role("someone", Role.PATIENT).ListTokenSigningKeys(
        pb.ListTokenSigningKeysRequest()
    )
    assert listed.keys[0].key_id == "identity"
    assert sorted(k.key_id for k in listed.keys) == ["gateway", "identity", "ops", "worker"]
    assert {k.algorithm for k in listed.keys} == {"Ed25519"}
    # The listed key verifies what its issuer signs: a person token identity minted.
    session = await identity.open_session(await identity.sign_up("keys@example.org"))
    valid = await identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=session))
    header, payload, signature = valid.internal_token.split(".")
    key = Ed25519PublicKey.from_public_bytes(listed.keys[0].public_key)
    key.verify(
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), f"{header}.{payload}".encode()
    )
