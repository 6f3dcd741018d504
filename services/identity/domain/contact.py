"""Changing one's email or mobile phone (ACC-06; the security checklist: changes notify the user).

Every change needs a step-up passed on the current session for the CHANGE_CREDENTIALS
purpose within the step-up window: the code went to the phone on file (TOTP for staff), so
whoever holds a stolen session alone cannot move the second factor to their own phone.

A new phone number is confirmed before it is used: `start_phone_change` sends a 6-digit
code (CSPRNG, kept as an HMAC bound to the change, single use) by SMS to the NEW number;
`confirm_phone_change` with that code, on the same session and before the code expires,
switches the number. Until then the number on file stays in force (login codes still go
there). A wrong code counts toward the account lock (ACC-07) and ends the change after
MAX_WRONG_CODES; a new start replaces the pending change; codes per hour are limited.

A new email address is confirmed the same way: `start_email_change` sends the code by
email to the NEW address, `confirm_email_change` switches the login; until then the address
on file stays in force (login included), so a mistyped address cuts nobody off. The address
on file before the change and the new one are both told. An address another account uses
is refused with ALREADY_EXISTS, as before (the person is authenticated and stepped up); such
a refusal uses one of the attempts of the hour, so a session cannot probe addresses at will.
UpdateContactDetails changes nothing any more: it refuses both fields.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import notifier as templates
from services.identity.domain.accounts import (
    AccountStatus,
    get_account,
    mask_phone_for_display,
    normalize_email,
    normalize_phone,
)
from services.identity.domain.context import Deps
from services.identity.domain.events import Client, EventKind, record_event
from services.identity.domain.factors import FactorKind, SmsCodeFactor, check_code_format
from services.identity.domain.login import (
    STEP_UP,
    WRONG_CODE,
    count_failed_code,
    session_policy,
    status_refusal,
)
from services.identity.domain.notifier import Message
from services.identity.domain.secrets import new_numeric_code
from services.identity.domain.sessions import current_session
from services.identity.models import Account, Challenge
from services.shared.db import utcnow
from services.shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)

STEP_UP_PURPOSE = "CHANGE_CREDENTIALS"
# Challenge purposes of the pending changes (a phone change and an email change can be
# pending side by side; each kind has its own hourly budget).
CONTACT = "contact"
EMAIL_CHANGE = "email_change"
# Wrong codes one pending change accepts before it ends (the account lock counts too).
MAX_WRONG_CODES = 3
# Codes sent to new numbers (or new addresses) per account and hour: a stepped-up session
# must not turn the service into an SMS or email cannon aimed at strangers.
MAX_CHANGE_CODES_PER_HOUR = 5
PHONE_IN_UPDATE = (
    "phone_number cannot change here: use StartPhoneNumberChange (a code goes to the new number)"
)
EMAIL_IN_UPDATE = "email cannot change here: use StartEmailChange (a code goes to the new address)"
NOTHING_IN_UPDATE = "nothing changes here: use StartEmailChange or StartPhoneNumberChange"
EMAIL_TAKEN = "this email address is already used by another account"


async def _stepped_up_for_change(session: AsyncSession, deps: Deps, session_id: str) -> bool:
    now = utcnow()
    completed = await session.scalar(
        select(Challenge.completed_at)
        .where(
            Challenge.session_id == session_id,
            Challenge.purpose == STEP_UP,
            Challenge.step_up_purpose == STEP_UP_PURPOSE,
            Challenge.completed_at.is_not(None),
        )
        .order_by(Challenge.completed_at.desc())
        .limit(1)
    )
    return completed is not None and completed + deps.policy.step_up_window > now


async def _require_step_up(session: AsyncSession, deps: Deps, account_id: str, session_id: str) -> None:
    record = await current_session(session, account_id, session_id, session_policy(deps))
    window = record.step_up_valid_until
    if window is None or window <= utcnow() or not await _stepped_up_for_change(session, deps, session_id):
        raise FailedPrecondition("a fresh code is required first (step-up for changing credentials)")


def refuse_contact_update(email: str, phone_number: str) -> NoReturn:
    """UpdateContactDetails (deprecated): both fields change through start/confirm now."""
    if phone_number:
        raise InvalidArgument(PHONE_IN_UPDATE)
    if email:
        raise InvalidArgument(EMAIL_IN_UPDATE)
    raise InvalidArgument(NOTHING_IN_UPDATE)


async def _tell(deps: Deps, account: Account, addresses: list[str], now: datetime) -> None:
    """ACCOUNT_DETAILS_CHANGED to each address (no detail of what changed: no personal data)."""
    for index, address in enumerate(addresses):
        await deps.notifier.send(
            Message(
                template=templates.ACCOUNT_DETAILS_CHANGED,
                idempotency_key=f"identity:contact-changed:{account.account_id}:{now.isoformat()}:{index}",
                locale=account.locale,
                email=address,
                date=now,
            )
        )


async def _budget_left(session: AsyncSession, account_id: str, purpose: str, now: datetime) -> bool:
    """Whether another code (or attempt) of this kind fits in the account's hourly budget."""
    sent_lately = await session.scalar(
        select(func.count())
        .select_from(Challenge)
        .where(
            Challenge.account_id == account_id,
            Challenge.purpose == purpose,
            Challenge.created_at > now - timedelta(hours=1),
        )
    )
    return (sent_lately or 0) < MAX_CHANGE_CODES_PER_HOUR


async def _end_pending(session: AsyncSession, account_id: str, purpose: str, now: datetime) -> None:
    """A new start replaces any pending change of its kind: one awaits confirmation at a time."""
    await session.execute(
        update(Challenge)
        .where(
            Challenge.account_id == account_id,
            Challenge.purpose == purpose,
            Challenge.completed_at.is_(None),
            Challenge.expires_at > now,
        )
        .values(expires_at=now, code_hash=None)
        .execution_options(synchronize_session=False)
    )


def _change_challenge(
    purpose: str, account_id: str, session_id: str, client: Client, now: datetime, ttl: timedelta
) -> Challenge:
    return Challenge(
        challenge_id=str(uuid.uuid4()),
        purpose=purpose,
        account_id=account_id,
        session_id=session_id,
        step_up_purpose=STEP_UP_PURPOSE,
        code_hash=None,
        code_expires_at=now + ttl,
        codes_sent=1,
        last_code_sent_at=now,
        # The code is checked like an SMS code (HMAC bound to the challenge, single use),
        # whichever channel carried it.
        remaining_factors=FactorKind.SMS_CODE.value,
        failed_codes=0,
        created_at=now,
        expires_at=now + ttl,
        completed_at=None,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )


async def _answered_change(
    session: AsyncSession,
    deps: Deps,
    account_id: str,
    session_id: str,
    change_id: str,
    code: str,
    client: Client,
    purpose: str,
    noun: str,
) -> tuple[Account, Challenge] | ServiceError:
    """The locked account and its pending change once the code matched, or the refusal to
    raise once committed (a wrong code counts toward the lock and may end the change)."""
    normalized = check_code_format(FactorKind.SMS_CODE, code)
    if not change_id or len(change_id) > 36:
        raise InvalidArgument("change_id (UUID) is required")
    await current_session(session, account_id, session_id, session_policy(deps))
    # The account row first, always (same lock order as the login and step-up checks).
    account = await get_account(session, account_id, for_update=True)
    challenge = await session.get(Challenge, change_id)
    if (
        challenge is None
        or challenge.purpose != purpose
        or challenge.account_id != account_id
        or challenge.session_id != session_id
    ):
        raise NotFound(f"{noun} not found")
    await session.refresh(challenge)
    now = utcnow()
    if challenge.completed_at is not None or challenge.expires_at <= now or challenge.code_hash is None:
        raise FailedPrecondition(f"this {noun} has ended (code expired, used or replaced); start again")
    if account.status != AccountStatus.ACTIVE.value:
        return status_refusal(account)
    if not await SmsCodeFactor(deps.keys).verify(session, account, challenge, normalized):
        await count_failed_code(session, deps, account, challenge, client, EventKind.CODE_FAILED)
        if challenge.failed_codes >= MAX_WRONG_CODES:
            challenge.expires_at = now
            challenge.code_hash = None
        return Unauthenticated(WRONG_CODE)
    return account, challenge


async def _send_code(
    session: AsyncSession,
    deps: Deps,
    account: Account,
    challenge: Challenge,
    client: Client,
    session_id: str,
    *,
    phone_number: str = "",
    email: str = "",
) -> None:
    """The change's code, kept as a keyed hash, sent to the new number (SMS) or the new
    address (email), and logged as sent."""
    code = new_numeric_code()
    challenge.code_hash = deps.keys.code_hash(challenge.challenge_id, code)
    session.add(challenge)
    by_sms = bool(phone_number)
    await deps.notifier.send(
        Message(
            template=templates.VERIFICATION_CODE if by_sms else templates.EMAIL_VERIFICATION_CODE,
            idempotency_key=(
                f"identity:{'contact-code' if by_sms else 'email-change-code'}:{challenge.challenge_id}:1"
            ),
            locale=account.locale,
            phone_number=phone_number,
            email=email,
            one_time_code=code,
            date=challenge.code_expires_at,
        )
    )
    record_event(session, EventKind.CODE_SENT, account.account_id, client, session_id)
    await session.flush()


@dataclass(frozen=True, slots=True)
class PendingPhoneChange:
    change_id: str
    masked_phone_number: str
    code_expires_at: datetime


async def start_phone_change(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, phone_number: str, client: Client
) -> PendingPhoneChange:
    new_phone = normalize_phone(phone_number)
    await _require_step_up(session, deps, account_id, session_id)
    account = await get_account(session, account_id, for_update=True)
    if account.status != AccountStatus.ACTIVE.value:
        raise status_refusal(account)
    if new_phone == account.phone_number:
        raise FailedPrecondition("this is already the phone number on file")
    now = utcnow()
    if not await _budget_left(session, account_id, CONTACT, now):
        raise ResourceExhausted("too many codes sent to new numbers; try again in an hour")
    await _end_pending(session, account_id, CONTACT, now)
    ttl = deps.policy.verification_code_ttl
    challenge = _change_challenge(CONTACT, account_id, session_id, client, now, ttl)
    challenge.pending_phone_number = new_phone
    await _send_code(session, deps, account, challenge, client, session_id, phone_number=new_phone)
    return PendingPhoneChange(challenge.challenge_id, mask_phone_for_display(new_phone), now + ttl)


async def confirm_phone_change(
    session: AsyncSession,
    deps: Deps,
    account_id: str,
    session_id: str,
    change_id: str,
    code: str,
    client: Client,
) -> Account | ServiceError:
    """The account with its new number, or the refusal to raise once committed (a wrong
    code leaves its trace: counters and the authentication log)."""
    answered = await _answered_change(
        session, deps, account_id, session_id, change_id, code, client, CONTACT, "phone change"
    )
    if isinstance(answered, ServiceError):
        return answered
    account, challenge = answered
    now = utcnow()
    new_phone = challenge.pending_phone_number
    assert new_phone is not None
    challenge.completed_at = now
    challenge.remaining_factors = ""
    account.phone_number = new_phone
    account.failed_code_count = 0
    record_event(session, EventKind.CONTACT_DETAILS_CHANGED, account_id, client, session_id)
    await _tell(deps, account, [account.email], now)
    return account


@dataclass(frozen=True, slots=True)
class PendingEmailChange:
    change_id: str
    email: str
    code_expires_at: datetime


async def _email_taken(session: AsyncSession, account_id: str, normalized: str) -> bool:
    other = await session.scalar(
        select(Account.account_id).where(
            Account.email_normalized == normalized, Account.account_id != account_id
        )
    )
    return other is not None


async def start_email_change(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, email: str, client: Client
) -> PendingEmailChange | ServiceError:
    """The pending change (a code went to the new address), or the refusal to raise once
    committed: an address taken by another account uses one attempt of the hour."""
    if not email.strip():
        raise InvalidArgument("email is required")
    new_normalized = normalize_email(email)
    new_email = email.strip()
    await _require_step_up(session, deps, account_id, session_id)
    account = await get_account(session, account_id, for_update=True)
    if account.status != AccountStatus.ACTIVE.value:
        raise status_refusal(account)
    if new_normalized == account.email_normalized:
        raise FailedPrecondition("this is already the email address on file")
    now = utcnow()
    if not await _budget_left(session, account_id, EMAIL_CHANGE, now):
        raise ResourceExhausted("too many codes sent to new addresses; try again in an hour")
    ttl = deps.policy.verification_code_ttl
    challenge = _change_challenge(EMAIL_CHANGE, account_id, session_id, client, now, ttl)
    if await _email_taken(session, account_id, new_normalized):
        # Kept, ended at once and without the address, so that it counts in the budget:
        # probing which addresses have an account costs one attempt each.
        challenge.expires_at = now
        challenge.code_expires_at = now
        session.add(challenge)
        return AlreadyExists(EMAIL_TAKEN)
    await _end_pending(session, account_id, EMAIL_CHANGE, now)
    challenge.pending_email = new_email
    await _send_code(session, deps, account, challenge, client, session_id, email=new_email)
    return PendingEmailChange(challenge.challenge_id, new_email, now + ttl)


async def confirm_email_change(
    session: AsyncSession,
    deps: Deps,
    account_id: str,
    session_id: str,
    change_id: str,
    code: str,
    client: Client,
) -> Account | ServiceError:
    """The account with its new login, or the refusal to raise once committed (a wrong
    code leaves its trace: counters and the authentication log)."""
    answered = await _answered_change(
        session, deps, account_id, session_id, change_id, code, client, EMAIL_CHANGE, "email change"
    )
    if isinstance(answered, ServiceError):
        return answered
    account, challenge = answered
    now = utcnow()
    new_email = challenge.pending_email
    assert new_email is not None
    new_normalized = normalize_email(new_email)
    challenge.remaining_factors = ""
    if await _email_taken(session, account_id, new_normalized):
        # Another account took the address since the start: this change ends (its code
        # is spent already).
        challenge.expires_at = now
        return AlreadyExists(EMAIL_TAKEN)
    challenge.completed_at = now
    old_email = account.email
    account.email_normalized = new_normalized
    account.email = new_email
    account.failed_code_count = 0
    # A sign-up taking the address in the instant since the check meets the unique index
    # here, before anyone is told (the caller maps the IntegrityError to ALREADY_EXISTS).
    await session.flush()
    record_event(session, EventKind.CONTACT_DETAILS_CHANGED, account_id, client, session_id)
    await _tell(deps, account, [old_email, new_email], now)
    return account
