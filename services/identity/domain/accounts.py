"""Accounts: sign-up of patient users, staff and doctor accounts, lock, unlock, closure."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import notifier as templates
from services.identity.domain.events import NO_CLIENT, Client, EventKind, record_event
from services.identity.domain.notifier import Message
from services.identity.domain.passwords import PasswordHashing, check_password_policy
from services.identity.domain.sessions import end_all_sessions
from services.identity.models import Account, Challenge
from services.shared.auth import Role
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

MIN_AGE = 18  # ACC-02: users are natural persons aged 18 or more (declared).
MAX_AGE = 130
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{2,63}$")
MAX_EMAIL_INPUT = 320
LOCALES = frozenset({"fr", "en"})
STAFF_ROLES = frozenset(
    {
        Role.REFERRING_DOCTOR,
        Role.REFERENT_DOCTOR,
        Role.COORDINATOR,
        Role.DPO,
        Role.ADMINISTRATOR,
        Role.PARTNER_USER,
    }
)
# ACC-12: strong authentication (TOTP at every login) for doctors and staff reaching
# health data, and for every staff role in practice.
STRONG_AUTH_ROLES = STAFF_ROLES


class AccountStatus(StrEnum):
    ACTIVE = "active"
    LOCKED = "locked"
    BLOCKED = "blocked"
    CLOSED = "closed"


class ClosureReason(StrEnum):
    USER_REQUEST = "user_request"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    LAW_BREACH = "law_breach"
    FRAUDULENT_ACCESS_ATTEMPTS = "fraudulent_access_attempts"
    ABUSIVE_USE = "abusive_use"
    DEFINITIVE_IMPEDIMENT = "definitive_impediment"


STAFF_CLOSURE_REASONS = frozenset(
    {
        ClosureReason.LAW_BREACH,
        ClosureReason.FRAUDULENT_ACCESS_ATTEMPTS,
        ClosureReason.ABUSIVE_USE,
        ClosureReason.DEFINITIVE_IMPEDIMENT,
        ClosureReason.USER_REQUEST,  # the DPO closes on the user's emailed request
        ClosureReason.CONSENT_WITHDRAWN,
    }
)


def normalize_email(email: str) -> str:
    """NFKC then casefold: full-width or differently-cased look-alikes map to one login."""
    if len(email) > MAX_EMAIL_INPUT:
        raise InvalidArgument("email is not a valid address")
    normalized = unicodedata.normalize("NFKC", email).strip().casefold()
    if len(normalized) > 320 or not EMAIL_PATTERN.match(normalized):
        raise InvalidArgument("email is not a valid address")
    return normalized


def normalize_phone(phone_number: str, default_region: str = "FR") -> str:
    """E.164 mobile number; codes go by SMS, so the number must be a valid mobile one."""
    if not phone_number or len(phone_number) > 32:
        raise InvalidArgument("phone_number is required (at most 32 characters)")
    try:
        parsed = phonenumbers.parse(phone_number, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument("phone_number is not a valid phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidArgument("phone_number is not a valid phone number")
    kind = phonenumbers.number_type(parsed)
    if kind not in {phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE}:
        raise InvalidArgument("phone_number must be a mobile number (codes are sent by SMS)")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def mask_phone_for_display(e164: str) -> str:
    """`+33612345678` -> `+33 •• •• •• •• 78`: enough for the person to recognise it."""
    return f"{e164[:3]} {'•' * max(len(e164) - 5, 0)}{e164[-2:]}" if len(e164) > 5 else "•••"


def normalize_locale(locale: str) -> str:
    tag = locale.strip().lower()[:2]
    return tag if tag in LOCALES else "fr"


@dataclass(frozen=True, slots=True)
class NewPatient:
    email: str
    phone_number: str
    password: str
    declared_age: int
    locale: str


@dataclass(frozen=True, slots=True)
class NewStaffMember:
    role: Role
    email: str
    phone_number: str
    display_name: str
    rpps_number: str
    partner_id: str = ""


@dataclass(frozen=True, slots=True)
class SignUp:
    """The new account (`created`), or the one the email already had, left untouched."""

    account: Account
    created: bool


def sign_up_attempt_notice(account: Account, public_base_url: str) -> Message | None:
    """The email telling an account's owner that someone signed up with their address
    (nothing about who or from where). One a day at most per account: the key is the day,
    so repeated attempts neither flood the mailbox nor use up its rate limit. None for a
    closed account (it can neither log in nor reset)."""
    if account.status == AccountStatus.CLOSED.value or not account.email:
        return None
    day = utcnow().date().isoformat()
    return Message(
        template=templates.SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT,
        idempotency_key=f"identity:sign-up-attempt:{account.account_id}:{day}",
        locale=account.locale,
        email=account.email,
        link=f"{public_base_url}/login",
    )


def rpps_is_valid(rpps: str) -> bool:
    """RPPS: 11 digits whose last one is a Luhn check digit."""
    if len(rpps) != 11 or not rpps.isdigit():
        return False
    total = 0
    for index, char in enumerate(reversed(rpps)):
        digit = int(char)
        if index % 2 == 1:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def needs_totp(account: Account) -> bool:
    return Role(account.role) in STRONG_AUTH_ROLES


class AccountRegistry:
    def __init__(self, hashing: PasswordHashing) -> None:
        self._hashing = hashing

    async def _ensure_email_free(self, session: AsyncSession, email_normalized: str) -> None:
        taken = await session.scalar(
            select(Account.account_id).where(Account.email_normalized == email_normalized)
        )
        if taken is not None:
            raise AlreadyExists("an account already exists for this email")

    async def sign_up_patient(self, session: AsyncSession, new: NewPatient) -> SignUp:
        """Creates the patient account, or, when the email already has an account, changes
        nothing and says so to the caller only (`created` False): the Argon2 hash is
        computed either way, so the two cases cost the same (no account enumeration)."""
        if new.declared_age < MIN_AGE:
            raise InvalidArgument("users must be 18 or older (declared age)")
        if new.declared_age > MAX_AGE:
            raise InvalidArgument("declared_age is not plausible")
        email_normalized = normalize_email(new.email)
        phone = normalize_phone(new.phone_number)
        check_password_policy(new.password)
        password_hash = await self._hashing.hash(new.password)
        existing = await session.scalar(select(Account).where(Account.email_normalized == email_normalized))
        if existing is not None:
            return SignUp(existing, created=False)
        now = utcnow()
        account = Account(
            account_id=str(uuid.uuid4()),
            role=Role.PATIENT.value,
            email_normalized=email_normalized,
            email=new.email.strip(),
            phone_number=phone,
            display_name="",
            password_hash=password_hash,
            status=AccountStatus.ACTIVE.value,
            declared_age=new.declared_age,
            rpps_number=None,
            locale=normalize_locale(new.locale),
            created_at=now,
            partner_id="",
            failed_login_count=0,
            failed_code_count=0,
            must_change_password=False,
            password_changed_at=now,
            last_activity_at=now,
        )
        session.add(account)
        await session.flush()
        return SignUp(account, created=True)

    async def create_staff_member(self, session: AsyncSession, new: NewStaffMember) -> Account:
        if new.role not in STAFF_ROLES:
            raise InvalidArgument("role must be a staff, doctor or partner role")
        if new.role is Role.REFERENT_DOCTOR and not rpps_is_valid(new.rpps_number):
            raise InvalidArgument("referent doctors need a valid RPPS number (11 digits, Luhn check)")
        if new.rpps_number and new.role is not Role.REFERENT_DOCTOR and not rpps_is_valid(new.rpps_number):
            raise InvalidArgument("rpps_number is not valid")
        if not new.display_name.strip() or len(new.display_name) > 200:
            raise InvalidArgument("display_name is required (at most 200 characters)")
        if new.role is Role.PARTNER_USER and not new.partner_id:
            raise InvalidArgument("partner users need a partner_id")
        if len(new.partner_id) > 64:
            raise InvalidArgument("partner_id is at most 64 characters")
        email_normalized = normalize_email(new.email)
        phone = normalize_phone(new.phone_number)
        await self._ensure_email_free(session, email_normalized)
        if new.rpps_number and await session.scalar(
            select(Account.account_id).where(Account.rpps_number == new.rpps_number)
        ):
            raise AlreadyExists("an account already exists for this RPPS number")
        now = utcnow()
        account = Account(
            account_id=str(uuid.uuid4()),
            role=new.role.value,
            email_normalized=email_normalized,
            email=new.email.strip(),
            phone_number=phone,
            display_name=new.display_name.strip(),
            password_hash=None,  # chosen through the emailed link + SMS code (reset flow)
            status=AccountStatus.ACTIVE.value,
            declared_age=None,
            rpps_number=new.rpps_number or None,
            locale="fr",
            created_at=now,
            partner_id=new.partner_id if new.role is Role.PARTNER_USER else "",
            failed_login_count=0,
            failed_code_count=0,
            must_change_password=False,
            last_activity_at=now,
        )
        session.add(account)
        await session.flush()
        return account

    async def get(self, session: AsyncSession, account_id: str) -> Account:
        return await get_account(session, account_id)


async def get_account(session: AsyncSession, account_id: str, *, for_update: bool = False) -> Account:
    if not account_id or len(account_id) > 36:
        raise NotFound("account not found")
    if for_update:
        account = await session.scalar(
            select(Account).where(Account.account_id == account_id).with_for_update()
        )
    else:
        account = await session.get(Account, account_id)
    if account is None:
        raise NotFound("account not found")
    return account


async def find_by_email(session: AsyncSession, email: str) -> Account | None:
    try:
        normalized = normalize_email(email)
    except InvalidArgument:
        return None
    return await session.scalar(select(Account).where(Account.email_normalized == normalized))


async def set_status(session: AsyncSession, account: Account, status: AccountStatus) -> None:
    account.status = status.value
    account.status_changed_at = utcnow()


async def lock_account(session: AsyncSession, account: Account, client: Client = NO_CLIENT) -> None:
    """ACC-07: locked; every session and pending challenge ends."""
    if account.status != AccountStatus.ACTIVE.value:
        return
    await set_status(session, account, AccountStatus.LOCKED)
    await end_all_sessions(session, account.account_id, "locked")
    await close_pending_challenges(session, account.account_id)
    record_event(session, EventKind.ACCOUNT_LOCKED, account.account_id, client)


async def close_pending_challenges(session: AsyncSession, account_id: str) -> None:
    await session.execute(
        update(Challenge)
        .where(Challenge.account_id == account_id, Challenge.completed_at.is_(None))
        .values(expires_at=utcnow(), code_hash=None)
        .execution_options(synchronize_session=False)
    )


async def unlock_account(session: AsyncSession, account_id: str) -> Account:
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("a closed account cannot be unlocked")
    if account.status == AccountStatus.BLOCKED.value:
        raise FailedPrecondition("a blocked account is unblocked by a password reset")
    if account.status == AccountStatus.LOCKED.value:
        await set_status(session, account, AccountStatus.ACTIVE)
        account.failed_code_count = 0
        account.failed_login_count = 0
        record_event(session, EventKind.ACCOUNT_UNLOCKED, account.account_id)
    return account


async def close_account(
    session: AsyncSession, account_id: str, reason: ClosureReason, closed_by: str
) -> tuple[Account, int]:
    """ACC-11: access ends, data stays (archived by the lifecycle, never deleted here)."""
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        return account, 0
    now = utcnow()
    await set_status(session, account, AccountStatus.CLOSED)
    account.closed_at = now
    account.closure_reason = reason.value
    account.closed_by_account_id = closed_by
    ended = await end_all_sessions(session, account_id, "closed")
    await close_pending_challenges(session, account_id)
    record_event(session, EventKind.ACCOUNT_CLOSED, account_id)
    return account, ended


async def update_locale(session: AsyncSession, account_id: str, locale: str) -> Account:
    if locale.strip().lower()[:2] not in LOCALES:
        raise InvalidArgument('locale must be "fr" or "en"')
    account = await get_account(session, account_id)
    account.locale = normalize_locale(locale)
    return account
