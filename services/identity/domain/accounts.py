"""Accounts: sign-up of patient users, creation of staff and doctor accounts."""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from enum import StrEnum

import phonenumbers
from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.models import Account
from services.shared.auth import Role
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, InvalidArgument, NotFound

MIN_AGE = 18  # ACC-02: users are natural persons aged 18 or more (declared).
PASSWORD_MIN, PASSWORD_MAX = 8, 25  # ACC-04: 8 to 25 characters.
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,253}\.[^@\s.]{2,63}$")
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


class AccountStatus(StrEnum):
    ACTIVE = "active"
    LOCKED = "locked"
    BLOCKED = "blocked"
    CLOSED = "closed"


def normalize_email(email: str) -> str:
    """NFKC then casefold: full-width or differently-cased look-alikes map to one login."""
    normalized = unicodedata.normalize("NFKC", email).strip().casefold()
    if len(normalized) > 320 or not EMAIL_PATTERN.match(normalized):
        raise InvalidArgument("email is not a valid address")
    return normalized


def normalize_phone(phone_number: str, default_region: str = "FR") -> str:
    """E.164 mobile number; codes go by SMS, so the number must be a valid one."""
    if not phone_number or len(phone_number) > 32:
        raise InvalidArgument("phone_number is required")
    try:
        parsed = phonenumbers.parse(phone_number, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument("phone_number is not a valid phone number") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidArgument("phone_number is not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def check_password_policy(password: str) -> None:
    """ACC-04 as the terms state it: 8 to 25 characters, upper case, lower case, and
    digits and/or special characters. (The blocklist of breached passwords is issue 3.)"""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidArgument(f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    has_upper = any(c.isupper() for c in password)
    has_lower = any(c.islower() for c in password)
    has_digit_or_special = any(c.isdigit() or not c.isalnum() for c in password)
    if not (has_upper and has_lower and has_digit_or_special):
        raise InvalidArgument("password needs upper case, lower case, and digits and/or special characters")


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


class AccountRegistry:
    def __init__(self, hasher: PasswordHasher) -> None:
        self._hasher = hasher

    async def _ensure_email_free(self, session: AsyncSession, email_normalized: str) -> None:
        taken = await session.scalar(
            select(Account.account_id).where(Account.email_normalized == email_normalized)
        )
        if taken is not None:
            # Same message whatever the account: sign-up must not reveal who is registered
            # beyond what the uniqueness rule forces (issue 3 adds the emailed flow).
            raise AlreadyExists("an account already exists for this email")

    async def sign_up_patient(self, session: AsyncSession, new: NewPatient) -> Account:
        if new.declared_age < MIN_AGE:
            raise InvalidArgument("users must be 18 or older (declared age)")
        if new.declared_age > 130:
            raise InvalidArgument("declared_age is not plausible")
        email_normalized = normalize_email(new.email)
        phone = normalize_phone(new.phone_number)
        check_password_policy(new.password)
        await self._ensure_email_free(session, email_normalized)
        account = Account(
            account_id=str(uuid.uuid4()),
            role=Role.PATIENT.value,
            email_normalized=email_normalized,
            email=new.email.strip(),
            phone_number=phone,
            display_name="",
            password_hash=self._hasher.hash(new.password),
            status=AccountStatus.ACTIVE.value,
            declared_age=new.declared_age,
            rpps_number=None,
            locale=new.locale if new.locale in {"fr", "en"} else "fr",
            created_at=utcnow(),
        )
        session.add(account)
        await session.flush()
        return account

    async def create_staff_member(self, session: AsyncSession, new: NewStaffMember) -> Account:
        if new.role not in STAFF_ROLES:
            raise InvalidArgument("role must be a staff, doctor or partner role")
        if new.role is Role.REFERENT_DOCTOR and not rpps_is_valid(new.rpps_number):
            raise InvalidArgument("referent doctors need a valid RPPS number (11 digits, Luhn check)")
        if new.rpps_number and new.role is not Role.REFERENT_DOCTOR and not rpps_is_valid(new.rpps_number):
            raise InvalidArgument("rpps_number is not valid")
        if not new.display_name.strip() or len(new.display_name) > 200:
            raise InvalidArgument("display_name is required (at most 200 characters)")
        email_normalized = normalize_email(new.email)
        phone = normalize_phone(new.phone_number)
        await self._ensure_email_free(session, email_normalized)
        account = Account(
            account_id=str(uuid.uuid4()),
            role=new.role.value,
            email_normalized=email_normalized,
            email=new.email.strip(),
            phone_number=phone,
            display_name=new.display_name.strip(),
            password_hash=None,  # set through the enrolment flow (issue 3)
            status=AccountStatus.ACTIVE.value,
            declared_age=None,
            rpps_number=new.rpps_number or None,
            locale="fr",
            created_at=utcnow(),
        )
        session.add(account)
        await session.flush()
        return account

    async def get(self, session: AsyncSession, account_id: str) -> Account:
        account = await session.get(Account, account_id)
        if account is None:
            raise NotFound("account not found")
        return account
