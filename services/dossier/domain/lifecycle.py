"""A subject's medical file through its lifecycle (issue 10): export as FHIR R4 (GDPR-01,
GDPR-05), archive out of day-to-day reach (RET-02, RET-07), restriction (GDPR-04), and
purge by crypto-shredding plus deletion (RET-02, GDPR-03).

The subject is the account that filed the cases (the files of the people they act for
are theirs). Everything here runs in the caller's transaction, with one access-log entry
per case concerned; the access log itself is evidence and is never purged (SEC-02).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain import accesslog, exchanges, forms, reports, sharing
from services.dossier.domain.accesslog import Action, ObjectKind, Purpose
from services.dossier.domain.cases import TERMINAL, CaseStatus
from services.dossier.domain.crypto import CryptoError, Keyring
from services.dossier.domain.subjectkeys import SubjectKeys
from services.dossier.models import (
    AbuseReport,
    AccessLogEntry,
    Assignment,
    Case,
    CaseNotes,
    DoctorOpposition,
    Document,
    FormAnswers,
    Message,
    ReadReceipt,
    Report,
    ReportShare,
    SecureMessageOutbox,
    SubjectPurge,
)
from services.shared.auth import Principal
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument

# Documents a person can fetch separately with DownloadDocument (an object exists, clean).
EXPORTABLE_DOCUMENTS = frozenset({"available", "flagged", "replaced"})
CONSULT_NOTE = {"system": "http://loinc.org", "code": "11488-4", "display": "Consult note"}
RPPS_SYSTEM = "urn:oid:1.2.250.1.71.4.2.1"


class LegalBasis(StrEnum):
    LEGAL_HOLD = "legal_hold"
    MEDICAL_RECORD_RETENTION = "medical_record_retention"
    EVIDENCE = "evidence"


def check_subject(subject_id: str) -> str:
    if not subject_id or len(subject_id) > 36 or not subject_id.isprintable():
        raise InvalidArgument("subject_id is required (an account id)")
    return subject_id


async def subject_cases(
    session: AsyncSession, subject_id: str, *, archived: bool | None = None
) -> list[Case]:
    query = select(Case).where(Case.filer_account_id == subject_id)
    if archived is True:
        query = query.where(Case.archived_at.is_not(None))
    elif archived is False:
        query = query.where(Case.archived_at.is_(None))
    return list((await session.scalars(query.order_by(Case.created_at, Case.case_id))).all())


@dataclass(frozen=True, slots=True)
class SubjectCase:
    """A live case of a subject as the lifecycle worker sees it: its status, unless its
    processing is restricted (GDPR-04: then not read, None)."""

    case_id: str
    status: CaseStatus | None
    restricted: bool


async def list_subject_cases(
    sessions: async_sessionmaker[AsyncSession], read_log: accesslog.ReadLog, actor: Principal, subject_id: str
) -> list[SubjectCase]:
    """The subject's live cases (archived ones are out of reach, RET-07), oldest first, for
    the platform deciding whether an erasure can run. One read entry for the listing (the
    subject as object id), committed through the group commit before anything is returned."""
    async with sessions() as session:
        cases = await subject_cases(session, subject_id, archived=False)
        listed = [
            SubjectCase(
                c.case_id,
                None if c.restricted_at is not None else CaseStatus(c.status),
                c.restricted_at is not None,
            )
            for c in cases
        ]
    await read_log.append(
        [
            accesslog.pending(
                actor=actor, action=Action.READ, object_kind=ObjectKind.CASE, object_id=subject_id,
                case=None, purpose=Purpose.PLATFORM_PROCESSING, subject_account_id=subject_id,
            )
        ]
    )  # fmt: skip
    return listed


def _subject_documents(subject_id: str, case_ids: Sequence[str]) -> Any:
    """The case documents, and the account-level proofs the subject uploaded."""
    return or_(
        Document.case_id.in_(case_ids),
        (Document.case_id == "") & (Document.uploaded_by_account_id == subject_id),
    )


async def _count(session: AsyncSession, model: Any, condition: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(condition)) or 0)


async def inventory(session: AsyncSession, subject_id: str, case_ids: Sequence[str]) -> dict[str, int]:
    """How many items of each category the subject's file holds."""
    ids = list(case_ids)
    counts = {
        "cases": len(ids),
        "form_answers": await _count(session, FormAnswers, FormAnswers.case_id.in_(ids)),
        "documents": await _count(session, Document, _subject_documents(subject_id, ids)),
        "messages": await _count(session, Message, Message.case_id.in_(ids)),
        "case_notes": await _count(session, CaseNotes, CaseNotes.case_id.in_(ids)),
        "reports": await _count(session, Report, Report.case_id.in_(ids)),
    }
    return {name: count for name, count in counts.items() if count}


async def _log(
    session: AsyncSession,
    actor: Principal,
    action: Action,
    cases: Sequence[Case],
    purpose: Purpose,
    subject: str,
) -> int:
    for case in cases:
        await accesslog.append(
            session, actor=actor, action=action, object_kind=ObjectKind.CASE, object_id=case.case_id,
            case=case, purpose=purpose,
        )  # fmt: skip
    if not cases:
        await accesslog.append(
            session, actor=actor, action=action, object_kind=ObjectKind.CASE, object_id=subject,
            case=None, purpose=purpose, subject_account_id=subject,
        )  # fmt: skip
    return max(1, len(cases))


# ---------------------------------------------------------------- export (FHIR R4)


def _instant(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def _subject_ref(case: Case) -> dict[str, str]:
    """The patient the file is about: the filer, or the person they act for (exported by
    the identity service as a RelatedPerson)."""
    if case.beneficiary_id:
        return {"reference": f"RelatedPerson/{case.beneficiary_id}"}
    return {"reference": f"Patient/{case.filer_account_id}"}


def _author_ref(account_id: str, case: Case) -> dict[str, str]:
    if account_id == case.filer_account_id:
        return {"reference": f"Patient/{account_id}"}
    return {"reference": f"Practitioner/{account_id}"}


def _answer_items(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Form answers (JSON objects) as QuestionnaireResponse items: objects become groups,
    lists repeated answers (or repeated groups), scalars typed answers."""
    items: list[dict[str, Any]] = []
    for key, value in values.items():
        item: dict[str, Any] = {"linkId": str(key)}
        if isinstance(value, dict):
            children = _answer_items(value)
            if not children:
                continue
            item["item"] = children
        elif isinstance(value, list):
            answers = [a for a in (_answer(v) for v in value) if a]
            if not answers:
                continue
            item["answer"] = answers
        else:
            answer = _answer(value)
            if not answer:
                continue
            item["answer"] = [answer]
        items.append(item)
    return items


def _answer(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, float):
        return {"valueDecimal": value}
    if isinstance(value, str):
        return {"valueString": value} if value else {}
    if isinstance(value, dict):
        children = _answer_items(value)
        return {"valueString": json.dumps(value, ensure_ascii=False), "item": children} if children else {}
    return {}


@dataclass
class Export:
    resources: list[dict[str, Any]] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)

    def bundle(self, subject_id: str, at: datetime) -> dict[str, Any]:
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "collection",
            "identifier": {"system": "urn:secondopinion:export:dossier", "value": subject_id},
            "timestamp": at.isoformat(),
        }
        if self.resources:
            bundle["entry"] = [
                {"fullUrl": f"urn:secondopinion:{r['resourceType']}:{r['id']}", "resource": r}
                for r in self.resources
            ]
        return bundle


async def export_cases(
    session: AsyncSession, keyring: Keyring, subject_id: str, cases: Sequence[Case]
) -> Export:
    """The file as FHIR R4 resources: ServiceRequest (the request), QuestionnaireResponse
    (form answers, every version), DocumentReference (files, fetched separately),
    Communication (notes and messages), DiagnosticReport (sealed reports), Practitioner
    (the treating physician the person named)."""
    out = Export()
    ids = [c.case_id for c in cases]
    for case in cases:
        out.resources.append(
            {
                "resourceType": "ServiceRequest",
                "id": case.case_id,
                "identifier": [{"system": "urn:secondopinion:case-reference", "value": case.case_reference}],
                "status": "completed"
                if case.status in (CaseStatus.CLOSED, CaseStatus.REPORT_DELIVERED)
                else "revoked"
                if case.status == CaseStatus.CANCELLED
                else "active",
                "intent": "order",
                "category": [{"coding": [{"system": "urn:secondopinion:purpose", "code": case.purpose}]}],
                "code": {
                    "coding": [
                        {"system": "urn:secondopinion:therapeutic-area", "code": case.therapeutic_area}
                    ],
                    "text": "Second medical opinion",
                },
                "subject": _subject_ref(case),
                "requester": {"reference": f"Patient/{case.filer_account_id}"},
                "authoredOn": _instant(case.submitted_at or case.created_at),
                "quantityQuantity": {"value": case.requested_doctor_count, "unit": "referent doctors"},
            }
        )
        contact = sharing.contact_of(keyring, case)
        if contact is not None:
            practitioner: dict[str, Any] = {
                "resourceType": "Practitioner",
                "id": f"tp-{case.case_id}",
                "name": [{"text": contact.display_name}],
                "telecom": [{"system": "email", "value": contact.secure_messaging_address, "use": "work"}],
            }
            if contact.rpps_number:
                practitioner["identifier"] = [{"system": RPPS_SYSTEM, "value": contact.rpps_number}]
            out.resources.append(practitioner)
    for row in (
        await session.scalars(
            select(FormAnswers).where(FormAnswers.case_id.in_(ids)).order_by(FormAnswers.created_at)
        )
    ).all():
        case = next(c for c in cases if c.case_id == row.case_id)
        area, kind, version = row.form_definition_id.split("/")
        answers = json.loads(forms.open_answers(keyring, row))
        response: dict[str, Any] = {
            "resourceType": "QuestionnaireResponse",
            "id": row.form_answers_id,
            "questionnaire": f"urn:secondopinion:questionnaire:{area}:{kind}|{version}",
            "status": "completed" if row.status == forms.FormStatus.SUBMITTED else "in-progress",
            "subject": _subject_ref(case),
            "basedOn": [{"reference": f"ServiceRequest/{row.case_id}"}],
            "authored": _instant(row.submitted_at or row.created_at),
            "author": _author_ref(row.entered_by_account_id, case),
        }
        items = _answer_items(answers)
        if items:
            response["item"] = items
        out.resources.append(response)
    for document in (
        await session.scalars(
            select(Document).where(_subject_documents(subject_id, ids)).order_by(Document.uploaded_at)
        )
    ).all():
        reference: dict[str, Any] = {
            "resourceType": "DocumentReference",
            "id": document.document_id,
            "identifier": [{"system": "urn:secondopinion:sha256", "value": document.sha256_hex}],
            "status": "superseded" if document.status == "replaced" else "current",
            "type": {"coding": [{"system": "urn:secondopinion:document-purpose", "code": document.purpose}]},
            "date": _instant(document.uploaded_at),
            "content": [
                {
                    "attachment": {
                        "contentType": _mime(document.content_type),
                        "size": document.size_bytes,
                        "title": document.file_name,
                        "url": f"urn:secondopinion:document:{document.document_id}",
                    }
                }
            ],
        }
        owner = next((c for c in cases if c.case_id == document.case_id), None)
        if owner is not None:
            reference["subject"] = _subject_ref(owner)
            reference["context"] = {"related": [{"reference": f"ServiceRequest/{owner.case_id}"}]}
        else:
            reference["subject"] = {"reference": f"Patient/{subject_id}"}
        if document.status in EXPORTABLE_DOCUMENTS and document.object_key:
            out.document_ids.append(document.document_id)
        else:
            reference["description"] = "not exportable: " + (
                "awaiting its malware scan"
                if document.status == "quarantined"
                else "rejected by the malware scan"
            )
        out.resources.append(reference)
    for notes in (
        await session.scalars(
            select(CaseNotes).where(CaseNotes.case_id.in_(ids)).order_by(CaseNotes.updated_at)
        )
    ).all():
        case = next(c for c in cases if c.case_id == notes.case_id)
        text = exchanges.notes_text(keyring, notes)
        communication: dict[str, Any] = {
            "resourceType": "Communication",
            "id": notes.notes_id,
            "status": "completed",
            "category": [{"coding": [{"system": "urn:secondopinion:communication", "code": "case-notes"}]}],
            "subject": _subject_ref(case),
            "basedOn": [{"reference": f"ServiceRequest/{notes.case_id}"}],
            "sent": _instant(notes.updated_at),
            "sender": _author_ref(notes.updated_by_account_id, case),
        }
        if text:
            communication["payload"] = [{"contentString": text}]
        out.resources.append(communication)
    for message in (
        await session.scalars(select(Message).where(Message.case_id.in_(ids)).order_by(Message.sent_at))
    ).all():
        case = next(c for c in cases if c.case_id == message.case_id)
        body = exchanges.message_body(keyring, message)
        payload: list[dict[str, Any]] = [{"contentString": body}] if body else []
        payload += [
            {"contentReference": {"reference": f"DocumentReference/{document_id}"}}
            for document_id in message.attachment_document_ids
        ]
        communication = {
            "resourceType": "Communication",
            "id": message.message_id,
            "status": "completed",
            "category": [{"coding": [{"system": "urn:secondopinion:communication", "code": message.kind}]}],
            "subject": _subject_ref(case),
            "basedOn": [{"reference": f"ServiceRequest/{message.case_id}"}],
            "sent": _instant(message.sent_at),
            "sender": _author_ref(message.sender_account_id, case),
        }
        if message.in_reply_to_message_id:
            communication["inResponseTo"] = [{"reference": f"Communication/{message.in_reply_to_message_id}"}]
        if payload:
            communication["payload"] = payload
        out.resources.append(communication)
    for report in (
        await session.scalars(
            select(Report)
            .where(Report.case_id.in_(ids), Report.status == reports.ReportStatus.SEALED.value)
            .order_by(Report.sealed_at)
        )
    ).all():
        case = next(c for c in cases if c.case_id == report.case_id)
        diagnostic: dict[str, Any] = {
            "resourceType": "DiagnosticReport",
            "id": report.report_id,
            "identifier": [
                {"system": "urn:secondopinion:report-seal-sha256", "value": report.seal_sha256_hex}
            ],
            "basedOn": [{"reference": f"ServiceRequest/{report.case_id}"}],
            "status": "appended" if report.kind == reports.ReportKind.ADDENDUM else "final",
            "code": {"coding": [CONSULT_NOTE]},
            "subject": _subject_ref(case),
            "issued": _instant(report.sealed_at),
            "performer": [{"reference": f"Practitioner/{report.author_account_id}"}],
        }
        body = reports.body_of(keyring, report)
        if body:
            diagnostic["conclusion"] = body
        if report.attachment_document_id:
            diagnostic["presentedForm"] = [
                {"url": f"urn:secondopinion:document:{report.attachment_document_id}", "title": "report"}
            ]
        out.resources.append(diagnostic)
    return out


def _mime(content_type: str) -> str:
    return {
        "pdf": "application/pdf",
        "jpeg": "image/jpeg",
        "png": "image/png",
        "dicom": "application/dicom",
    }.get(content_type, "application/octet-stream")


def validate_bundle(bundle: dict[str, Any]) -> None:
    """fhir.resources' R4 family (R4B: R4 plus technical corrections, same shapes here)."""
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)


async def export_subject(
    session: AsyncSession,
    keyring: Keyring,
    keys: SubjectKeys,
    actor: Principal,
    subject_id: str,
    *,
    archived_only: bool = False,
    purpose: Purpose = Purpose.RIGHTS_REQUEST,
) -> tuple[dict[str, Any], list[str], int]:
    """The subject's file as a validated FHIR bundle, its exportable document ids, and
    how many access-log entries the reading wrote."""
    await keys.load(session, subject_id)
    cases = await subject_cases(session, subject_id, archived=True if archived_only else None)
    try:
        export = await export_cases(session, keyring, subject_id, cases)
    except CryptoError as exc:  # pragma: no cover - a key that should be there is not
        raise FailedPrecondition("part of the file cannot be decrypted") from exc
    bundle = export.bundle(subject_id, utcnow())
    validate_bundle(bundle)
    logged = await _log(
        session, actor, Action.READ if archived_only else Action.EXPORT, cases, purpose, subject_id
    )
    return bundle, export.document_ids, logged


# ---------------------------------------------------------------- archive and restriction


async def archive_subject(
    session: AsyncSession, actor: Principal, subject_id: str
) -> tuple[datetime, dict[str, int]]:
    """RET-02 / RET-07: the file leaves day-to-day reach (every normal path answers
    NOT_FOUND); the archive-read path alone reads it."""
    now = utcnow()
    live = await subject_cases(session, subject_id, archived=False)
    ids = [c.case_id for c in live]
    if live:
        await session.execute(update(Case).where(Case.case_id.in_(ids)).values(archived_at=now))
    await session.execute(
        update(Document)
        .where(_subject_documents(subject_id, ids), Document.archived_at.is_(None))
        .values(archived_at=now)
    )
    await _log(session, actor, Action.LIFECYCLE, live, Purpose.PLATFORM_PROCESSING, subject_id)
    archived = await subject_cases(session, subject_id, archived=True)
    at = min((c.archived_at for c in archived if c.archived_at is not None), default=now)
    return at, await inventory(session, subject_id, [c.case_id for c in archived])


async def restrict_subject(
    session: AsyncSession, actor: Principal, subject_id: str, restricted: bool
) -> tuple[datetime, dict[str, int]]:
    """GDPR-04: kept, readable by the person, not otherwise processed (or released)."""
    now = utcnow()
    cases = await subject_cases(session, subject_id)
    ids = [c.case_id for c in cases]
    if ids:
        if restricted:
            await session.execute(
                update(Case)
                .where(Case.case_id.in_(ids), Case.restricted_at.is_(None))
                .values(restricted_at=now)
            )
        else:
            await session.execute(update(Case).where(Case.case_id.in_(ids)).values(restricted_at=None))
    await _log(session, actor, Action.LIFECYCLE, cases, Purpose.RIGHTS_REQUEST, subject_id)
    return now, await inventory(session, subject_id, ids)


# ---------------------------------------------------------------- purge


@dataclass(frozen=True, slots=True)
class PurgeOutcome:
    purged_at: datetime
    purged: dict[str, int]
    retained: list[dict[str, Any]]
    subject_key_destroyed: bool
    object_keys: list[str]


async def purge_subject(
    session: AsyncSession,
    actor: Principal,
    subject_id: str,
    rights_request_id: str,
    evidence_retention: timedelta,
) -> PurgeOutcome:
    """GDPR-03 / RET-02: the subject's key is destroyed (crypto-shredding), the rows go,
    the objects are listed for deletion right after the commit. The access log stays as
    evidence (it names ids, never content)."""
    cases = await subject_cases(session, subject_id)
    ids = [c.case_id for c in cases]
    if rights_request_id:
        open_cases = [c for c in cases if c.status not in TERMINAL and c.status != CaseStatus.DRAFT]
        if open_cases:
            raise FailedPrecondition(
                "a request is in progress: it must end (or be cancelled) before the file is erased"
            )
    purged = await inventory(session, subject_id, ids)
    await _log(session, actor, Action.LIFECYCLE, cases, Purpose.RIGHTS_REQUEST if rights_request_id else
               Purpose.PLATFORM_PROCESSING, subject_id)  # fmt: skip
    documents = _subject_documents(subject_id, ids)
    object_keys = [
        key for key in (await session.scalars(select(Document.object_key).where(documents))).all() if key
    ]
    if object_keys:
        purged["objects"] = len(object_keys)
    message_ids = select(Message.message_id).where(Message.case_id.in_(ids))
    await session.execute(delete(ReadReceipt).where(ReadReceipt.message_id.in_(message_ids)))
    for model, column in (
        (Message, Message.case_id),
        (FormAnswers, FormAnswers.case_id),
        (CaseNotes, CaseNotes.case_id),
        (Report, Report.case_id),
        (ReportShare, ReportShare.case_id),
        (SecureMessageOutbox, SecureMessageOutbox.case_id),
        (AbuseReport, AbuseReport.case_id),
        (Assignment, Assignment.case_id),
        (DoctorOpposition, DoctorOpposition.case_id),
    ):
        await session.execute(delete(model).where(column.in_(ids)))
    await session.execute(delete(Document).where(documents))
    await session.execute(delete(Case).where(Case.case_id.in_(ids)))
    destroyed = await SubjectKeys.destroy(session, subject_id)
    previous = await session.get(SubjectPurge, subject_id, with_for_update=True)
    destroyed = destroyed or bool(previous is not None and previous.report.get("subject_key_destroyed"))
    now = utcnow()
    evidence = await _count(
        session,
        AccessLogEntry,
        or_(AccessLogEntry.subject_account_id == subject_id, AccessLogEntry.beneficiary_id == subject_id),
    )
    retained = [
        {
            "category": "access_log",
            "count": evidence,
            "legal_basis": LegalBasis.EVIDENCE.value,
            "retained_until": (now + evidence_retention).isoformat(),
        }
    ]
    outcome = PurgeOutcome(now, purged, retained, destroyed, object_keys)
    report = {
        "purged": purged,
        "retained": retained,
        "subject_key_destroyed": destroyed,
    }
    if previous is None:
        session.add(
            SubjectPurge(
                subject_id=subject_id,
                purged_at=now,
                rights_request_id=rights_request_id,
                report=report,
                pending_object_keys=object_keys,
            )
        )
    else:  # purged again (a retention purge after an erasure): what this run did
        previous.purged_at, previous.rights_request_id, previous.report = now, rights_request_id, report
        previous.pending_object_keys = sorted({*previous.pending_object_keys, *object_keys})
    await session.flush()
    return outcome
