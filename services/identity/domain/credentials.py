"""Credential incidents and changes (ACC-08..10), and TOTP enrolment (ACC-12)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pyotp
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import notifier as templates
from services.identity.domain.accounts import (
    AccountStatus,
    close_pending_challenges,
    find_by_email,
    get_account,
    mask_phone_for_display,
    normalize_phone,
    set_status,
)
from services.identity.domain.context import Deps
from services.identity.domain.events import NO_CLIENT, Client, EventKind, record_event
from services.identity.domain.factors import (
    FactorKind,
    accept_totp,
    active_totp,
    check_code_format,
    factors,
    issue_recovery_codes,
)
from services.identity.domain.login import (
    RESET,
    WRONG_CODE,
    count_failed_code,
    new_challenge,
    open_challenge,
    session_policy,
)
from services.identity.domain.notifier import Message
from services.identity.domain.passwords import check_password_policy
from services.identity.domain.secrets import new_url_token
from services.identity.domain.sessions import current_session, end_all_sessions
from services.identity.models import Account, ResetLink, TotpFactor
from services.shared.db import utcnow
from services.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unauthenticated,
)

MAX_TOKEN_INPUT = 128


async def _set_password(
    session: AsyncSession, deps: Deps, account: Account, new_password: str, client: Client
) -> datetime:
    now = utcnow()
    account.password_hash = await deps.hashing.hash(new_password)
    account.password_changed_at = now
    account.must_change_password = False
    record_event(session, EventKind.PASSWORD_CHANGED, account.account_id, client)
    await deps.notifier.send(
        Message(
            template=templates.ACCOUNT_DETAILS_CHANGED,
            idempotency_key=f"identity:password-changed:{account.account_id}:{now.isoformat()}",
            locale=account.locale,
            email=account.email,
            date=now,
        )
    )
    return now


async def change_password(
    session: AsyncSession,
    deps: Deps,
    account_id: str,
    session_id: str,
    current: str,
    new: str,
    client: Client,
) -> tuple[datetime, int] | ServiceError:
    await current_session(session, account_id, session_id, session_policy(deps))
    check_password_policy(new)
    account = await get_account(session, account_id)
    if not await deps.hashing.verify(account.password_hash, current[:256]):
        await session.execute(
            update(Account)
            .where(Account.account_id == account_id)
            .values(failed_login_count=Account.failed_login_count + 1)
            .execution_options(synchronize_session=False)
        )
        record_event(session, EventKind.LOGIN_FAILED, account_id, client, session_id)
        return Unauthenticated("the current password is wrong")
    if current == new:
        raise InvalidArgument("the new password must differ from the current one")
    changed_at = await _set_password(session, deps, account, new, client)
    ended = await end_all_sessions(session, account_id, "password_changed", keep_session_id=session_id)
    return changed_at, ended


async def declare_credential_loss(
    session: AsyncSession, account_id: str, client: Client
) -> tuple[datetime, int]:
    """ACC-08: takes effect at once: blocked, every session and pending attempt ended."""
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    await set_status(session, account, AccountStatus.BLOCKED)
    ended = await end_all_sessions(session, account_id, "credentials_lost")
    await close_pending_challenges(session, account_id)
    record_event(session, EventKind.CREDENTIALS_DECLARED_LOST, account_id, client)
    assert account.status_changed_at is not None
    return account.status_changed_at, ended


def _link_message(
    deps: Deps, account: Account, link: ResetLink, token: str, template: templates.Template
) -> Message:
    return Message(
        template=template,
        idempotency_key=f"identity:{link.kind}-link:{link.link_id}",
        locale=account.locale,
        email=account.email,
        link=f"{deps.policy.public_base_url}/password-reset?token={token}",
        date=link.expires_at,
    )


def _new_link(deps: Deps, account_id: str, kind: str, ttl: timedelta) -> tuple[ResetLink, str]:
    """A link row and its token (only the token's keyed hash is stored)."""
    token = new_url_token()
    now = utcnow()
    link = ResetLink(
        link_id=str(uuid.uuid4()),
        account_id=account_id,
        token_hash=deps.keys.token_hash(token),
        kind=kind,
        created_at=now,
        expires_at=now + ttl,
        redeemed_at=None,
        challenge_id=None,
    )
    return link, token


async def _email_link(
    session: AsyncSession,
    deps: Deps,
    account: Account,
    kind: str,
    ttl: timedelta,
    template: templates.Template,
) -> ResetLink:
    link, token = _new_link(deps, account.account_id, kind, ttl)
    session.add(link)
    await session.flush()
    await deps.notifier.send(_link_message(deps, account, link, token, template))
    return link


@dataclass(frozen=True, slots=True)
class ResetRequested:
    link_expires_at: datetime
    # The email to post once the request is committed; None for an unknown or closed
    # account (the answer is the same: no enumeration).
    message: Message | None


async def request_password_reset(session: AsyncSession, deps: Deps, email: str) -> ResetRequested:
    """Same answer, and about the same work, for every email (no enumeration): a link and
    its token are made either way and stored only for a known, open account; the email is
    posted by the caller after the commit, in the background (`Courier`), so neither the
    answer nor its latency depends on whether the account exists."""
    account = await find_by_email(session, email)
    link, token = _new_link(
        deps, account.account_id if account is not None else "", "reset", deps.policy.reset_link_ttl
    )
    if account is None or account.status == AccountStatus.CLOSED.value:
        return ResetRequested(link.expires_at, None)
    session.add(link)
    await session.flush()
    message = _link_message(deps, account, link, token, templates.PASSWORD_RESET)
    return ResetRequested(link.expires_at, message)


@dataclass(frozen=True, slots=True)
class ResetStarted:
    reset_id: str
    code_expires_at: datetime | None
    masked_phone: str


async def confirm_reset_link(session: AsyncSession, deps: Deps, token: str) -> str:
    """Redeems the link (once) and sends an SMS code bound to this reset."""
    if not token or len(token) > MAX_TOKEN_INPUT:
        raise InvalidArgument("reset_token is required")
    link = await session.scalar(select(ResetLink).where(ResetLink.token_hash == deps.keys.token_hash(token)))
    if link is None:
        raise NotFound("this reset link is not valid")
    if link.redeemed_at is not None or link.expires_at <= utcnow():
        raise FailedPrecondition("this reset link has expired or was already used; ask for a new one")
    account = await get_account(session, link.account_id)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    result = await session.execute(
        update(ResetLink)
        .where(ResetLink.link_id == link.link_id, ResetLink.redeemed_at.is_(None))
        .values(redeemed_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if int(getattr(result, "rowcount", 0) or 0) != 1:
        raise FailedPrecondition("this reset link was already used")
    challenge = await new_challenge(session, deps, account, RESET, [FactorKind.SMS_CODE], NO_CLIENT)
    link.challenge_id = challenge.challenge_id
    return challenge.challenge_id


async def view_reset(session: AsyncSession, reset_id: str) -> ResetStarted:
    challenge = await open_challenge(session, reset_id, RESET)
    assert challenge.account_id is not None
    account = await get_account(session, challenge.account_id)
    return ResetStarted(reset_id, challenge.code_expires_at, mask_phone_for_display(account.phone_number))


async def complete_reset(
    session: AsyncSession, deps: Deps, reset_id: str, code: str, new_password: str, client: Client
) -> datetime | ServiceError:
    check_password_policy(new_password)
    normalized = check_code_format(FactorKind.SMS_CODE, code)
    challenge = await open_challenge(session, reset_id, RESET)
    assert challenge.account_id is not None
    account = await get_account(session, challenge.account_id, for_update=True)
    await session.refresh(challenge)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    if not await factors(deps.keys)[FactorKind.SMS_CODE].verify(session, account, challenge, normalized):
        await count_failed_code(session, deps, account, challenge, client, EventKind.CODE_FAILED)
        return Unauthenticated(WRONG_CODE)
    challenge.completed_at = utcnow()
    challenge.remaining_factors = ""
    if account.status in {AccountStatus.LOCKED.value, AccountStatus.BLOCKED.value}:
        await set_status(session, account, AccountStatus.ACTIVE)
        record_event(session, EventKind.ACCOUNT_UNLOCKED, account.account_id, client)
    account.failed_code_count = 0
    account.failed_login_count = 0
    changed_at = await _set_password(session, deps, account, new_password, client)
    await end_all_sessions(session, account.account_id, "password_reset")
    return changed_at


async def issue_provisional_credentials(
    session: AsyncSession,
    deps: Deps,
    account_id: str,
    new_phone_number: str = "",
    staff_session_id: str = "",
) -> ResetLink:
    """ACC-09: the current password stops working at once; a provisional one is set through
    an emailed link (valid 72 h by default) plus an SMS code, never shown by the API.

    With `new_phone_number` (a phone lost or stolen with the credentials, ACC-08; the caller
    checked that staff asks), the code goes to that number instead of the one on file."""
    try:
        replacement = normalize_phone(new_phone_number) if new_phone_number else ""
    except InvalidArgument as exc:
        raise InvalidArgument(f"new_{exc.message}") from None
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    if replacement and replacement != account.phone_number:
        account.phone_number = replacement
        record_event(session, EventKind.PHONE_REPLACED_BY_STAFF, account_id, session_id=staff_session_id)
    account.password_hash = None
    await end_all_sessions(session, account_id, "provisional_credentials")
    await close_pending_challenges(session, account_id)
    record_event(session, EventKind.PROVISIONAL_CREDENTIALS_ISSUED, account_id)
    return await _email_link(
        session,
        deps,
        account,
        "provisional",
        deps.policy.provisional_link_ttl,
        templates.PROVISIONAL_CREDENTIALS,
    )


async def flag_password_breach(
    session: AsyncSession, deps: Deps, account_id: str, detected_at: datetime, key: str
) -> str:
    """ACC-10: breach notice by email; the password must be changed at the next login."""
    if detected_at > utcnow() + timedelta(minutes=5):
        raise InvalidArgument("detected_at is in the future")
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    account.must_change_password = True
    await end_all_sessions(session, account_id, "password_breach")
    record_event(session, EventKind.BREACH_FLAGGED, account_id)
    return await deps.notifier.send(
        Message(
            template=templates.BREACH_NOTICE,
            idempotency_key=f"identity:breach:{account_id}:{key}",
            locale=account.locale,
            email=account.email,
            link=f"{deps.policy.public_base_url}/login",
            date=detected_at,
        )
    )


def provisioning_uri(deps: Deps, account: Account, secret: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account.email, issuer_name=deps.policy.totp_issuer)


async def start_totp_enrolment(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str
) -> TotpFactor:
    await current_session(session, account_id, session_id, session_policy(deps))
    if await active_totp(session, account_id) is not None:
        raise FailedPrecondition("a TOTP factor is already enrolled; an administrator can reset it")
    now = utcnow()
    factor = TotpFactor(
        factor_id=str(uuid.uuid4()),
        account_id=account_id,
        secret_encrypted=deps.keys.encrypt_totp_secret(pyotp.random_base32(), account_id),
        status="pending",
        created_at=now,
        expires_at=now + deps.policy.totp_enrolment_ttl,
        confirmed_at=None,
        last_used_step=0,
    )
    session.add(factor)
    await session.flush()
    return factor


async def pending_enrolment(session: AsyncSession, account_id: str, enrolment_id: str) -> TotpFactor:
    factor = await session.get(TotpFactor, enrolment_id) if enrolment_id and len(enrolment_id) <= 36 else None
    if factor is None or factor.account_id != account_id:
        raise NotFound("enrolment not found")
    if factor.status != "pending" or factor.expires_at <= utcnow():
        raise FailedPrecondition("this enrolment has ended; start again")
    return factor


async def confirm_totp_enrolment(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, enrolment_id: str, code: str
) -> list[str]:
    await current_session(session, account_id, session_id, session_policy(deps))
    normalized = check_code_format(FactorKind.TOTP, code)
    factor = await pending_enrolment(session, account_id, enrolment_id)
    if await active_totp(session, account_id) is not None:
        raise FailedPrecondition("a TOTP factor is already enrolled")
    if not await accept_totp(session, deps.keys, factor, normalized):
        raise Unauthenticated(WRONG_CODE)
    factor.status = "active"
    factor.confirmed_at = utcnow()
    record_event(session, EventKind.TOTP_ENROLLED, account_id, session_id=session_id)
    return await issue_recovery_codes(session, deps.keys, account_id, deps.policy.recovery_code_count)


async def regenerate_recovery_codes(
    session: AsyncSession, deps: Deps, account_id: str, session_id: str, code: str
) -> list[str] | ServiceError:
    await current_session(session, account_id, session_id, session_policy(deps))
    normalized = check_code_format(FactorKind.TOTP, code)
    factor = await active_totp(session, account_id)
    if factor is None:
        raise FailedPrecondition("no TOTP factor is enrolled")
    if not await accept_totp(session, deps.keys, factor, normalized):
        account = await get_account(session, account_id)
        await count_failed_code(session, deps, account, None, NO_CLIENT, EventKind.STEP_UP_FAILED)
        return Unauthenticated(WRONG_CODE)
    return await issue_recovery_codes(session, deps.keys, account_id, deps.policy.recovery_code_count)


async def reset_second_factor(session: AsyncSession, deps: Deps, account_id: str) -> Account:
    account = await get_account(session, account_id, for_update=True)
    await session.execute(
        update(TotpFactor)
        .where(TotpFactor.account_id == account_id, TotpFactor.status.in_(("active", "pending")))
        .values(status="removed")
        .execution_options(synchronize_session=False)
    )
    await issue_recovery_codes(session, deps.keys, account_id, 0)
    await end_all_sessions(session, account_id, "second_factor_reset")
    record_event(session, EventKind.SECOND_FACTOR_RESET, account_id)
    return account
