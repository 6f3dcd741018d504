"""Legal texts, and acceptances, consents and objections kept as evidence (CNS-01..08).

Evidence records are append-only and chained: each carries the hash of its predecessor
and its own SHA-256 over every field. Appends are serialised by updating the single chain
head row first (a row lock on PostgreSQL, the write lock on SQLite), so two concurrent
acceptances never fork the chain. `verify_chain` walks it and reports the first record
that was altered, deleted or relinked.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain.accounts import AccountStatus
from services.identity.domain.events import NO_CLIENT, Client
from services.identity.models import Account, Beneficiary, EvidenceChainHead, EvidenceRecord, LegalText
from services.shared.db import utcnow
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

GENESIS_HASH = "0" * 64
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
MAX_BODY_BYTES = 1_000_000
VERIFY_BATCH = 500


class TextKind(StrEnum):
    TERMS = "TERMS"
    NOTICE_SELF = "NOTICE_SELF"
    NOTICE_LEGAL_REPRESENTATIVE = "NOTICE_LEGAL_REPRESENTATIVE"
    NOTICE_MANDATED_PERSON = "NOTICE_MANDATED_PERSON"
    PRIVACY_POLICY = "PRIVACY_POLICY"


class EvidenceKind(StrEnum):
    TEXT_ACCEPTED = "TEXT_ACCEPTED"
    CONSENT_GIVEN = "CONSENT_GIVEN"
    CONSENT_WITHDRAWN = "CONSENT_WITHDRAWN"
    OBJECTION_RECORDED = "OBJECTION_RECORDED"
    OBJECTION_WITHDRAWN = "OBJECTION_WITHDRAWN"
    MINOR_INFORMED_ATTESTED = "MINOR_INFORMED_ATTESTED"
    HABILITATION_GRANTED = "HABILITATION_GRANTED"
    HABILITATION_REVOKED = "HABILITATION_REVOKED"


# The records that make up a person's consents and objections.
CONSENT_KINDS = (
    EvidenceKind.CONSENT_GIVEN,
    EvidenceKind.CONSENT_WITHDRAWN,
    EvidenceKind.OBJECTION_RECORDED,
    EvidenceKind.OBJECTION_WITHDRAWN,
)


class ConsentKind(StrEnum):
    HEALTH_DATA_PROCESSING = "HEALTH_DATA_PROCESSING"
    REPORT_TO_TREATING_PHYSICIAN = "REPORT_TO_TREATING_PHYSICIAN"
    PERSONAL_ASSISTANT_MANDATE = "PERSONAL_ASSISTANT_MANDATE"


class ObjectionKind(StrEnum):
    RESEARCH_REUSE = "RESEARCH_REUSE"
    SHARING_WITH_TREATING_PHYSICIAN = "SHARING_WITH_TREATING_PHYSICIAN"


class ChainProblem(StrEnum):
    ALTERED = "ALTERED"
    MISSING = "MISSING"
    BROKEN_LINK = "BROKEN_LINK"


def sha256_hex(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class AuthContext:
    """How the person was authenticated when the act was recorded (CNS-05)."""

    method: str
    session_id: str = ""
    client: Client = NO_CLIENT
    recorded_by_account_id: str = ""


# ---------------------------------------------------------------- legal texts


async def publish_text(
    session: AsyncSession,
    kind: TextKind,
    version: str,
    locale: str,
    body: str,
    effective_at: datetime | None,
    announce_notice: timedelta | None = None,
) -> LegalText:
    """Records a version; it is in force from `effective_at` (now when unset).

    With `announce_notice` (GDPR-09: the change is announced to every user before it
    applies), `effective_at` must be at least that far in the future; the caller then
    starts the announcement workflow (workflows.lifecycle, id `announce-{text_id}`).
    """
    if not VERSION_PATTERN.match(version):
        raise InvalidArgument("version is 1 to 40 letters, digits, dots, dashes or underscores")
    if locale not in {"fr", "en"}:
        raise InvalidArgument('locale must be "fr" or "en"')
    if not body.strip() or len(body.encode("utf-8")) > MAX_BODY_BYTES:
        raise InvalidArgument("body is required (at most 1 MB)")
    now = utcnow()
    effective = effective_at or now
    if effective < now.replace(microsecond=0):
        raise InvalidArgument("effective_at cannot be in the past")
    if announce_notice is not None and (effective_at is None or effective < now + announce_notice):
        days = announce_notice.total_seconds() / 86400
        raise InvalidArgument(
            f"an announced version must come into force at least {days:g} days after publication"
        )
    exists = await session.scalar(
        select(LegalText.text_id).where(
            LegalText.kind == kind.value, LegalText.version == version, LegalText.locale == locale
        )
    )
    if exists:
        raise AlreadyExists("this version of the text is already published in this language")
    text = LegalText(
        text_id=str(uuid.uuid4()),
        kind=kind.value,
        version=version,
        locale=locale,
        body=body,
        sha256_hex=sha256_hex(body),
        published_at=now,
        effective_at=effective,
    )
    session.add(text)
    await session.flush()
    return text


async def current_text(session: AsyncSession, kind: TextKind, locale: str = "fr") -> LegalText | None:
    now = utcnow()
    for candidate in dict.fromkeys([locale if locale in {"fr", "en"} else "fr", "fr"]):
        text = await session.scalar(
            select(LegalText)
            .where(LegalText.kind == kind.value, LegalText.locale == candidate, LegalText.effective_at <= now)
            .order_by(LegalText.effective_at.desc(), LegalText.published_at.desc())
            .limit(1)
        )
        if text is not None:
            return text
    return None


async def get_text(session: AsyncSession, text_id: str) -> LegalText:
    text = await session.get(LegalText, text_id) if text_id and len(text_id) <= 36 else None
    if text is None:
        raise NotFound("legal text not found")
    return text


async def list_versions(session: AsyncSession, kind: TextKind, locale: str) -> list[LegalText]:
    statement = select(LegalText).where(LegalText.kind == kind.value)
    if locale:
        statement = statement.where(LegalText.locale == locale)
    return list(await session.scalars(statement.order_by(LegalText.published_at.desc())))


@dataclass(frozen=True, slots=True)
class Recipient:
    account_id: str
    email: str
    locale: str
    first_name: str


async def announcement_recipients(
    session: AsyncSession, locale: str, after_account_id: str, limit: int
) -> list[Recipient]:
    """Accounts not closed (active, locked or blocked: the terms bind them all), keyset-paged
    by account id so accounts created during the fan-out never shift a page."""
    statement = select(Account).where(
        Account.status != AccountStatus.CLOSED.value, Account.account_id > after_account_id
    )
    if locale:
        statement = statement.where(Account.locale == locale)
    accounts = await session.scalars(statement.order_by(Account.account_id).limit(limit))
    return [
        Recipient(
            account_id=a.account_id,
            email=a.email,
            locale=a.locale or "fr",
            first_name=a.display_name.split(" ")[0] if a.display_name else "",
        )
        for a in accounts
    ]


# ---------------------------------------------------------------- the chain


def record_hash(record: EvidenceRecord) -> str:
    content = {
        "sequence": record.sequence,
        "record_id": record.record_id,
        "account_id": record.account_id,
        "beneficiary_id": record.beneficiary_id,
        "kind": record.kind,
        "text_id": record.text_id,
        "text_kind": record.text_kind,
        "text_version": record.text_version,
        "text_sha256_hex": record.text_sha256_hex,
        "consent_kind": record.consent_kind,
        "objection_kind": record.objection_kind,
        "recorded_at": record.recorded_at.isoformat(timespec="microseconds"),
        "authentication_method": record.authentication_method,
        "session_id": record.session_id,
        "ip_address": record.ip_address,
        "user_agent": record.user_agent,
        "recorded_by_account_id": record.recorded_by_account_id,
        "previous_hash_hex": record.previous_hash_hex,
    }
    # Added with habilitation records: covered only when set, so earlier records keep
    # the hash they were written with.
    if record.habilitation:
        content["habilitation"] = record.habilitation
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def append(
    session: AsyncSession,
    account_id: str,
    kind: EvidenceKind,
    auth: AuthContext,
    *,
    beneficiary_id: str = "",
    text: LegalText | None = None,
    consent: ConsentKind | None = None,
    objection: ObjectionKind | None = None,
    habilitation: str = "",
) -> EvidenceRecord:
    head = (
        await session.execute(
            update(EvidenceChainHead)
            .where(EvidenceChainHead.head_id == 1)
            .values(last_sequence=EvidenceChainHead.last_sequence + 1)
            .returning(EvidenceChainHead.last_sequence, EvidenceChainHead.last_hash_hex)
            .execution_options(synchronize_session=False)
        )
    ).one()
    sequence, previous = int(head[0]), str(head[1])
    record = EvidenceRecord(
        sequence=sequence,
        record_id=str(uuid.uuid4()),
        account_id=account_id,
        beneficiary_id=beneficiary_id,
        kind=kind.value,
        text_id=text.text_id if text else "",
        text_kind=text.kind if text else "",
        text_version=text.version if text else "",
        text_sha256_hex=text.sha256_hex if text else "",
        consent_kind=consent.value if consent else "",
        objection_kind=objection.value if objection else "",
        recorded_at=utcnow(),
        authentication_method=auth.method,
        session_id=auth.session_id,
        ip_address=auth.client.ip_address,
        user_agent=auth.client.user_agent,
        recorded_by_account_id=auth.recorded_by_account_id,
        habilitation=habilitation,
        previous_hash_hex=previous,
        record_hash_hex="",
    )
    record.record_hash_hex = record_hash(record)
    session.add(record)
    await session.execute(
        update(EvidenceChainHead)
        .where(EvidenceChainHead.head_id == 1)
        .values(last_hash_hex=record.record_hash_hex)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
    return record


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    checked: int
    first_bad_sequence: int = 0
    problem: ChainProblem | None = None


async def verify_chain(session: AsyncSession) -> ChainReport:
    expected_sequence, previous_hash, checked = 1, GENESIS_HASH, 0
    after = 0
    while True:
        batch = list(
            await session.scalars(
                select(EvidenceRecord)
                .where(EvidenceRecord.sequence > after)
                .order_by(EvidenceRecord.sequence)
                .limit(VERIFY_BATCH)
            )
        )
        for record in batch:
            if record.sequence != expected_sequence:
                return ChainReport(False, checked, expected_sequence, ChainProblem.MISSING)
            if record_hash(record) != record.record_hash_hex:
                return ChainReport(False, checked, record.sequence, ChainProblem.ALTERED)
            if record.previous_hash_hex != previous_hash:
                return ChainReport(False, checked, record.sequence, ChainProblem.BROKEN_LINK)
            checked += 1
            expected_sequence, previous_hash, after = (
                record.sequence + 1,
                record.record_hash_hex,
                record.sequence,
            )
        if len(batch) < VERIFY_BATCH:
            break
    head = await session.get(EvidenceChainHead, 1)
    if head is not None:
        if head.last_sequence >= expected_sequence:
            return ChainReport(False, checked, expected_sequence, ChainProblem.MISSING)
        if head.last_hash_hex != previous_hash:
            return ChainReport(False, checked, max(expected_sequence - 1, 1), ChainProblem.BROKEN_LINK)
    return ChainReport(True, checked)


# ---------------------------------------------------------------- acts


async def own_beneficiary(session: AsyncSession, account_id: str, beneficiary_id: str) -> Beneficiary | None:
    if not beneficiary_id:
        return None
    beneficiary = await session.get(Beneficiary, beneficiary_id) if len(beneficiary_id) <= 36 else None
    if beneficiary is None or beneficiary.representative_account_id != account_id:
        raise NotFound("beneficiary not found")
    if beneficiary.status != "active":
        raise FailedPrecondition("this representation has ended")
    return beneficiary


async def accept_text(
    session: AsyncSession,
    account_id: str,
    text_id: str,
    shown_sha256: str,
    beneficiary_id: str,
    auth: AuthContext,
) -> EvidenceRecord:
    text = await get_text(session, text_id)
    if shown_sha256.strip().lower() != text.sha256_hex:
        raise FailedPrecondition("the text shown differs from the stored version (hash mismatch)")
    current = await current_text(session, TextKind(text.kind), text.locale)
    if current is None or current.version != text.version:
        raise FailedPrecondition("only the version in force can be accepted")
    await own_beneficiary(session, account_id, beneficiary_id)
    return await append(
        session, account_id, EvidenceKind.TEXT_ACCEPTED, auth, beneficiary_id=beneficiary_id, text=text
    )


async def _latest(
    session: AsyncSession, account_id: str, beneficiary_id: str, kinds: tuple[str, ...]
) -> list[EvidenceRecord]:
    return list(
        await session.scalars(
            select(EvidenceRecord)
            .where(
                EvidenceRecord.account_id == account_id,
                EvidenceRecord.beneficiary_id == beneficiary_id,
                EvidenceRecord.kind.in_(kinds),
            )
            .order_by(EvidenceRecord.sequence)
        )
    )


async def consent_state(
    session: AsyncSession, account_id: str, beneficiary_id: str
) -> tuple[set[ConsentKind], set[ObjectionKind]]:
    consents: set[ConsentKind] = set()
    objections: set[ObjectionKind] = set()
    kinds = tuple(k.value for k in CONSENT_KINDS)
    for record in await _latest(session, account_id, beneficiary_id, kinds):
        if record.kind == EvidenceKind.CONSENT_GIVEN.value:
            consents.add(ConsentKind(record.consent_kind))
        elif record.kind == EvidenceKind.CONSENT_WITHDRAWN.value:
            consents.discard(ConsentKind(record.consent_kind))
        elif record.kind == EvidenceKind.OBJECTION_RECORDED.value:
            objections.add(ObjectionKind(record.objection_kind))
        elif record.kind == EvidenceKind.OBJECTION_WITHDRAWN.value:
            objections.discard(ObjectionKind(record.objection_kind))
    return consents, objections


async def give_consent(
    session: AsyncSession,
    account_id: str,
    kind: ConsentKind,
    text_id: str,
    shown_sha256: str,
    beneficiary_id: str,
    auth: AuthContext,
) -> EvidenceRecord:
    text = None
    if text_id:
        text = await get_text(session, text_id)
        if shown_sha256.strip().lower() != text.sha256_hex:
            raise FailedPrecondition("the text shown differs from the stored version (hash mismatch)")
    elif kind is ConsentKind.HEALTH_DATA_PROCESSING:
        raise InvalidArgument("consent to health-data processing names the notice it follows (text_id)")
    await own_beneficiary(session, account_id, beneficiary_id)
    return await append(
        session,
        account_id,
        EvidenceKind.CONSENT_GIVEN,
        auth,
        beneficiary_id=beneficiary_id,
        text=text,
        consent=kind,
    )


async def withdraw_consent(
    session: AsyncSession, account_id: str, kind: ConsentKind, beneficiary_id: str, auth: AuthContext
) -> EvidenceRecord:
    await own_beneficiary(session, account_id, beneficiary_id)
    consents, _ = await consent_state(session, account_id, beneficiary_id)
    if kind not in consents:
        raise FailedPrecondition("this consent is not currently given")
    return await append(
        session, account_id, EvidenceKind.CONSENT_WITHDRAWN, auth, beneficiary_id=beneficiary_id, consent=kind
    )


async def record_objection(
    session: AsyncSession,
    account_id: str,
    kind: ObjectionKind,
    beneficiary_id: str,
    auth: AuthContext,
    lift: bool,
) -> EvidenceRecord:
    await own_beneficiary(session, account_id, beneficiary_id)
    _, objections = await consent_state(session, account_id, beneficiary_id)
    if lift and kind not in objections:
        raise FailedPrecondition("there is no such objection in force")
    if not lift and kind in objections:
        raise FailedPrecondition("this objection is already in force")
    evidence = EvidenceKind.OBJECTION_WITHDRAWN if lift else EvidenceKind.OBJECTION_RECORDED
    return await append(session, account_id, evidence, auth, beneficiary_id=beneficiary_id, objection=kind)


@dataclass(frozen=True, slots=True)
class TermsCheck:
    accepted: bool
    current: LegalText | None
    accepted_version: str = ""
    accepted_at: datetime | None = None


async def latest_terms_check(session: AsyncSession, account_id: str, locale: str) -> TermsCheck:
    current = await current_text(session, TextKind.TERMS, locale)
    last = await session.scalar(
        select(EvidenceRecord)
        .where(
            EvidenceRecord.account_id == account_id,
            EvidenceRecord.kind == EvidenceKind.TEXT_ACCEPTED.value,
            EvidenceRecord.text_kind == TextKind.TERMS.value,
            EvidenceRecord.beneficiary_id == "",
        )
        .order_by(EvidenceRecord.sequence.desc())
        .limit(1)
    )
    accepted_current = False
    if current is not None:
        accepted_current = bool(
            await session.scalar(
                select(func.count())
                .select_from(EvidenceRecord)
                .where(
                    EvidenceRecord.account_id == account_id,
                    EvidenceRecord.kind == EvidenceKind.TEXT_ACCEPTED.value,
                    EvidenceRecord.text_kind == TextKind.TERMS.value,
                    EvidenceRecord.text_version == current.version,
                    EvidenceRecord.beneficiary_id == "",
                )
            )
        )
    return TermsCheck(
        accepted=accepted_current,
        current=current,
        accepted_version=last.text_version if last else "",
        accepted_at=last.recorded_at if last else None,
    )


async def notice_accepted(session: AsyncSession, account_id: str, beneficiary: Beneficiary | None) -> bool:
    if beneficiary is None:
        kind = TextKind.NOTICE_SELF
    elif beneficiary.kind == "mandator":
        kind = TextKind.NOTICE_MANDATED_PERSON
    else:
        kind = TextKind.NOTICE_LEGAL_REPRESENTATIVE
    current = await current_text(session, kind)
    if current is None:
        return False
    count = await session.scalar(
        select(func.count())
        .select_from(EvidenceRecord)
        .where(
            EvidenceRecord.account_id == account_id,
            EvidenceRecord.kind == EvidenceKind.TEXT_ACCEPTED.value,
            EvidenceRecord.text_kind == kind.value,
            EvidenceRecord.text_version == current.version,
            EvidenceRecord.beneficiary_id == (beneficiary.beneficiary_id if beneficiary else ""),
        )
    )
    return bool(count)


async def list_records(
    session: AsyncSession, account_id: str, offset: int, limit: int
) -> list[EvidenceRecord]:
    return list(
        await session.scalars(
            select(EvidenceRecord)
            .where(EvidenceRecord.account_id == account_id)
            .order_by(EvidenceRecord.sequence.desc())
            .offset(offset)
            .limit(limit)
        )
    )
