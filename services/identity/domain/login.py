"""Login (password, then SMS code, then TOTP for staff), resends, step-up (ACC-05..07, ACC-12).

Refusals that must leave a trace (failure counters, the authentication log, a lock) are
returned as `ServiceError` values rather than raised: the caller commits the transaction,
then raises. Everything else is raised and rolls the transaction back whole.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import notifier as templates
from services.identity.domain.accounts import (
    AccountStatus,
    find_by_email,
    get_account,
    lock_account,
    mask_phone_for_display,
    needs_totp,
)
from services.identity.domain.context import Deps
from services.identity.domain.events import Client, EventKind, record_event
from services.identity.domain.factors import FactorKind, active_totp, check_code_format, factors
from services.identity.domain.notifier import Message
from services.identity.domain.secrets import new_numeric_code
from services.identity.domain.sessions import OpenedSession, SessionPolicy, current_session, open_session
from services.identity.models import Account, Challenge
from services.shared.db import utcnow
from services.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)

LOGIN, STEP_UP, RESET = "login", "step_up", "reset"
MAX_PASSWORD_INPUT = 256
WRONG_CREDENTIALS = "email or password is wrong"
WRONG_CODE = "the code is wrong, expired or already used"


def status_refusal(account: Account) -> ServiceError:
    messages = {
        AccountStatus.LOCKED.value: (
            "the account is locked after failed attempts; reset the password or ask support"
        ),
        AccountStatus.BLOCKED.value: (
            "the account is blocked after a declared loss or theft; reset the password"
        ),
        AccountStatus.CLOSED.value: "the account is closed",
    }
    return PermissionDenied(messages.get(account.status, "the account cannot log in"))


def remaining(challenge: Challenge) -> list[FactorKind]:
    return [FactorKind(name) for name in challenge.remaining_factors.split(",") if name]


async def send_code(
    deps: Deps, account: Account, challenge: Challenge, template: templates.Template, ordinal: int
) -> str:
    code = new_numeric_code()
    challenge.code_hash = deps.keys.code_hash(challenge.challenge_id, code)
    await deps.notifier.send(
        Message(
            template=template,
            idempotency_key=f"identity:{challenge.purpose}-code:{challenge.challenge_id}:{ordinal}",
            locale=account.locale,
            phone_number=account.phone_number,
            one_time_code=code,
            date=challenge.code_expires_at,
        )
    )
    return code


async def new_challenge(
    session: AsyncSession,
    deps: Deps,
    account: Account,
    purpose: str,
    factors_due: list[FactorKind],
    client: Client,
    *,
    session_id: str | None = None,
    step_up_purpose: str | None = None,
) -> Challenge:
    now = utcnow()
    policy = deps.policy
    code_ttl = policy.login_code_ttl if purpose == LOGIN else policy.verification_code_ttl
    sends_sms = FactorKind.SMS_CODE in factors_due
    challenge = Challenge(
        challenge_id=str(uuid.uuid4()),
        purpose=purpose,
        account_id=account.account_id,
        session_id=session_id,
        step_up_purpose=step_up_purpose,
        code_hash=None,
        code_expires_at=now + code_ttl if sends_sms else None,
        codes_sent=1 if sends_sms else 0,
        last_code_sent_at=now if sends_sms else None,
        remaining_factors=",".join(f.value for f in factors_due),
        failed_codes=0,
        created_at=now,
        expires_at=now + max(policy.login_attempt_ttl, code_ttl),
        completed_at=None,
        ip_address=client.ip_address,
        user_agent=client.user_agent,
    )
    session.add(challenge)
    if sends_sms:
        template = templates.LOGIN_CODE if purpose == LOGIN else templates.VERIFICATION_CODE
        await send_code(deps, account, challenge, template, 1)
        record_event(session, EventKind.CODE_SENT, account.account_id, client, session_id)
    await session.flush()
    return challenge


async def start_login(
    session: AsyncSession, deps: Deps, email: str, password: str, client: Client
) -> str | ServiceError:
    """The login attempt id, or the refusal to raise once the transaction is committed."""
    if not email or not password or len(password) > MAX_PASSWORD_INPUT:
        # Same message as a wrong password: the shape of the input reveals nothing.
        await deps.hashing.verify(None, password[:MAX_PASSWORD_INPUT])
        record_event(session, EventKind.LOGIN_FAILED, None, client)
        return Unauthenticated(WRONG_CREDENTIALS)
    account = await find_by_email(session, email)
    # Unknown emails pay for a dummy Argon2 verify: same answer, about the same time.
    password_ok = await deps.hashing.verify(account.password_hash if account else None, password)
    if account is None:
        record_event(session, EventKind.LOGIN_FAILED, None, client)
        return Unauthenticated(WRONG_CREDENTIALS)
    if not password_ok:
        failures = await session.scalar(
            update(Account)
            .where(Account.account_id == account.account_id)
            .values(failed_login_count=Account.failed_login_count + 1)
            .returning(Account.failed_login_count)
            .execution_options(synchronize_session=False)
        )
        record_event(session, EventKind.LOGIN_FAILED, account.account_id, client)
        if failures is not None and failures >= deps.policy.max_failed_logins:
            await lock_with_notice(session, deps, account, client)
        return Unauthenticated(WRONG_CREDENTIALS)
    if account.status != AccountStatus.ACTIVE.value:
        return status_refusal(account)
    account.failed_login_count = 0
    due = [FactorKind.SMS_CODE]
    if needs_totp(account) and await active_totp(session, account.account_id) is not None:
        due.append(FactorKind.TOTP)
    challenge = await new_challenge(session, deps, account, LOGIN, due, client)
    return challenge.challenge_id


async def lock_with_notice(session: AsyncSession, deps: Deps, account: Account, client: Client) -> None:
    await session.refresh(account)
    if account.status != AccountStatus.ACTIVE.value:
        return
    await lock_account(session, account, client)
    await deps.notifier.send(
        Message(
            template=templates.ACCOUNT_LOCKED,
            idempotency_key=f"identity:account-locked:{account.account_id}:{uuid.uuid4()}",
            locale=account.locale,
            email=account.email,
            link=f"{deps.policy.public_base_url}/password-reset",
        )
    )


@dataclass(frozen=True, slots=True)
class AttemptView:
    attempt_id: str
    remaining: list[FactorKind]
    code_expires_at: datetime | None
    masked_phone: str


async def view_attempt(session: AsyncSession, attempt_id: str) -> AttemptView:
    challenge = await session.get(Challenge, attempt_id)
    if challenge is None or challenge.account_id is None:
        raise NotFound("login attempt not found")
    account = await get_account(session, challenge.account_id)
    return AttemptView(
        challenge.challenge_id,
        remaining(challenge),
        challenge.code_expires_at,
        mask_phone_for_display(account.phone_number),
    )


async def open_challenge(
    session: AsyncSession, challenge_id: str, purpose: str, account_id: str | None = None
) -> Challenge:
    if not challenge_id or len(challenge_id) > 36:
        raise InvalidArgument("a challenge id (UUID) is required")
    challenge = await session.get(Challenge, challenge_id)
    if challenge is None or challenge.purpose != purpose or challenge.account_id is None:
        raise NotFound(f"{purpose.replace('_', '-')} not found")
    if account_id is not None and challenge.account_id != account_id:
        raise NotFound(f"{purpose.replace('_', '-')} not found")
    if challenge.completed_at is not None or challenge.expires_at <= utcnow():
        raise FailedPrecondition(f"this {purpose.replace('_', '-')} has ended; start again")
    return challenge


async def count_failed_code(
    session: AsyncSession,
    deps: Deps,
    account: Account,
    challenge: Challenge | None,
    client: Client,
    kind: EventKind,
) -> None:
    failures = await session.scalar(
        update(Account)
        .where(Account.account_id == account.account_id)
        .values(failed_code_count=Account.failed_code_count + 1)
        .returning(Account.failed_code_count)
        .execution_options(synchronize_session=False)
    )
    if challenge is not None:
        challenge.failed_codes += 1
    record_event(session, kind, account.account_id, client, challenge.session_id if challenge else None)
    if failures is not None and failures >= deps.policy.max_failed_codes:
        await lock_with_notice(session, deps, account, client)


@dataclass(frozen=True, slots=True)
class LoginProgress:
    completed: bool
    remaining: list[FactorKind]
    opened: OpenedSession | None = None
    session_expires_at: datetime | None = None
    must_change_password: bool = False
    must_enrol_totp: bool = False


async def verify_login_code(
    session: AsyncSession, deps: Deps, attempt_id: str, factor: FactorKind, code: str, client: Client
) -> LoginProgress | ServiceError:
    normalized = check_code_format(factor, code)
    challenge = await open_challenge(session, attempt_id, LOGIN)
    assert challenge.account_id is not None
    # The account row is locked first, always: concurrent codes for one account then
    # queue instead of deadlocking on the account and challenge rows.
    account = await get_account(session, challenge.account_id, for_update=True)
    await session.refresh(challenge)
    if account.status != AccountStatus.ACTIVE.value:
        return status_refusal(account)
    due = remaining(challenge)
    expected = due[0] if due else None
    satisfies = FactorKind.TOTP if factor is FactorKind.RECOVERY_CODE else factor
    if expected is None or satisfies is not expected:
        raise FailedPrecondition(f"the next factor expected is {expected.value if expected else 'none'}")
    accepted = await factors(deps.keys)[factor].verify(session, account, challenge, normalized)
    if not accepted:
        await count_failed_code(session, deps, account, challenge, client, EventKind.CODE_FAILED)
        return Unauthenticated(WRONG_CODE)
    if factor is FactorKind.RECOVERY_CODE:
        record_event(session, EventKind.RECOVERY_CODE_USED, account.account_id, client)
    due = due[1:]
    challenge.remaining_factors = ",".join(f.value for f in due)
    if due:
        return LoginProgress(completed=False, remaining=due)
    challenge.completed_at = utcnow()
    account.failed_code_count = 0
    account.failed_login_count = 0
    account.last_activity_at = challenge.completed_at
    method = "PASSWORD_AND_TOTP" if satisfies is FactorKind.TOTP else "PASSWORD_AND_SMS_CODE"
    opened = await open_session(session, account.account_id, method, client)
    record_event(session, EventKind.LOGIN_SUCCEEDED, account.account_id, client, opened.session_id)
    enrolled = await active_totp(session, account.account_id) is not None
    return LoginProgress(
        completed=True,
        remaining=[],
        opened=opened,
        session_expires_at=challenge.completed_at + deps.policy.absolute_timeout,
        must_change_password=account.must_change_password,
        must_enrol_totp=needs_totp(account) and not enrolled,
    )


@dataclass(frozen=True, slots=True)
class Resent:
    code_expires_at: datetime
    next_resend_allowed_at: datetime


async def resend_code(session: AsyncSession, deps: Deps, challenge_id: str, purpose: str) -> Resent:
    """A new code replaces the previous one; the failure counters are never touched."""
    challenge = await open_challenge(session, challenge_id, purpose)
    assert challenge.account_id is not None
    account = await get_account(session, challenge.account_id)
    if account.status != AccountStatus.ACTIVE.value and purpose != RESET:
        raise status_refusal(account)
    if FactorKind.SMS_CODE not in remaining(challenge):
        raise FailedPrecondition("no SMS code is due for this attempt")
    now = utcnow()
    policy = deps.policy
    if challenge.codes_sent >= policy.max_codes_per_attempt:
        raise ResourceExhausted("too many codes for this attempt; start again later")
    if challenge.last_code_sent_at is not None and now < challenge.last_code_sent_at + policy.resend_interval:
        raise ResourceExhausted("a code was sent a moment ago; wait before asking for another")
    ttl = policy.login_code_ttl if purpose == LOGIN else policy.verification_code_ttl
    ordinal = challenge.codes_sent + 1
    # Only one concurrent resend wins the ordinal.
    result = await session.execute(
        update(Challenge)
        .where(Challenge.challenge_id == challenge.challenge_id, Challenge.codes_sent == challenge.codes_sent)
        .values(codes_sent=ordinal, last_code_sent_at=now, code_expires_at=now + ttl)
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        raise ResourceExhausted("a code was sent a moment ago; wait before asking for another")
    challenge.codes_sent, challenge.last_code_sent_at, challenge.code_expires_at = ordinal, now, now + ttl
    template = templates.LOGIN_CODE if purpose == LOGIN else templates.VERIFICATION_CODE
    await send_code(deps, account, challenge, template, ordinal)
    record_event(session, EventKind.CODE_SENT, account.account_id, session_id=challenge.session_id)
    return Resent(now + ttl, now + policy.resend_interval)


async def start_step_up(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, purpose: str
) -> Challenge:
    """ACC-06: a fresh code before the report or documents: SMS for patients, TOTP for staff."""
    await current_session(session, account_id, session_id, session_policy(deps))
    account = await get_account(session, account_id)
    if account.status != AccountStatus.ACTIVE.value:
        raise status_refusal(account)
    enrolled = await active_totp(session, account_id) is not None
    factor = FactorKind.TOTP if needs_totp(account) and enrolled else FactorKind.SMS_CODE
    return await new_challenge(
        session, deps, account, STEP_UP, [factor], Client(), session_id=session_id, step_up_purpose=purpose
    )


def session_policy(deps: Deps) -> SessionPolicy:
    return SessionPolicy(deps.policy.idle_timeout, deps.policy.absolute_timeout)


async def verify_step_up(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, step_up_id: str, code: str
) -> datetime | ServiceError:
    record = await current_session(session, account_id, session_id, session_policy(deps))
    account = await get_account(session, account_id, for_update=True)
    challenge = await open_challenge(session, step_up_id, STEP_UP, account_id)
    if challenge.session_id != session_id:
        raise NotFound("step-up not found")
    factor = remaining(challenge)[0]
    kind = FactorKind.RECOVERY_CODE if factor is FactorKind.TOTP and "-" in code else factor
    normalized = check_code_format(kind, code)
    if not await factors(deps.keys)[kind].verify(session, account, challenge, normalized):
        await count_failed_code(session, deps, account, challenge, Client(), EventKind.STEP_UP_FAILED)
        return Unauthenticated(WRONG_CODE)
    now = utcnow()
    challenge.completed_at = now
    challenge.remaining_factors = ""
    record.step_up_valid_until = now + deps.policy.step_up_window
    account.failed_code_count = 0
    record_event(session, EventKind.STEP_UP_SUCCEEDED, account_id, session_id=session_id)
    return record.step_up_valid_until
