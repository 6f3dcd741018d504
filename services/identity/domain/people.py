"""Who files for whom (ACC-03, ACC-13, ACC-14) and referrals of prospects (ACC-15)."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import notifier as templates
from services.identity.domain.accounts import normalize_email, normalize_locale, normalize_phone
from services.identity.domain.context import Deps
from services.identity.domain.evidence import AuthContext, EvidenceKind, append
from services.identity.domain.notifier import Message
from services.identity.domain.secrets import new_url_token
from services.identity.models import Beneficiary, Prospect
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

NAME_PATTERN = re.compile(r"^[^\W\d_]+(?:[ '\u2019\-][^\W\d_]+)*$")
DOCUMENT_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
MINOR_SELF_CONSENT_AGE = 15  # article 45 of the French data protection act
MAJORITY = 18
PARENT_ATTESTS = "PARENT_ATTESTS_MINOR_INFORMED"
MINOR_OWN_CONSENT = "MINOR_OWN_CONSENT"


def check_name(value: str, field: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 100 or not NAME_PATTERN.match(value):
        raise InvalidArgument(f"{field} is 1 to 100 letters (spaces, hyphens and apostrophes allowed)")
    return value


def check_document_id(value: str, field: str) -> str:
    if not DOCUMENT_ID_PATTERN.match(value):
        raise InvalidArgument(f"{field} is required (a dossier document id)")
    return value


def age_on(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def parse_birth_date(value: str) -> date:
    try:
        birth = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        birth = None
    if birth is None:
        raise InvalidArgument("birth_date must be a calendar date YYYY-MM-DD")
    today = utcnow().date()
    if birth > today or age_on(birth, today) > 130:
        raise InvalidArgument("birth_date is not plausible")
    return birth


def _new_beneficiary(
    representative: str, kind: str, first: str, last: str, birth: date, proof: str
) -> Beneficiary:
    return Beneficiary(
        beneficiary_id=str(uuid.uuid4()),
        representative_account_id=representative,
        kind=kind,
        first_name=check_name(first, "first_name"),
        last_name=check_name(last, "last_name"),
        birth_date=birth.isoformat(),
        proof_document_id=proof,
        minor_consent_mode=None,
        minor_consent_document_id="",
        status="active",
        created_at=utcnow(),
        valid_until=None,
        ended_at=None,
        beneficiary_account_id="",
    )


async def attach_minor(
    session: AsyncSession,
    representative: str,
    first: str,
    last: str,
    birth_date: str,
    proof: str,
    mode: str | None,
    minor_consent_document_id: str,
    auth: AuthContext,
) -> Beneficiary:
    birth = parse_birth_date(birth_date)
    age = age_on(birth, utcnow().date())
    if age >= MAJORITY:
        raise InvalidArgument("a minor is under 18; attach an adult under guardianship as a ward")
    check_document_id(proof, "proof_document_id")
    if age < MINOR_SELF_CONSENT_AGE and mode != PARENT_ATTESTS:
        raise InvalidArgument("under 15, the parent attests the minor was informed and consented")
    if age >= MINOR_SELF_CONSENT_AGE:
        if mode != MINOR_OWN_CONSENT:
            raise InvalidArgument("from 15, the minor's own consent is recorded")
        check_document_id(minor_consent_document_id, "minor_consent_document_id")
    beneficiary = _new_beneficiary(representative, "minor", first, last, birth, proof)
    beneficiary.minor_consent_mode = mode
    beneficiary.minor_consent_document_id = minor_consent_document_id if age >= MINOR_SELF_CONSENT_AGE else ""
    session.add(beneficiary)
    await session.flush()
    if age < MINOR_SELF_CONSENT_AGE:
        await append(
            session,
            representative,
            EvidenceKind.MINOR_INFORMED_ATTESTED,
            auth,
            beneficiary_id=beneficiary.beneficiary_id,
        )
    return beneficiary


async def attach_adult(
    session: AsyncSession,
    representative: str,
    kind: str,
    first: str,
    last: str,
    birth_date: str,
    document_id: str,
    valid_until: datetime | None = None,
) -> Beneficiary:
    birth = parse_birth_date(birth_date)
    if age_on(birth, utcnow().date()) < MAJORITY:
        raise InvalidArgument("this person is a minor; attach them as a minor")
    field = "mandate_document_id" if kind == "mandator" else "proof_document_id"
    check_document_id(document_id, field)
    if valid_until is not None and valid_until <= utcnow():
        raise InvalidArgument("valid_until must be in the future")
    beneficiary = _new_beneficiary(representative, kind, first, last, birth, document_id)
    beneficiary.valid_until = valid_until
    session.add(beneficiary)
    await session.flush()
    return beneficiary


async def get_beneficiary(
    session: AsyncSession, beneficiary_id: str, representative: str | None
) -> Beneficiary:
    beneficiary = (
        await session.get(Beneficiary, beneficiary_id)
        if beneficiary_id and len(beneficiary_id) <= 36
        else None
    )
    if beneficiary is None or (
        representative is not None and beneficiary.representative_account_id != representative
    ):
        raise NotFound("beneficiary not found")
    return beneficiary


async def list_beneficiaries(
    session: AsyncSession, representative: str, include_ended: bool
) -> list[Beneficiary]:
    statement = select(Beneficiary).where(Beneficiary.representative_account_id == representative)
    if not include_ended:
        statement = statement.where(Beneficiary.status == "active")
    return list(await session.scalars(statement.order_by(Beneficiary.created_at)))


async def end_representation(session: AsyncSession, beneficiary_id: str, representative: str) -> Beneficiary:
    beneficiary = await get_beneficiary(session, beneficiary_id, representative)
    if beneficiary.status == "active":
        beneficiary.status = "ended"
        beneficiary.ended_at = utcnow()
    return beneficiary


# ---------------------------------------------------------------- referrals


async def _invite(deps: Deps, prospect: Prospect, token: str) -> None:
    first_name = prospect.first_name if len(prospect.first_name) <= 50 else ""
    await deps.notifier.send(
        Message(
            template=templates.REFERRAL_INVITATION,
            idempotency_key=f"identity:referral:{prospect.prospect_id}:{prospect.invitations_sent}",
            locale=prospect.locale,
            email=prospect.email,
            phone_number=prospect.phone_number,
            first_name=first_name,
            link=f"{deps.policy.public_base_url}/signup?invitation={token}",
        )
    )


async def refer_prospect(
    session: AsyncSession,
    deps: Deps,
    referrer: str,
    first: str,
    last: str,
    email: str,
    phone: str,
    locale: str,
) -> Prospect:
    """Name and one way to reach the patient; never health data (ACC-15)."""
    if bool(email) == bool(phone):
        raise InvalidArgument("give exactly one of email or phone_number")
    email_normalized = normalize_email(email) if email else ""
    phone_e164 = normalize_phone(phone) if phone else ""
    duplicate = await session.scalar(
        select(Prospect.prospect_id).where(
            Prospect.referring_account_id == referrer,
            Prospect.email == email_normalized if email_normalized else Prospect.phone_number == phone_e164,
        )
    )
    if duplicate is not None:
        raise AlreadyExists("this patient was already invited; resend the invitation instead")
    token = new_url_token()
    now = utcnow()
    prospect = Prospect(
        prospect_id=str(uuid.uuid4()),
        referring_account_id=referrer,
        first_name=check_name(first, "first_name"),
        last_name=check_name(last, "last_name"),
        email=email_normalized,
        phone_number=phone_e164,
        locale=normalize_locale(locale),
        status="invited",
        created_at=now,
        last_invitation_sent_at=now,
        invitations_sent=1,
        invitation_token_hash=deps.keys.token_hash(token),
        account_id=None,
    )
    session.add(prospect)
    await session.flush()
    await _invite(deps, prospect, token)
    return prospect


async def resend_invitation(session: AsyncSession, deps: Deps, referrer: str, prospect_id: str) -> Prospect:
    prospect = await session.get(Prospect, prospect_id) if prospect_id and len(prospect_id) <= 36 else None
    if prospect is None or prospect.referring_account_id != referrer:
        raise NotFound("prospect not found")
    if prospect.status != "invited":
        raise FailedPrecondition("this prospect is no longer waiting for an invitation")
    token = new_url_token()
    prospect.invitation_token_hash = deps.keys.token_hash(token)
    prospect.invitations_sent += 1
    prospect.last_invitation_sent_at = utcnow()  # RET-01: the retention clock moves
    await session.flush()
    await _invite(deps, prospect, token)
    return prospect


async def list_referrals(session: AsyncSession, referrer: str, offset: int, limit: int) -> list[Prospect]:
    return list(
        await session.scalars(
            select(Prospect)
            .where(Prospect.referring_account_id == referrer)
            .order_by(Prospect.created_at.desc(), Prospect.prospect_id)
            .offset(offset)
            .limit(limit)
        )
    )


async def check_invitation(session: AsyncSession, deps: Deps, token: str) -> Prospect:
    """The invitation a referral token opens; refused when unknown, expired or used."""
    if len(token) > 128:
        raise InvalidArgument("referral_token is not valid")
    prospect = await session.scalar(
        select(Prospect).where(Prospect.invitation_token_hash == deps.keys.token_hash(token))
    )
    if prospect is None or prospect.status != "invited":
        raise InvalidArgument("referral_token is not valid (expired or already used)")
    return prospect


async def redeem_invitation(session: AsyncSession, deps: Deps, token: str, account_id: str) -> None:
    prospect = await check_invitation(session, deps, token)
    prospect.status = "account_created"
    prospect.account_id = account_id
