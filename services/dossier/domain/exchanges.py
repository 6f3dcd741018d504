"""The free-text notes (CASE-05), the case thread with attachments and read receipts
(CASE-06), and abuse reports in a staff queue (CASE-17)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain.access import CaseAccess
from services.dossier.domain.crypto import Keyring
from services.dossier.domain.forms import FROZEN_STATUSES
from services.dossier.models import AbuseReport, CaseNotes, Document, Message, ReadReceipt
from services.shared.auth import Principal
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied

MAX_ATTACHMENTS = 10


class MessageKind(StrEnum):
    GENERAL = "general"
    INFORMATION_REQUEST = "information_request"
    DOCUMENT_REQUEST = "document_request"
    INFORMATION_RESPONSE = "information_response"


DOCTOR_KINDS = frozenset({MessageKind.GENERAL, MessageKind.INFORMATION_REQUEST, MessageKind.DOCUMENT_REQUEST})
FILER_KINDS = frozenset({MessageKind.GENERAL, MessageKind.INFORMATION_RESPONSE})


class AbuseTarget(StrEnum):
    MESSAGE = "message"
    CASE_NOTES = "case_notes"
    FORM_ANSWERS = "form_answers"


class AbuseCategory(StrEnum):
    HARASSMENT = "harassment"
    ILLEGAL_CONTENT = "illegal_content"
    SPAM = "spam"
    OTHER = "other"


class AbuseStatus(StrEnum):
    OPEN = "open"
    RESOLVED = "resolved"


class AbuseResolution(StrEnum):
    NO_ACTION = "no_action"
    CONTENT_HIDDEN = "content_hidden"
    AUTHOR_WARNED = "author_warned"
    ACCOUNT_CLOSURE_REQUESTED = "account_closure_requested"


def _check_text(text: str, max_chars: int, field: str) -> str:
    if len(text) > max_chars:
        raise InvalidArgument(f"{field} is longer than {max_chars} characters")
    if "\x00" in text:
        raise InvalidArgument(f"{field} contains a NUL character")
    return text


# --- notes ------------------------------------------------------------------------------


async def save_notes(
    session: AsyncSession, keyring: Keyring, access: CaseAccess, text: str, max_chars: int
) -> CaseNotes:
    if access.case.status in FROZEN_STATUSES:
        raise FailedPrecondition("the case is closed to changes")
    _check_text(text, max_chars, "text")
    version = int(
        await session.scalar(
            select(func.coalesce(func.max(CaseNotes.version), 0)).where(
                CaseNotes.case_id == access.case.case_id
            )
        )
        or 0
    )
    notes_id = str(uuid.uuid4())
    row = CaseNotes(
        notes_id=notes_id,
        case_id=access.case.case_id,
        version=version + 1,
        text_sealed=keyring.seal_text(text, f"case_notes:{notes_id}", access.case.filer_account_id),
        updated_by_account_id=access.principal.subject,
        entered_under_mandate=access.under_mandate,
        updated_at=utcnow(),
    )
    session.add(row)
    await session.flush()
    return row


async def latest_notes(session: AsyncSession, case_id: str) -> CaseNotes | None:
    return await session.scalar(
        select(CaseNotes).where(CaseNotes.case_id == case_id).order_by(CaseNotes.version.desc()).limit(1)
    )


def notes_text(keyring: Keyring, row: CaseNotes) -> str:
    return keyring.open_text(row.text_sealed, f"case_notes:{row.notes_id}")


# --- messages ---------------------------------------------------------------------------


async def send_message(
    session: AsyncSession,
    keyring: Keyring,
    access: CaseAccess,
    kind: MessageKind,
    body: str,
    attachment_ids: list[str],
    in_reply_to: str,
    max_chars: int,
) -> Message:
    if not (access.filer_side or access.doctor_side):
        raise PermissionDenied("only the filer and the assigned doctors write in the thread")
    allowed = DOCTOR_KINDS if access.doctor_side else FILER_KINDS
    if kind not in allowed:
        raise InvalidArgument("this kind of message is not for the caller's side of the thread")
    if access.case.status in {"closed", "cancelled"}:
        raise FailedPrecondition("the case is closed")
    _check_text(body, max_chars, "body")
    if not body.strip() and not attachment_ids:
        raise InvalidArgument("a message needs a body or an attachment")
    if len(attachment_ids) > MAX_ATTACHMENTS or len(set(attachment_ids)) != len(attachment_ids):
        raise InvalidArgument(f"at most {MAX_ATTACHMENTS} distinct attachments")
    for document_id in attachment_ids:
        document = await session.get(Document, document_id)
        if document is None or document.case_id != access.case.case_id:
            raise NotFound("attachment not found")
        if document.status == "rejected":
            raise FailedPrecondition("a rejected document cannot be attached")
    if in_reply_to:
        parent = await session.get(Message, in_reply_to)
        if parent is None or parent.case_id != access.case.case_id:
            raise NotFound("message replied to not found")
    message_id = str(uuid.uuid4())
    row = Message(
        message_id=message_id,
        case_id=access.case.case_id,
        sender_account_id=access.principal.subject,
        sender_role=access.principal.role.value,
        kind=kind.value,
        body_sealed=keyring.seal_text(body, f"messages:{message_id}", access.case.filer_account_id),
        attachment_document_ids=list(attachment_ids),
        in_reply_to_message_id=in_reply_to,
        sent_at=utcnow(),
        hidden=False,
    )
    session.add(row)
    await session.flush()
    return row


def message_body(keyring: Keyring, row: Message) -> str:
    return "" if row.hidden else keyring.open_text(row.body_sealed, f"messages:{row.message_id}")


async def thread(session: AsyncSession, case_id: str, offset: int, limit: int) -> list[Message]:
    query = select(Message).where(Message.case_id == case_id)
    query = query.order_by(Message.sent_at, Message.message_id).offset(offset).limit(limit)
    return list((await session.scalars(query)).all())


async def receipts(session: AsyncSession, message_ids: list[str]) -> dict[str, list[ReadReceipt]]:
    found: dict[str, list[ReadReceipt]] = {message_id: [] for message_id in message_ids}
    if message_ids:
        for receipt in (
            await session.scalars(
                select(ReadReceipt)
                .where(ReadReceipt.message_id.in_(message_ids))
                .order_by(ReadReceipt.read_at)
            )
        ).all():
            found[receipt.message_id].append(receipt)
    return found


async def mark_read(session: AsyncSession, access: CaseAccess, up_to_message_id: str) -> int:
    last = await session.get(Message, up_to_message_id) if up_to_message_id else None
    if last is None or last.case_id != access.case.case_id:
        raise NotFound("message not found")
    reader = access.principal.subject
    candidates = (
        await session.scalars(
            select(Message).where(
                Message.case_id == access.case.case_id,
                Message.sender_account_id != reader,
                (Message.sent_at < last.sent_at)
                | ((Message.sent_at == last.sent_at) & (Message.message_id <= last.message_id)),
            )
        )
    ).all()
    already = set(
        (
            await session.scalars(
                select(ReadReceipt.message_id).where(
                    ReadReceipt.account_id == reader,
                    ReadReceipt.message_id.in_([m.message_id for m in candidates]),
                )
            )
        ).all()
    )
    now = utcnow()
    marked = 0
    for message in candidates:
        if message.message_id not in already:
            session.add(ReadReceipt(message_id=message.message_id, account_id=reader, read_at=now))
            marked += 1
    await session.flush()
    return marked


# --- abuse reports ----------------------------------------------------------------------


async def report_abuse(
    session: AsyncSession,
    access: CaseAccess,
    target: AbuseTarget,
    target_id: str,
    category: AbuseCategory,
) -> AbuseReport:
    if target is AbuseTarget.MESSAGE:
        message = await session.get(Message, target_id) if target_id else None
        if message is None or message.case_id != access.case.case_id:
            raise NotFound("message not found")
        if message.sender_account_id == access.principal.subject:
            raise InvalidArgument("one does not report one's own message")
    elif target_id:
        raise InvalidArgument("target_id is only for messages")
    report = AbuseReport(
        abuse_report_id=str(uuid.uuid4()),
        case_id=access.case.case_id,
        target_kind=target.value,
        target_id=target_id,
        category=category.value,
        reported_by_account_id=access.principal.subject,
        reported_at=utcnow(),
        status=AbuseStatus.OPEN.value,
        resolution="",
        resolved_by_account_id="",
        resolved_at=None,
    )
    session.add(report)
    await session.flush()
    return report


async def abuse_queue(
    session: AsyncSession, status: AbuseStatus | None, after: str, limit: int
) -> list[AbuseReport]:
    query = select(AbuseReport)
    if status is not None:
        query = query.where(AbuseReport.status == status.value)
    if after:
        query = query.where(AbuseReport.abuse_report_id > after)
    return list((await session.scalars(query.order_by(AbuseReport.abuse_report_id).limit(limit))).all())


async def resolve_abuse(
    session: AsyncSession, staff: Principal, report_id: str, resolution: AbuseResolution
) -> AbuseReport:
    report = await session.get(AbuseReport, report_id, with_for_update=True) if report_id else None
    if report is None:
        raise NotFound("abuse report not found")
    if report.status == AbuseStatus.RESOLVED:
        raise FailedPrecondition("the report is already resolved")
    if resolution is AbuseResolution.CONTENT_HIDDEN:
        if report.target_kind != AbuseTarget.MESSAGE:
            raise FailedPrecondition("only a message can be hidden; ask the author to edit other content")
        message = await session.get(Message, report.target_id, with_for_update=True)
        if message is not None:
            message.hidden = True
    report.status = AbuseStatus.RESOLVED.value
    report.resolution = resolution.value
    report.resolved_by_account_id = staff.subject
    report.resolved_at = utcnow()
    await session.flush()
    return report
