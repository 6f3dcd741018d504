"""What a caller may read of a case, shared by the individual reads (ListFormVersions,
GetFormAnswers, ListCaseReports...) and by the case overview, which reads everything a
case page shows in one transaction, logged as one read of the case (issue 9). Which
documents a caller sees is the documents' rule (`documents.visible_documents`, shared
with ListDocuments).

The access itself (who reaches the case, restriction, habilitation) is the gate's; these
rules only say what of a reachable case each side sees:
- a referent doctor sees submitted form versions only, never malware-rejected files;
- a draft report is its author's (the case workflow sees its metadata before delivery).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.domain import exchanges, forms, reports
from services.dossier.domain.access import CaseAccess
from services.dossier.domain.accesslog import Purpose
from services.dossier.domain.documents import visible_documents
from services.dossier.models import CaseNotes, Document, FormAnswers, Message, ReadReceipt, Report
from services.shared.errors import NotFound

# --- the rules --------------------------------------------------------------------------------


def report_visible(row: Report, access: CaseAccess) -> bool:
    """Sealed reports for everyone who reaches the case; drafts for their author, and for
    the case workflow (metadata only) before it delivers them."""
    return (
        row.status == reports.ReportStatus.SEALED
        or row.author_account_id == access.principal.subject
        or access.purpose is Purpose.PLATFORM_PROCESSING
    )


def own_draft(row: Report, access: CaseAccess) -> bool:
    """The caller's own draft: the only report whose body a listing may carry."""
    return row.status == reports.ReportStatus.DRAFT and row.author_account_id == access.principal.subject


async def visible_reports(session: AsyncSession, access: CaseAccess) -> list[Report]:
    return [r for r in await reports.case_reports(session, access.case.case_id) if report_visible(r, access)]


async def visible_versions(
    session: AsyncSession, access: CaseAccess, kind: forms.FormKind
) -> list[FormAnswers]:
    """Versions of a form, oldest first; doctors read what the patient submitted only."""
    rows = await forms.list_versions(session, access.case.case_id, kind)
    if access.doctor_side:
        rows = [r for r in rows if r.status == forms.FormStatus.SUBMITTED]
    return rows


async def readable_answers(
    session: AsyncSession, access: CaseAccess, kind: forms.FormKind, version: int
) -> FormAnswers:
    """A version of a form's answers (0: the latest), as the caller may read it; NOT_FOUND
    when there is none. Doctors read what the patient submitted, not work in progress."""
    row = await forms.get_version(session, access.case.case_id, kind, version)
    if access.doctor_side and row.status != forms.FormStatus.SUBMITTED:
        submitted = [
            v
            for v in await forms.list_versions(session, access.case.case_id, kind)
            if v.status == forms.FormStatus.SUBMITTED
        ]
        if version or not submitted:
            raise NotFound("no submitted answers to this form")
        row = submitted[-1]
    return row


# --- the overview -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FormOverview:
    kind: forms.FormKind
    versions: list[FormAnswers]
    # With answers requested: the latest readable version and the current definition.
    answers: FormAnswers | None = None
    definition: forms.FormDefinition | None = None


@dataclass(frozen=True, slots=True)
class CaseOverview:
    documents: list[Document]  # by id, at most page + 1 (the extra one tells there are more)
    messages: list[Message]  # thread order, at most page + 1
    receipts: dict[str, list[ReadReceipt]]
    reports: list[Report]
    notes: CaseNotes | None
    forms: list[FormOverview]


async def _form(
    session: AsyncSession, access: CaseAccess, kind: forms.FormKind, answers: bool
) -> FormOverview:
    versions = await visible_versions(session, access, kind)
    if not answers:
        return FormOverview(kind, versions)
    try:
        row = await readable_answers(session, access, kind, 0)
    except NotFound:
        return FormOverview(kind, versions)
    try:
        definition = forms.definition(access.case.therapeutic_area, kind)
    except NotFound:
        definition = None
    return FormOverview(kind, versions, row, definition)


async def case_overview(session: AsyncSession, access: CaseAccess, page: int, answers: bool) -> CaseOverview:
    """Everything a case page shows, read in the caller's transaction; the caller logs it
    (one read of the case) before any of it leaves the service."""
    case_id = access.case.case_id
    documents = await visible_documents(session, access, "", page + 1)
    messages = await exchanges.thread(session, case_id, 0, page + 1)
    return CaseOverview(
        documents=documents,
        messages=messages,
        receipts=await exchanges.receipts(session, [m.message_id for m in messages[:page]]),
        reports=await visible_reports(session, access),
        notes=await exchanges.latest_notes(session, case_id),
        forms=[await _form(session, access, kind, answers) for kind in forms.FormKind],
    )
