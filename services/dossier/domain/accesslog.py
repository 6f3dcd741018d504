"""The access log (SEC-01, SEC-02): every read or write of a case, form, document,
message or report appends who, role, what, when and why. Entries form a hash chain (each
carries the previous entry's hash) and the database refuses UPDATE and DELETE on the
table. An append that fails makes the whole access fail (UNAVAILABLE): no log, no data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum

import grpc
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.models import AccessLogEntry, AccessLogHead, Case
from services.shared.auth import Principal
from services.shared.db import utcnow
from services.shared.errors import ServiceError

GENESIS_HASH = "0" * 64
HEAD_ID = 1


class AccessLogUnavailable(ServiceError):
    """The log could not be written: the access is refused."""

    status = grpc.StatusCode.UNAVAILABLE


class Action(StrEnum):
    READ = "read"
    CREATE = "create"
    UPDATE = "update"
    DOWNLOAD = "download"
    EXPORT = "export"
    LIFECYCLE = "lifecycle"
    REFUSED = "refused"
    SHARE = "share"


class ObjectKind(StrEnum):
    CASE = "case"
    FORM_ANSWERS = "form_answers"
    DOCUMENT = "document"
    MESSAGE = "message"
    REPORT = "report"
    CASE_NOTES = "case_notes"


class Purpose(StrEnum):
    OWN_SPACE = "own_space"
    CASE_REVIEW = "case_review"
    COORDINATION = "coordination"
    PERSONAL_ASSISTANT = "personal_assistant"
    PLATFORM_PROCESSING = "platform_processing"
    RIGHTS_REQUEST = "rights_request"
    LEGAL_ARCHIVE = "legal_archive"
    NONE_ESTABLISHED = "none_established"  # refused attempts


def entry_hash(entry: AccessLogEntry) -> str:
    payload = json.dumps(
        [
            entry.sequence,
            entry.occurred_at.isoformat(timespec="microseconds"),
            entry.actor_account_id,
            entry.actor_role,
            entry.action,
            entry.object_kind,
            entry.object_id,
            entry.case_id,
            entry.subject_account_id,
            entry.beneficiary_id,
            entry.purpose,
            entry.previous_hash,
        ],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


async def append(
    session: AsyncSession,
    *,
    actor: Principal,
    action: Action,
    object_kind: ObjectKind,
    object_id: str,
    case: Case | None,
    purpose: Purpose,
    subject_account_id: str = "",
) -> AccessLogEntry:
    """Append one entry in the caller's transaction; the head row's lock orders appends.
    Account-level objects (proof documents) have no case: pass the subject instead."""
    try:
        # The write comes first so the lock is taken before the head is read (both backends).
        await session.execute(
            update(AccessLogHead)
            .where(AccessLogHead.head_id == HEAD_ID)
            .values(sequence=AccessLogHead.sequence + 1)
        )
        row = (
            await session.execute(
                select(AccessLogHead.sequence, AccessLogHead.entry_hash).where(
                    AccessLogHead.head_id == HEAD_ID
                )
            )
        ).one()
        entry = AccessLogEntry(
            sequence=int(row.sequence),
            occurred_at=utcnow(),
            actor_account_id=actor.subject,
            actor_role=actor.role.value,
            action=action.value,
            object_kind=object_kind.value,
            object_id=object_id,
            case_id=case.case_id if case else "",
            subject_account_id=case.filer_account_id if case else subject_account_id,
            beneficiary_id=case.beneficiary_id if case else "",
            purpose=purpose.value,
            previous_hash=str(row.entry_hash),
        )
        entry.entry_hash = entry_hash(entry)
        session.add(entry)
        await session.execute(
            update(AccessLogHead).where(AccessLogHead.head_id == HEAD_ID).values(entry_hash=entry.entry_hash)
        )
        await session.flush()
    except SQLAlchemyError as exc:
        raise AccessLogUnavailable("the access log cannot be written; the access is refused") from exc
    return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    checked: int
    first_bad_sequence: int = 0
    problem: str = ""  # "altered" | "missing" | "broken_link"


async def verify_chain(session: AsyncSession, batch: int = 1000) -> ChainReport:
    """Walk the chain in order; report the first altered, missing or relinked entry."""
    expected_sequence = 1
    previous = GENESIS_HASH
    checked = 0
    while True:
        entries = (
            await session.scalars(
                select(AccessLogEntry)
                .where(AccessLogEntry.sequence >= expected_sequence)
                .order_by(AccessLogEntry.sequence)
                .limit(batch)
            )
        ).all()
        for entry in entries:
            if entry.sequence != expected_sequence:
                return ChainReport(False, checked, expected_sequence, "missing")
            if entry_hash(entry) != entry.entry_hash:
                return ChainReport(False, checked, entry.sequence, "altered")
            if entry.previous_hash != previous:
                return ChainReport(False, checked, entry.sequence, "broken_link")
            previous = entry.entry_hash
            expected_sequence += 1
            checked += 1
        if len(entries) < batch:
            break
    head = (
        await session.execute(
            select(AccessLogHead.sequence, AccessLogHead.entry_hash).where(AccessLogHead.head_id == HEAD_ID)
        )
    ).one()
    if int(head.sequence) >= expected_sequence:  # entries removed from the end
        return ChainReport(False, checked, expected_sequence, "missing")
    if head.entry_hash != previous:
        return ChainReport(False, checked, max(expected_sequence - 1, 1), "broken_link")
    return ChainReport(True, checked)


async def entries_about(
    session: AsyncSession,
    *,
    subject_account_id: str | None,
    beneficiary_id: str | None,
    case_id: str,
    before_sequence: int | None,
    limit: int,
) -> list[AccessLogEntry]:
    """Entries about a person's data, newest first. `subject_account_id` alone: every case
    they filed; with `beneficiary_id`: only the cases for that beneficiary; staff may pass
    `beneficiary_id` alone (or an id matching either column through both arguments)."""
    query = select(AccessLogEntry)
    if subject_account_id is not None and beneficiary_id is not None and subject_account_id == beneficiary_id:
        query = query.where(
            or_(
                AccessLogEntry.subject_account_id == subject_account_id,
                AccessLogEntry.beneficiary_id == beneficiary_id,
            )
        )
    else:
        if subject_account_id is not None:
            query = query.where(AccessLogEntry.subject_account_id == subject_account_id)
        if beneficiary_id is not None:
            query = query.where(AccessLogEntry.beneficiary_id == beneficiary_id)
    if case_id:
        query = query.where(AccessLogEntry.case_id == case_id)
    if before_sequence is not None:
        query = query.where(AccessLogEntry.sequence < before_sequence)
    return list((await session.scalars(query.order_by(AccessLogEntry.sequence.desc()).limit(limit))).all())


async def count_entries(session: AsyncSession) -> int:
    return int((await session.scalar(select(func.count()).select_from(AccessLogEntry))) or 0)
