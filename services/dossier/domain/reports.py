"""The opinion report (DOC-04): the assigned doctor writes or uploads it as a draft; once
delivered it is sealed (SHA-256 over its content, never changed again); an addendum is a
new sealed record pointing at the opinion."""

from __future__ import annotations

import hashlib
import json
import uuid
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain.access import CaseAccess
from services.dossier.domain.crypto import Keyring
from services.dossier.models import Document, Report
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound


class ReportKind(StrEnum):
    OPINION = "opinion"
    ADDENDUM = "addendum"


class ReportStatus(StrEnum):
    DRAFT = "draft"
    SEALED = "sealed"


def body_of(keyring: Keyring, report: Report) -> str:
    return keyring.open_text(report.body_sealed, f"reports:{report.report_id}")


async def _attachment_hash(session: AsyncSession, case_id: str, document_id: str) -> str:
    if not document_id:
        return ""
    document = await session.get(Document, document_id)
    if document is None or document.case_id != case_id:
        raise NotFound("report file not found")
    if document.purpose != "report":
        raise InvalidArgument("the report file must be uploaded with purpose REPORT")
    if document.status != "available":
        raise FailedPrecondition("the report file is not available (quarantined or rejected)")
    return document.sha256_hex


def seal_hash(report: Report, body: str, attachment_sha256: str) -> str:
    payload = json.dumps(
        [
            report.report_id,
            report.case_id,
            report.kind,
            report.parent_report_id,
            report.author_doctor_id,
            report.author_account_id,
            body,
            report.attachment_document_id,
            attachment_sha256,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def _check_body(body: str, attachment: str, max_chars: int) -> None:
    if len(body) > max_chars:
        raise InvalidArgument(f"body is longer than {max_chars} characters")
    if not body.strip() and not attachment:
        raise InvalidArgument("a report needs a written text or an uploaded file")


async def save_draft(
    session: AsyncSession, keyring: Keyring, access: CaseAccess, body: str, attachment: str, max_chars: int
) -> Report:
    """One draft opinion per doctor and case, changed in place until delivered."""
    if access.case.status in {"closed", "cancelled"}:
        raise FailedPrecondition("the case is closed")
    _check_body(body, attachment, max_chars)
    await _attachment_hash(session, access.case.case_id, attachment)
    sealed_opinion = await session.scalar(
        select(Report.report_id).where(
            Report.case_id == access.case.case_id,
            Report.kind == ReportKind.OPINION.value,
            Report.author_account_id == access.principal.subject,
            Report.status == ReportStatus.SEALED.value,
        )
    )
    if sealed_opinion:
        raise FailedPrecondition("your opinion is delivered and sealed; add an addendum instead")
    draft = await session.scalar(
        select(Report).where(
            Report.case_id == access.case.case_id,
            Report.kind == ReportKind.OPINION.value,
            Report.author_account_id == access.principal.subject,
            Report.status == ReportStatus.DRAFT.value,
        )
    )
    if draft is None:
        draft = Report(
            report_id=str(uuid.uuid4()),
            case_id=access.case.case_id,
            kind=ReportKind.OPINION.value,
            parent_report_id="",
            author_doctor_id=access.doctor_id,
            author_account_id=access.principal.subject,
            status=ReportStatus.DRAFT.value,
            created_at=utcnow(),
            sealed_at=None,
            seal_sha256_hex="",
        )
        session.add(draft)
    draft.body_sealed = keyring.seal_text(body, f"reports:{draft.report_id}", access.case.filer_account_id)
    draft.attachment_document_id = attachment
    await session.flush()
    return draft


async def deliver(session: AsyncSession, keyring: Keyring, report: Report) -> Report:
    if report.status == ReportStatus.SEALED:
        return report  # delivering twice is harmless (workflow retries)
    attachment_sha = await _attachment_hash(session, report.case_id, report.attachment_document_id)
    report.seal_sha256_hex = seal_hash(report, body_of(keyring, report), attachment_sha)
    report.status = ReportStatus.SEALED.value
    report.sealed_at = utcnow()
    await session.flush()
    return report


async def add_addendum(
    session: AsyncSession,
    keyring: Keyring,
    access: CaseAccess,
    parent: Report,
    body: str,
    attachment: str,
    max_chars: int,
) -> Report:
    if parent.kind != ReportKind.OPINION or parent.status != ReportStatus.SEALED:
        raise FailedPrecondition("an addendum completes a delivered (sealed) opinion")
    _check_body(body, attachment, max_chars)
    addendum = Report(
        report_id=str(uuid.uuid4()),
        case_id=parent.case_id,
        kind=ReportKind.ADDENDUM.value,
        parent_report_id=parent.report_id,
        author_doctor_id=access.doctor_id,
        author_account_id=access.principal.subject,
        status=ReportStatus.DRAFT.value,
        attachment_document_id=attachment,
        created_at=utcnow(),
        sealed_at=None,
        seal_sha256_hex="",
    )
    addendum.body_sealed = keyring.seal_text(
        body, f"reports:{addendum.report_id}", access.case.filer_account_id
    )
    session.add(addendum)
    await session.flush()
    return await deliver(session, keyring, addendum)


async def verify_seal(session: AsyncSession, keyring: Keyring, report: Report) -> bool:
    attachment_sha = await _attachment_hash(session, report.case_id, report.attachment_document_id)
    return seal_hash(report, body_of(keyring, report), attachment_sha) == report.seal_sha256_hex


async def case_reports(session: AsyncSession, case_id: str) -> list[Report]:
    return list(
        (
            await session.scalars(
                select(Report).where(Report.case_id == case_id).order_by(Report.created_at, Report.report_id)
            )
        ).all()
    )
