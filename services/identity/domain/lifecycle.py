"""Data lifecycle of the identity service (issue 10): rights requests, legal holds,
retention clocks, archive, restriction, purge (crypto-shredding) and export.

Subject keys: each subject (account, prospect, rights request) gets a random AES-256 data
key, stored wrapped by the service key. What outlives day-to-day reach (the archive
snapshot, the free text of a rights request, the doctor named for indirect access) is
sealed with it; deleting the key row at purge makes every copy unreadable, backups
included.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain.habilitations import rights_request_handler
from services.identity.domain.retention import (
    PERIODS,
    RIGHTS_REQUEST_DEADLINE_MONTHS,
    RIGHTS_REQUEST_MAX_EXTENSION_MONTHS,
    Action,
    Category,
    add_months,
    cutoff,
)
from services.identity.models import (
    Account,
    ArchiveAccess,
    AuthenticationEvent,
    Beneficiary,
    Challenge,
    EvidenceRecord,
    LegalHoldRecord,
    Prospect,
    RecoveryCode,
    ResetLink,
    RightsRequestRecord,
    SubjectKey,
    SubjectLifecycle,
    TotpFactor,
    UserSession,
)
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger("identity.lifecycle")

RPPS_PATTERN = re.compile(r"^\d{11}$")
MAX_DETAILS = 10_000
MAX_REFERENCE = 128
FUTURE_SKEW = timedelta(minutes=5)
STAFF_RECORDERS = frozenset({Role.DPO, Role.ADMINISTRATOR})


class Kind(StrEnum):
    ACCESS = "ACCESS"
    RECTIFICATION = "RECTIFICATION"
    ERASURE = "ERASURE"
    RESTRICTION = "RESTRICTION"
    PORTABILITY = "PORTABILITY"
    OBJECTION = "OBJECTION"
    POST_MORTEM_DIRECTIVES = "POST_MORTEM_DIRECTIVES"
    DESIGNATE_DOCTOR_FOR_INDIRECT_ACCESS = "DESIGNATE_DOCTOR_FOR_INDIRECT_ACCESS"
    COMPLAINT = "COMPLAINT"


class Channel(StrEnum):
    PORTAL = "PORTAL"
    DPO_EMAIL = "DPO_EMAIL"
    POSTAL_MAIL = "POSTAL_MAIL"
    REFERENT_DOCTOR = "REFERENT_DOCTOR"
    HEALTH_DATA_HOST = "HEALTH_DATA_HOST"


class Verification(StrEnum):
    AUTHENTICATED_SESSION = "AUTHENTICATED_SESSION"
    STEP_UP = "STEP_UP"
    IDENTITY_DOCUMENT = "IDENTITY_DOCUMENT"
    REFERENT_DOCTOR_ATTESTATION = "REFERENT_DOCTOR_ATTESTATION"


class Status(StrEnum):
    RECEIVED = "RECEIVED"
    IN_PROGRESS = "IN_PROGRESS"
    EXTENDED = "EXTENDED"
    ANSWERED = "ANSWERED"
    # An erasure answered for now (refused while a case is in progress), carried out later.
    POSTPONED = "POSTPONED"


class Outcome(StrEnum):
    GRANTED = "GRANTED"
    PARTIALLY_GRANTED_RESTRICTED = "PARTIALLY_GRANTED_RESTRICTED"
    REFUSED = "REFUSED"
    IDENTITY_NOT_VERIFIED = "IDENTITY_NOT_VERIFIED"
    # Erasure refused for now: a case is in progress; carried out once it is closed.
    REFUSED_CASE_IN_PROGRESS = "REFUSED_CASE_IN_PROGRESS"


class ExtensionReason(StrEnum):
    COMPLEXITY = "COMPLEXITY"
    NUMBER_OF_REQUESTS = "NUMBER_OF_REQUESTS"


class HoldReason(StrEnum):
    LITIGATION = "LITIGATION"
    JUDICIAL_REQUEST = "JUDICIAL_REQUEST"
    REGULATOR_INQUIRY = "REGULATOR_INQUIRY"
    INDEMNITY_DISPUTE = "INDEMNITY_DISPUTE"


class SubjectKind(StrEnum):
    ACCOUNT = "ACCOUNT"
    PROSPECT = "PROSPECT"
    RIGHTS_REQUEST = "RIGHTS_REQUEST"


class Stage(StrEnum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"
    PURGED = "PURGED"


class ArchiveReason(StrEnum):
    RETENTION_ELAPSED = "RETENTION_ELAPSED"
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"


class PurgeReason(StrEnum):
    RETENTION_ELAPSED = "RETENTION_ELAPSED"
    ERASURE_REQUEST = "ERASURE_REQUEST"


class LegalBasis(StrEnum):
    ACCOUNTING_OBLIGATION = "ACCOUNTING_OBLIGATION"
    EVIDENCE_OF_CONSENT = "EVIDENCE_OF_CONSENT"
    LEGAL_HOLD = "LEGAL_HOLD"
    RIGHTS_REQUEST_RECORD = "RIGHTS_REQUEST_RECORD"


class ArchivePurpose(StrEnum):
    LITIGATION = "LITIGATION"
    REGULATOR_INQUIRY = "REGULATOR_INQUIRY"
    RIGHTS_REQUEST = "RIGHTS_REQUEST"


# ---------------------------------------------------------------- subject keys


class SubjectKeys:
    """Per-subject AES-256-GCM data keys wrapped by the service key-encryption key."""

    def __init__(self, kek: bytes) -> None:
        self._kek = AESGCM(kek)

    async def _load(self, session: AsyncSession, subject_id: str) -> bytes | None:
        row = await session.get(SubjectKey, subject_id)
        if row is None:
            return None
        raw = base64.b64decode(row.wrapped_key)
        return self._kek.decrypt(raw[:12], raw[12:], subject_id.encode())

    async def key_for(self, session: AsyncSession, subject_id: str) -> bytes:
        key = await self._load(session, subject_id)
        if key is not None:
            return key
        key = AESGCM.generate_key(bit_length=256)
        nonce = secrets.token_bytes(12)
        wrapped = base64.b64encode(nonce + self._kek.encrypt(nonce, key, subject_id.encode())).decode()
        session.add(SubjectKey(subject_id=subject_id, wrapped_key=wrapped, created_at=utcnow()))
        await session.flush()
        return key

    async def seal(self, session: AsyncSession, subject_id: str, payload: dict[str, Any]) -> str:
        key = await self.key_for(session, subject_id)
        nonce = secrets.token_bytes(12)
        data = json.dumps(payload, sort_keys=True).encode()
        return base64.b64encode(nonce + AESGCM(key).encrypt(nonce, data, subject_id.encode())).decode()

    async def open(self, session: AsyncSession, subject_id: str, sealed: str) -> dict[str, Any] | None:
        """None when the key was destroyed (crypto-shredded) or the text is empty."""
        if not sealed:
            return None
        key = await self._load(session, subject_id)
        if key is None:
            return None
        raw = base64.b64decode(sealed)
        try:
            value: dict[str, Any] = json.loads(AESGCM(key).decrypt(raw[:12], raw[12:], subject_id.encode()))
        except InvalidTag:
            return None
        return value

    @staticmethod
    async def destroy(session: AsyncSession, subject_id: str) -> bool:
        result = await session.execute(delete(SubjectKey).where(SubjectKey.subject_id == subject_id))
        return bool(getattr(result, "rowcount", 0))


# ---------------------------------------------------------------- legal holds


def _active_hold_clause(subject_column: Any) -> Any:
    return exists().where(
        and_(LegalHoldRecord.subject_id == subject_column, LegalHoldRecord.released_at.is_(None))
    )


async def is_held(session: AsyncSession, subject_id: str) -> bool:
    found = await session.scalar(
        select(LegalHoldRecord.legal_hold_id)
        .where(LegalHoldRecord.subject_id == subject_id, LegalHoldRecord.released_at.is_(None))
        .limit(1)
    )
    return found is not None


async def place_hold(
    session: AsyncSession, subject_id: str, reason: HoldReason, reference: str, placed_by: str
) -> LegalHoldRecord:
    if len(reference) > MAX_REFERENCE or not reference.isprintable():
        raise InvalidArgument(f"external_reference must be at most {MAX_REFERENCE} printable characters")
    await subject_kind_of(session, subject_id)
    hold = LegalHoldRecord(
        legal_hold_id=str(uuid.uuid4()),
        subject_id=subject_id,
        reason=reason.value,
        external_reference=reference,
        placed_by_account_id=placed_by,
        placed_at=utcnow(),
    )
    session.add(hold)
    await session.flush()
    log.info(
        "legal hold placed", extra={"fields": {"legal_hold_id": hold.legal_hold_id, "subject_id": subject_id}}
    )
    return hold


async def release_hold(session: AsyncSession, hold_id: str, released_by: str) -> LegalHoldRecord:
    hold = await session.get(LegalHoldRecord, hold_id, with_for_update=True)
    if hold is None:
        raise NotFound("legal hold not found")
    if hold.released_at is not None:
        raise FailedPrecondition("the legal hold is already released")
    hold.released_at = utcnow()
    hold.released_by_account_id = released_by
    log.info("legal hold released", extra={"fields": {"legal_hold_id": hold_id}})
    return hold


async def list_holds(
    session: AsyncSession, subject_id: str, include_released: bool, offset: int, limit: int
) -> list[LegalHoldRecord]:
    query = select(LegalHoldRecord)
    if subject_id:
        query = query.where(LegalHoldRecord.subject_id == subject_id)
    if not include_released:
        query = query.where(LegalHoldRecord.released_at.is_(None))
    query = query.order_by(LegalHoldRecord.placed_at.desc(), LegalHoldRecord.legal_hold_id)
    return list((await session.scalars(query.offset(offset).limit(limit))).all())


# ---------------------------------------------------------------- subjects


async def subject_kind_of(session: AsyncSession, subject_id: str) -> SubjectKind:
    """What the id names; NOT_FOUND when nothing (not even a purge record) does."""
    if await session.get(Account, subject_id) is not None:
        return SubjectKind.ACCOUNT
    if await session.get(Prospect, subject_id) is not None:
        return SubjectKind.PROSPECT
    if await session.get(RightsRequestRecord, subject_id) is not None:
        return SubjectKind.RIGHTS_REQUEST
    state = await session.get(SubjectLifecycle, subject_id)
    if state is not None:
        return SubjectKind(state.subject_kind)
    raise NotFound("subject not found")


async def _lifecycle(session: AsyncSession, subject_id: str, kind: SubjectKind) -> SubjectLifecycle:
    state = await session.get(SubjectLifecycle, subject_id, with_for_update=True)
    if state is None:
        state = SubjectLifecycle(subject_id=subject_id, subject_kind=kind.value, stage=Stage.ACTIVE.value)
        session.add(state)
    return state


@dataclass(frozen=True, slots=True)
class SubjectRetention:
    subject_id: str
    kind: SubjectKind
    stage: Stage
    clock_started_at: datetime | None
    archived_at: datetime | None
    purged_at: datetime | None
    legal_hold: bool
    restricted: bool
    converted: bool


async def subject_retention(session: AsyncSession, subject_id: str) -> SubjectRetention:
    kind = await subject_kind_of(session, subject_id)
    state = await session.get(SubjectLifecycle, subject_id)
    stage = Stage(state.stage) if state is not None else Stage.ACTIVE
    clock: datetime | None = None
    converted = False
    if kind is SubjectKind.ACCOUNT:
        account = await session.get(Account, subject_id)
        if account is not None:
            clock = account.last_activity_at or account.created_at
    elif kind is SubjectKind.PROSPECT:
        prospect = await session.get(Prospect, subject_id)
        if prospect is not None:
            clock = prospect.last_invitation_sent_at
            converted = prospect.account_id is not None
    else:
        request = await session.get(RightsRequestRecord, subject_id)
        if request is not None:
            clock = request.received_at
            if request.archived_at is not None and stage is Stage.ACTIVE:
                stage = Stage.ARCHIVED
    return SubjectRetention(
        subject_id=subject_id,
        kind=kind,
        stage=stage,
        clock_started_at=clock,
        archived_at=state.archived_at if state is not None else None,
        purged_at=state.purged_at if state is not None else None,
        legal_hold=await is_held(session, subject_id),
        restricted=state is not None and state.restricted_at is not None,
        converted=converted,
    )


async def record_activity(
    session: AsyncSession, subject_id: str, category: Category, occurred_at: datetime
) -> datetime:
    """RET-02: any activity moves the account's clock; an older activity is a no-op."""
    if category is not Category.ACCOUNT_ACTIVE:
        raise InvalidArgument(
            "only ACCOUNT_ACTIVE clocks move with activity; satisfaction answers, logs and "
            "payment data are purged by their own age"
        )
    account = await session.get(Account, subject_id, with_for_update=True)
    if account is None:
        raise NotFound("subject not found")
    state = await session.get(SubjectLifecycle, subject_id)
    if state is not None and state.stage != Stage.ACTIVE.value:
        raise FailedPrecondition("the subject is archived; its activity clock no longer moves")
    current = account.last_activity_at or account.created_at
    if occurred_at > current:
        account.last_activity_at = occurred_at
        current = occurred_at
    return add_months(current, PERIODS[Category.ACCOUNT_ACTIVE].months)


# ---------------------------------------------------------------- due subjects


@dataclass(frozen=True, slots=True)
class DueSubject:
    subject_id: str
    kind: SubjectKind
    category: Category
    action: Action
    clock_started_at: datetime
    due_at: datetime


def _page_after(token: str) -> tuple[datetime, str] | None:
    if not token:
        return None
    try:
        stamp, subject_id = token.split("|", 1)
        return datetime.fromisoformat(stamp), subject_id
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid") from exc


def page_token(item: DueSubject) -> str:
    return f"{item.clock_started_at.isoformat()}|{item.subject_id}"


async def list_due(
    session: AsyncSession, category: Category, as_of: datetime, token: str, limit: int
) -> list[DueSubject]:
    """Subjects whose clock in `category` ran out at `as_of`, oldest first, held ones
    excluded; keyset pagination (clock, id) so a sweep of 100,000 stays linear."""
    limit_at = cutoff(category, as_of)
    after = _page_after(token)
    kind: SubjectKind
    clock: Any
    subject: Any
    if category is Category.ACCOUNT_ACTIVE:
        clock = func.coalesce(Account.last_activity_at, Account.created_at)
        subject = Account.account_id
        query = (
            select(subject, clock)
            .outerjoin(SubjectLifecycle, SubjectLifecycle.subject_id == Account.account_id)
            .where(or_(SubjectLifecycle.stage.is_(None), SubjectLifecycle.stage == Stage.ACTIVE.value))
            .where(clock <= limit_at)
        )
        kind = SubjectKind.ACCOUNT
    elif category is Category.PROSPECT:
        clock = Prospect.last_invitation_sent_at
        subject = Prospect.prospect_id
        query = select(subject, clock).where(Prospect.account_id.is_(None), clock <= limit_at)
        kind = SubjectKind.PROSPECT
    elif category is Category.ACCOUNT_ARCHIVED:
        clock = SubjectLifecycle.archived_at
        subject = SubjectLifecycle.subject_id
        query = select(subject, clock).where(
            SubjectLifecycle.stage == Stage.ARCHIVED.value,
            SubjectLifecycle.subject_kind == SubjectKind.ACCOUNT.value,
            clock <= limit_at,
        )
        kind = SubjectKind.ACCOUNT
    elif category is Category.RIGHTS_REQUESTS_ACTIVE:
        clock = RightsRequestRecord.received_at
        subject = RightsRequestRecord.request_id
        query = select(subject, clock).where(RightsRequestRecord.archived_at.is_(None), clock <= limit_at)
        kind = SubjectKind.RIGHTS_REQUEST
    elif category is Category.RIGHTS_REQUESTS_ARCHIVED:
        clock = RightsRequestRecord.archived_at
        subject = RightsRequestRecord.request_id
        query = select(subject, clock).where(clock.is_not(None), clock <= limit_at)
        kind = SubjectKind.RIGHTS_REQUEST
    else:
        raise InvalidArgument(
            f"{category.value} data is purged by age by the daily sweep (PurgeConnectionLogs, "
            "billing's PurgePaymentData / PurgeSatisfactionData), not per subject"
        )
    query = query.where(~_active_hold_clause(subject))
    if category in {Category.RIGHTS_REQUESTS_ACTIVE, Category.RIGHTS_REQUESTS_ARCHIVED}:
        # A hold on the person also holds the records of their requests.
        query = query.where(~_active_hold_clause(RightsRequestRecord.subject_id))
    if after is not None:
        query = query.where(or_(clock > after[0], and_(clock == after[0], subject > after[1])))
    rows = (await session.execute(query.order_by(clock, subject).limit(limit))).all()
    period = PERIODS[category]
    return [
        DueSubject(
            subject_id=str(row[0]),
            kind=kind,
            category=category,
            action=period.action,
            clock_started_at=row[1],
            due_at=add_months(row[1], period.months),
        )
        for row in rows
    ]


# ---------------------------------------------------------------- rights requests


@dataclass(frozen=True, slots=True)
class NewRightsRequest:
    subject_id: str
    kind: Kind
    channel: Channel
    verification: Verification
    proof_document_id: str
    received_at: datetime | None
    doctor_rpps: str
    doctor_name: str
    details: str


def _check_recorder(principal: Principal, new: NewRightsRequest) -> None:
    if principal.role in STAFF_RECORDERS or rights_request_handler(principal):
        return
    if principal.role is Role.REFERENT_DOCTOR:
        # GDPR-07: the referent doctor relays the request and vouches for the person.
        if new.channel is not Channel.REFERENT_DOCTOR:
            raise InvalidArgument("a referent doctor relays requests through the REFERENT_DOCTOR channel")
        return
    if principal.subject != new.subject_id:
        raise NotFound("subject not found")
    if new.channel is not Channel.PORTAL:
        raise InvalidArgument("requests filed from an account use the PORTAL channel")
    if new.verification not in {Verification.AUTHENTICATED_SESSION, Verification.STEP_UP}:
        raise InvalidArgument("requests filed from an account are verified by the session")


async def record_rights_request(
    session: AsyncSession, keys: SubjectKeys, principal: Principal, new: NewRightsRequest
) -> RightsRequestRecord:
    _check_recorder(principal, new)
    account = await session.get(Account, new.subject_id)
    state = await session.get(SubjectLifecycle, new.subject_id)
    if account is None or (state is not None and state.stage == Stage.PURGED.value):
        raise NotFound("subject not found")
    if new.verification is Verification.IDENTITY_DOCUMENT and not new.proof_document_id:
        raise InvalidArgument("identity_proof_document_id is required when an identity document was checked")
    if (
        new.verification is Verification.REFERENT_DOCTOR_ATTESTATION
        and new.channel is not Channel.REFERENT_DOCTOR
    ):
        raise InvalidArgument("a referent doctor's attestation comes through the REFERENT_DOCTOR channel")
    if new.kind is Kind.DESIGNATE_DOCTOR_FOR_INDIRECT_ACCESS:
        if not RPPS_PATTERN.match(new.doctor_rpps):
            raise InvalidArgument("designated_doctor_rpps_number must be the doctor's 11-digit RPPS number")
        if not new.doctor_name.strip() or len(new.doctor_name) > 200:
            raise InvalidArgument("designated_doctor_display_name is required (at most 200 characters)")
    elif new.doctor_rpps or new.doctor_name:
        raise InvalidArgument("a designated doctor is only named by a designation request")
    if len(new.details) > MAX_DETAILS:
        raise InvalidArgument(f"details must be at most {MAX_DETAILS} characters")
    now = utcnow()
    received = new.received_at or now
    if received > now + FUTURE_SKEW:
        raise InvalidArgument("received_at cannot be in the future")
    request_id = str(uuid.uuid4())
    sealed = ""
    if new.details or new.doctor_rpps:
        sealed = await keys.seal(
            session,
            request_id,
            {"details": new.details, "doctor_rpps": new.doctor_rpps, "doctor_name": new.doctor_name},
        )
    record = RightsRequestRecord(
        request_id=request_id,
        subject_id=new.subject_id,
        kind=new.kind.value,
        channel=new.channel.value,
        identity_verification=new.verification.value,
        identity_proof_document_id=new.proof_document_id,
        recorded_by_account_id="" if principal.subject == new.subject_id else principal.subject,
        status=Status.RECEIVED.value,
        received_at=received,
        due_at=add_months(received, RIGHTS_REQUEST_DEADLINE_MONTHS),
        sealed_details=sealed,
    )
    session.add(record)
    await session.flush()
    log.info(
        "rights request recorded",
        extra={"fields": {"request_id": request_id, "kind": new.kind.value, "channel": new.channel.value}},
    )
    return record


async def get_request(session: AsyncSession, request_id: str, lock: bool = False) -> RightsRequestRecord:
    record = await session.get(RightsRequestRecord, request_id, with_for_update=lock)
    if record is None:
        raise NotFound("rights request not found")
    return record


async def extend_request(
    session: AsyncSession, request_id: str, reason: ExtensionReason, months: int
) -> RightsRequestRecord:
    record = await get_request(session, request_id, lock=True)
    if record.status in (Status.ANSWERED.value, Status.POSTPONED.value):
        raise FailedPrecondition("the request is already answered")
    if months not in (1, 2):
        raise InvalidArgument("extension_months must be 1 or 2")
    if record.extension_months + months > RIGHTS_REQUEST_MAX_EXTENSION_MONTHS:
        raise FailedPrecondition("the deadline can be extended by two months at most in total")
    record.extension_months += months
    record.extension_reason = reason.value
    record.extended_at = utcnow()
    record.status = Status.EXTENDED.value
    record.due_at = add_months(record.received_at, RIGHTS_REQUEST_DEADLINE_MONTHS + record.extension_months)
    return record


async def answer_request(
    session: AsyncSession, request_id: str, outcome: Outcome, document_id: str
) -> RightsRequestRecord:
    """Records the answer. An erasure may first be answered REFUSED_CASE_IN_PROGRESS
    (status POSTPONED: the person is answered within the deadline, the erasure waits for
    their case to end); the final answer then replaces it and `answered_at` keeps the
    time of that first answer, the one the deadline is measured on."""
    record = await get_request(session, request_id, lock=True)
    if record.status == Status.ANSWERED.value:
        raise FailedPrecondition("the request is already answered")
    postponed = record.status == Status.POSTPONED.value
    if outcome is Outcome.REFUSED_CASE_IN_PROGRESS:
        if record.kind != Kind.ERASURE.value:
            raise InvalidArgument("only an erasure is refused for now while a case is in progress")
        if postponed:
            raise FailedPrecondition("the erasure is already postponed until the case ends")
    later = outcome is Outcome.REFUSED_CASE_IN_PROGRESS
    record.status = (Status.POSTPONED if later else Status.ANSWERED).value
    record.outcome = outcome.value
    # A postponement's answer letter stays when the final answer comes without one.
    record.answer_document_id = document_id or record.answer_document_id
    if not postponed:
        record.answered_at = utcnow()
    log.info(
        "rights request answered", extra={"fields": {"request_id": request_id, "outcome": outcome.value}}
    )
    return record


async def request_secrets(
    session: AsyncSession, keys: SubjectKeys, record: RightsRequestRecord
) -> dict[str, str]:
    opened = await keys.open(session, record.request_id, record.sealed_details)
    return {k: str(v) for k, v in (opened or {}).items()}


async def list_requests(
    session: AsyncSession, subject_id: str, statuses: list[Status], offset: int, limit: int
) -> list[RightsRequestRecord]:
    query = select(RightsRequestRecord)
    if subject_id:
        query = query.where(RightsRequestRecord.subject_id == subject_id)
    if statuses:
        query = query.where(RightsRequestRecord.status.in_([s.value for s in statuses]))
    query = query.order_by(RightsRequestRecord.due_at, RightsRequestRecord.request_id)
    return list((await session.scalars(query.offset(offset).limit(limit))).all())


# ---------------------------------------------------------------- archive


@dataclass
class Report:
    counts: dict[str, int] = field(default_factory=dict)
    retained: list[tuple[str, int, LegalBasis, datetime | None]] = field(default_factory=list)
    key_destroyed: bool = False

    def add(self, category: str, count: int) -> None:
        if count:
            self.counts[category] = self.counts.get(category, 0) + count


async def _count_delete(session: AsyncSession, statement: Any) -> int:
    result = await session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


def _account_snapshot(account: Account, beneficiaries: list[Beneficiary]) -> dict[str, Any]:
    return {
        "account_id": account.account_id,
        "role": account.role,
        "email": account.email,
        "phone_number": account.phone_number,
        "display_name": account.display_name,
        "declared_age": account.declared_age,
        "rpps_number": account.rpps_number,
        "locale": account.locale,
        "partner_id": account.partner_id,
        "created_at": account.created_at.isoformat(),
        "last_activity_at": (account.last_activity_at or account.created_at).isoformat(),
        "closed_at": account.closed_at.isoformat() if account.closed_at else None,
        "closure_reason": account.closure_reason,
        "beneficiaries": [
            {
                "beneficiary_id": b.beneficiary_id,
                "kind": b.kind,
                "first_name": b.first_name,
                "last_name": b.last_name,
                "birth_date": b.birth_date,
                "proof_document_id": b.proof_document_id,
                "status": b.status,
            }
            for b in beneficiaries
        ],
    }


async def _drop_account_satellites(session: AsyncSession, account_id: str, report: Report) -> None:
    report.add(
        "sessions",
        await _count_delete(session, delete(UserSession).where(UserSession.account_id == account_id)),
    )
    report.add(
        "challenges",
        await _count_delete(session, delete(Challenge).where(Challenge.account_id == account_id)),
    )
    report.add(
        "reset_links",
        await _count_delete(session, delete(ResetLink).where(ResetLink.account_id == account_id)),
    )
    report.add(
        "totp_factors",
        await _count_delete(session, delete(TotpFactor).where(TotpFactor.account_id == account_id)),
    )
    report.add(
        "recovery_codes",
        await _count_delete(session, delete(RecoveryCode).where(RecoveryCode.account_id == account_id)),
    )
    report.add(
        "beneficiaries",
        await _count_delete(
            session, delete(Beneficiary).where(Beneficiary.representative_account_id == account_id)
        ),
    )


def _blank_account(account: Account, now: datetime) -> None:
    """The row stays as a tombstone (ids referenced elsewhere); no personal data is left."""
    account.email = ""
    account.email_normalized = f"archived:{account.account_id}"
    account.phone_number = ""
    account.display_name = ""
    account.password_hash = None
    account.rpps_number = None
    account.declared_age = None
    account.partner_id = ""
    account.status = "closed"
    account.closed_at = account.closed_at or now
    account.status_changed_at = now


async def archive_subject(
    session: AsyncSession, keys: SubjectKeys, subject_id: str, reason: ArchiveReason
) -> tuple[datetime, dict[str, int]]:
    """RET-02 / RET-07: personal data leaves the day-to-day tables for a sealed archive."""
    kind = await subject_kind_of(session, subject_id)
    if await is_held(session, subject_id):
        raise FailedPrecondition("a legal hold is in force on this subject")
    now = utcnow()
    report = Report()
    if kind is SubjectKind.PROSPECT:
        raise FailedPrecondition("prospects are never archived: they are deleted after one year (RET-01)")
    if kind is SubjectKind.RIGHTS_REQUEST:
        record = await get_request(session, subject_id, lock=True)
        if record.archived_at is not None:
            raise FailedPrecondition("the rights request is already archived")
        record.archived_at = now
        report.add("rights_requests", 1)
        return now, report.counts
    account = await session.get(Account, subject_id, with_for_update=True)
    state = await _lifecycle(session, subject_id, kind)
    if account is None or state.stage != Stage.ACTIVE.value:
        raise FailedPrecondition("the subject is already archived or purged")
    beneficiaries = list(
        (
            await session.scalars(
                select(Beneficiary).where(Beneficiary.representative_account_id == subject_id)
            )
        ).all()
    )
    state.sealed_archive = await keys.seal(session, subject_id, _account_snapshot(account, beneficiaries))
    state.stage = Stage.ARCHIVED.value
    state.archived_at = now
    state.archive_reason = reason.value
    await _drop_account_satellites(session, subject_id, report)
    _blank_account(account, now)
    report.add("accounts", 1)
    state.archive_report = json.dumps(report.counts, sort_keys=True)
    log.info("subject archived", extra={"fields": {"subject_id": subject_id, "reason": reason.value}})
    return now, report.counts


async def read_archive(
    session: AsyncSession,
    keys: SubjectKeys,
    subject_id: str,
    reader: str,
    purpose: ArchivePurpose,
    reference: str,
) -> tuple[dict[str, Any], datetime, str]:
    """RET-07: habilitated staff read the archive for a legal need; each read is logged."""
    if not reference or len(reference) > MAX_REFERENCE:
        raise InvalidArgument(f"reference (1 to {MAX_REFERENCE} characters) names the legal matter")
    state = await session.get(SubjectLifecycle, subject_id)
    if state is None or state.stage != Stage.ARCHIVED.value or state.archived_at is None:
        raise NotFound("no archive for this subject")
    opened = await keys.open(session, subject_id, state.sealed_archive)
    if opened is None:
        raise NotFound("no archive for this subject")
    access = ArchiveAccess(
        access_id=str(uuid.uuid4()),
        subject_id=subject_id,
        reader_account_id=reader,
        purpose=purpose.value,
        reference=reference,
        read_at=utcnow(),
    )
    session.add(access)
    log.info(
        "archive read",
        extra={"fields": {"subject_id": subject_id, "reader": reader, "purpose": purpose.value}},
    )
    return opened, state.archived_at, access.access_id


# ---------------------------------------------------------------- restriction


async def restrict_subject(
    session: AsyncSession, subject_id: str, restricted: bool
) -> tuple[datetime, dict[str, int]]:
    """GDPR-04: processing is restricted (the flag every reader honours); lifting it
    restores processing. The account itself stays, so the person can still sign in to
    read their data."""
    kind = await subject_kind_of(session, subject_id)
    if kind is not SubjectKind.ACCOUNT:
        raise FailedPrecondition("only an account's processing can be restricted")
    state = await _lifecycle(session, subject_id, kind)
    if state.stage == Stage.PURGED.value:
        raise NotFound("subject not found")
    now = utcnow()
    state.restricted_at = now if restricted else None
    await session.flush()
    return now, await restricted_items(session, subject_id)


async def restricted_items(session: AsyncSession, subject_id: str) -> dict[str, int]:
    evidence = await session.scalar(
        select(func.count()).select_from(EvidenceRecord).where(EvidenceRecord.account_id == subject_id)
    )
    items = {"accounts": 1}
    if evidence:
        items["evidence_records"] = int(evidence)
    return items


# ---------------------------------------------------------------- purge


async def purge_subject(
    session: AsyncSession, subject_id: str, reason: PurgeReason
) -> tuple[datetime, Report]:
    """Crypto-shredding (the data key goes) plus deletion. Evidence of consent and the
    records of rights requests are kept by law, restricted, and listed with their basis."""
    kind = await subject_kind_of(session, subject_id)
    if await is_held(session, subject_id):
        raise FailedPrecondition("a legal hold is in force on this subject")
    state = await _lifecycle(session, subject_id, kind)
    if state.stage == Stage.PURGED.value:
        raise FailedPrecondition("the subject is already purged")
    now = utcnow()
    report = Report()
    if kind is SubjectKind.PROSPECT:
        report.add(
            "prospects",
            await _count_delete(session, delete(Prospect).where(Prospect.prospect_id == subject_id)),
        )
    elif kind is SubjectKind.RIGHTS_REQUEST:
        report.add(
            "rights_requests",
            await _count_delete(
                session, delete(RightsRequestRecord).where(RightsRequestRecord.request_id == subject_id)
            ),
        )
    else:
        await _drop_account_satellites(session, subject_id, report)
        report.add(
            "authentication_events",
            await _count_delete(
                session, delete(AuthenticationEvent).where(AuthenticationEvent.account_id == subject_id)
            ),
        )
        report.add(
            "referrals",
            await _count_delete(session, delete(Prospect).where(Prospect.referring_account_id == subject_id)),
        )
        await session.execute(
            update(Prospect)
            .where(Prospect.account_id == subject_id)
            .values(account_id=None, status="expired")
        )
        if state.sealed_archive:
            report.add("archives", 1)
        report.add(
            "accounts", await _count_delete(session, delete(Account).where(Account.account_id == subject_id))
        )
        evidence = int(
            await session.scalar(
                select(func.count())
                .select_from(EvidenceRecord)
                .where(EvidenceRecord.account_id == subject_id)
            )
            or 0
        )
        if evidence:
            # CNS-05: the hash chain is append-only; the records carry ids, no contact data.
            report.retained.append(("evidence_records", evidence, LegalBasis.EVIDENCE_OF_CONSENT, None))
        requests = list(
            (
                await session.scalars(
                    select(RightsRequestRecord).where(RightsRequestRecord.subject_id == subject_id)
                )
            ).all()
        )
        for record in requests:
            until = add_months(record.received_at, 15 * 12)
            report.retained.append(("rights_requests", 1, LegalBasis.RIGHTS_REQUEST_RECORD, until))
    report.key_destroyed = await SubjectKeys.destroy(session, subject_id)
    state.stage = Stage.PURGED.value
    state.purged_at = now
    state.sealed_archive = ""
    state.archive_report = ""
    state.restricted_at = None
    state.purge_report = json.dumps(
        {
            "reason": reason.value,
            "purged": report.counts,
            "retained": [
                {
                    "category": c,
                    "count": n,
                    "legal_basis": b.value,
                    "retained_until": u.isoformat() if u else None,
                }
                for c, n, b, u in report.retained
            ],
            "subject_key_destroyed": report.key_destroyed,
        },
        sort_keys=True,
    )
    log.info("subject purged", extra={"fields": {"subject_id": subject_id, "reason": reason.value}})
    return now, report


CONNECTION_LOG_CATEGORIES = ("authentication_events", "sessions", "challenges")


async def purge_connection_logs(session: AsyncSession, older_than: datetime) -> dict[str, int]:
    """RET-04: connection logs and IP addresses go after one year."""
    if older_than > add_months(utcnow(), -PERIODS[Category.CONNECTION_LOGS].months):
        raise InvalidArgument("older_than must be at least one year ago (RET-04)")
    report = Report()
    report.add(
        "authentication_events",
        await _count_delete(
            session, delete(AuthenticationEvent).where(AuthenticationEvent.occurred_at < older_than)
        ),
    )
    report.add(
        "sessions",
        await _count_delete(
            session,
            delete(UserSession).where(
                UserSession.ended_at.is_not(None), UserSession.last_seen_at < older_than
            ),
        ),
    )
    report.add(
        "challenges", await _count_delete(session, delete(Challenge).where(Challenge.expires_at < older_than))
    )
    return report.counts


# ---------------------------------------------------------------- export (FHIR R4)


def _consents(records: list[EvidenceRecord], subject_id: str) -> list[dict[str, Any]]:
    consents: list[dict[str, Any]] = []
    for record in records:
        if not record.consent_kind and not record.text_kind:
            continue
        withdrawn = "WITHDRAWN" in record.kind
        code = record.consent_kind or f"TEXT_{record.text_kind}"
        consents.append(
            {
                "resourceType": "Consent",
                "id": record.record_id,
                "status": "inactive" if withdrawn else "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [
                    {"coding": [{"system": "urn:secondopinion:consent-kind", "code": code.lower()}]}
                ],
                "patient": {"reference": f"Patient/{subject_id}"},
                "dateTime": record.recorded_at.isoformat(),
                "policyRule": {
                    "text": f"{record.text_kind or record.consent_kind} {record.text_version}".strip()
                },
            }
        )
    return consents


def _patient(subject_id: str, data: dict[str, Any]) -> dict[str, Any]:
    telecom = []
    if data.get("email"):
        telecom.append({"system": "email", "value": data["email"]})
    if data.get("phone_number"):
        telecom.append({"system": "phone", "value": data["phone_number"]})
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": subject_id,
        "identifier": [{"system": "urn:secondopinion:account", "value": subject_id}],
        "active": data.get("closed_at") is None,
        "communication": [
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": data.get("locale") or "fr"}]}}
        ],
    }
    if data.get("display_name"):
        patient["name"] = [{"text": data["display_name"]}]
    if telecom:
        patient["telecom"] = telecom
    return patient


def _related(subject_id: str, beneficiaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    codes = {"minor": "GUARD", "ward": "GUARD", "mandator": "POWATT"}
    return [
        {
            "resourceType": "RelatedPerson",
            "id": b["beneficiary_id"],
            "patient": {"reference": f"Patient/{subject_id}"},
            "active": b["status"] == "active",
            "relationship": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                            "code": codes.get(b["kind"], "NOK"),
                        }
                    ]
                }
            ],
            "name": [{"family": b["last_name"], "given": [b["first_name"]]}],
            "birthDate": b["birth_date"],
        }
        for b in beneficiaries
    ]


async def export_subject(session: AsyncSession, keys: SubjectKeys, subject_id: str) -> dict[str, Any]:
    """GDPR-01 / GDPR-05: what identity holds about the person, as a FHIR R4 collection."""
    account = await session.get(Account, subject_id)
    state = await session.get(SubjectLifecycle, subject_id)
    if account is None or (state is not None and state.stage == Stage.PURGED.value):
        raise NotFound("subject not found")
    if state is not None and state.stage == Stage.ARCHIVED.value:
        data = await keys.open(session, subject_id, state.sealed_archive) or {}
        beneficiaries = list(data.get("beneficiaries", []))
    else:
        rows = list(
            (
                await session.scalars(
                    select(Beneficiary).where(Beneficiary.representative_account_id == subject_id)
                )
            ).all()
        )
        data = _account_snapshot(account, rows)
        beneficiaries = data["beneficiaries"]
    evidence = list(
        (
            await session.scalars(
                select(EvidenceRecord)
                .where(EvidenceRecord.account_id == subject_id)
                .order_by(EvidenceRecord.sequence)
            )
        ).all()
    )
    resources = [
        _patient(subject_id, data),
        *_related(subject_id, beneficiaries),
        *_consents(evidence, subject_id),
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": utcnow().isoformat(),
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['resourceType'] + '/' + r['id'])}",
                "resource": r,
            }
            for r in resources
        ],
    }
