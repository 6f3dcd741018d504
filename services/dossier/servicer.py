"""Thin gRPC layer of the dossier service: who calls (verified token), message
translation, and the domain. Access rules and the access log live in `domain/`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from secondopinion.dossier.v1 import dossier_pb2 as pb
from secondopinion.dossier.v1 import dossier_pb2_grpc as pb_grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier import models
from services.dossier.domain import accesslog, exchanges, forms, lifecycle, overview, reports, sharing
from services.dossier.domain.access import AccessRefused, CaseAccess, Need
from services.dossier.domain.accesslog import Action, ObjectKind, Purpose
from services.dossier.domain.cases import (
    AT_RISK_STATUSES,
    AssignmentEndReason,
    CasePurpose,
    CaseStatus,
    DoctorChoiceMode,
    FilingCapacity,
    NewCase,
    at_risk_before,
    change_status,
    end_assignment,
    list_assignments,
    open_case,
    oppose_doctor,
    record_assignment,
)
from services.dossier.domain.crypto import Keyring
from services.dossier.domain.documents import (
    DocumentPurpose,
    DocumentSource,
    DocumentStatus,
    DocumentVault,
    FlagReason,
    UploadRequest,
)
from services.dossier.domain.filetypes import ContentType, sanitise_file_name
from services.dossier.domain.gate import Gate, ProcessingRestricted, Reads, record
from services.dossier.domain.sharing import DevelopmentSecureMessaging, SecureHealthMessaging
from services.dossier.settings import DossierSettings
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.shared.grpc_server import require_principal
from services.shared.idempotency import check_key, run_once
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

E = TypeVar("E")
log = logging.getLogger(__name__)


class DeadlineChangeReason(StrEnum):
    REVIEW_STARTED = "review_started"
    EXTENDED = "extended"
    REASSIGNED = "reassigned"
    INFORMATION_REQUESTED = "information_requested"


WORKER = frozenset({"worker"})
MAX_PAGE = 100
# Staff who work the abuse queue (it holds ids and categories, no content).
ABUSE_STAFF = (Role.COORDINATOR, Role.ADMINISTRATOR)
LOG_AUDITORS = (Role.DPO, Role.ADMINISTRATOR)


def _required(value: E | None, field: str) -> E:
    if value is None:
        raise InvalidArgument(f"{field} is required")
    return value


def _page(size: int) -> int:
    return MAX_PAGE if size <= 0 else min(size, MAX_PAGE)


def _offset(token: str) -> int:
    if not token:
        return 0
    if not token.isdigit() or len(token) > 9:
        raise InvalidArgument("page_token is not valid")
    return int(token)


def _cancel_when_client_leaves(context: Any) -> None:
    """A client that disconnects mid-upload must not leave the handler waiting for bytes
    that never come: cancelling it runs the upload's clean-up (scratch file, object)."""
    task = asyncio.current_task()

    def on_done(_: Any) -> None:
        if task is not None and not task.done() and context.cancelled():
            task.cancel()

    context.add_done_callback(on_done)


def _ts(value: Any) -> Any:
    return to_timestamp(value) if value is not None else None


# --- conversions --------------------------------------------------------------------------


def case_to_pb(case: models.Case) -> pb.Case:
    return pb.Case(
        case_id=case.case_id,
        filer_account_id=case.filer_account_id,
        filing_capacity=to_pb_enum(pb.FilingCapacity, FilingCapacity(case.filing_capacity)),
        beneficiary_id=case.beneficiary_id,
        therapeutic_area=case.therapeutic_area,
        purpose=to_pb_enum(pb.CasePurpose, CasePurpose(case.purpose)),
        doctor_choice_mode=to_pb_enum(pb.DoctorChoiceMode, DoctorChoiceMode(case.doctor_choice_mode)),
        chosen_doctor_ids=case.chosen_doctor_ids,
        assigned_doctor_ids=case.assigned_doctor_ids,
        status=to_pb_enum(pb.CaseStatus, CaseStatus(case.status)),
        created_at=to_timestamp(case.created_at),
        updated_at=to_timestamp(case.updated_at),
        entered_under_mandate=case.entered_under_mandate,
        deadline_at=_ts(case.deadline_at),
        case_reference=case.case_reference,
        requested_doctor_count=case.requested_doctor_count,
        submitted_at=_ts(case.submitted_at),
        has_treating_physician=case.treating_physician_sealed is not None,
        report_sharing_opposed_at=_ts(case.report_sharing_opposed_at),
        processing_restricted=case.restricted_at is not None,
    )


def physician_to_pb(contact: sharing.TreatingPhysician) -> pb.TreatingPhysician:
    return pb.TreatingPhysician(
        display_name=contact.display_name,
        rpps_number=contact.rpps_number,
        secure_messaging_address=contact.secure_messaging_address,
        recorded_at=to_timestamp(contact.recorded_at),
    )


def assignment_to_pb(row: models.Assignment) -> pb.Assignment:
    return pb.Assignment(
        assignment_id=row.assignment_id,
        case_id=row.case_id,
        doctor_id=row.doctor_id,
        doctor_account_id=row.doctor_account_id,
        started_at=to_timestamp(row.started_at),
        ended_at=_ts(row.ended_at),
        end_reason=to_pb_enum(pb.AssignmentEndReason, AssignmentEndReason(row.end_reason))
        if row.end_reason
        else pb.ASSIGNMENT_END_REASON_UNSPECIFIED,
    )


def document_to_pb(row: models.Document) -> pb.Document:
    return pb.Document(
        document_id=row.document_id,
        case_id=row.case_id,
        beneficiary_id=row.beneficiary_id,
        purpose=to_pb_enum(pb.DocumentPurpose, DocumentPurpose(row.purpose)),
        file_name=row.file_name,
        content_type=to_pb_enum(pb.DocumentContentType, ContentType(row.content_type)),
        size_bytes=row.size_bytes,
        sha256_hex=row.sha256_hex,
        status=to_pb_enum(pb.DocumentStatus, DocumentStatus(row.status)),
        source=to_pb_enum(pb.DocumentSource, DocumentSource(row.source)),
        uploaded_by_account_id=row.uploaded_by_account_id,
        uploaded_at=to_timestamp(row.uploaded_at),
        replaces_document_id=row.replaces_document_id,
        flag_reason=to_pb_enum(pb.DocumentFlagReason, FlagReason(row.flag_reason))
        if row.flag_reason
        else pb.DOCUMENT_FLAG_REASON_UNSPECIFIED,
        received_by_post_at=_ts(row.received_by_post_at),
    )


def answers_to_pb(row: models.FormAnswers, answers_json: str = "") -> pb.FormAnswers:
    return pb.FormAnswers(
        form_answers_id=row.form_answers_id,
        case_id=row.case_id,
        kind=to_pb_enum(pb.FormKind, forms.FormKind(row.kind)),
        form_definition_id=row.form_definition_id,
        version=row.version,
        status=to_pb_enum(pb.FormAnswersStatus, forms.FormStatus(row.status)),
        answers_json=answers_json,
        entered_by_account_id=row.entered_by_account_id,
        entered_under_mandate=row.entered_under_mandate,
        created_at=to_timestamp(row.created_at),
        submitted_at=_ts(row.submitted_at),
    )


def definition_to_pb(definition: forms.FormDefinition) -> pb.FormDefinition:
    return pb.FormDefinition(
        form_definition_id=definition.definition_id,
        kind=to_pb_enum(pb.FormKind, definition.kind),
        therapeutic_area=definition.area,
        version=definition.version,
        schema_format=pb.FORM_SCHEMA_FORMAT_JSON_SCHEMA,
        definition_json=definition.text,
    )


def _documents_page(rows: list[models.Document], limit: int) -> tuple[list[pb.Document], str]:
    """A page of documents read by id (at most limit + 1), shown by upload time."""
    by_id = sorted(rows, key=lambda r: r.document_id)
    return (
        [document_to_pb(r) for r in sorted(by_id[:limit], key=lambda r: r.uploaded_at)],
        by_id[limit - 1].document_id if len(by_id) > limit else "",
    )


def abuse_to_pb(row: models.AbuseReport) -> pb.AbuseReport:
    return pb.AbuseReport(
        abuse_report_id=row.abuse_report_id,
        case_id=row.case_id,
        target_kind=to_pb_enum(pb.AbuseTargetKind, exchanges.AbuseTarget(row.target_kind)),
        target_id=row.target_id,
        category=to_pb_enum(pb.AbuseCategory, exchanges.AbuseCategory(row.category)),
        reported_by_account_id=row.reported_by_account_id,
        reported_at=to_timestamp(row.reported_at),
        status=to_pb_enum(pb.AbuseReportStatus, exchanges.AbuseStatus(row.status)),
        resolution=to_pb_enum(pb.AbuseResolution, exchanges.AbuseResolution(row.resolution))
        if row.resolution
        else pb.ABUSE_RESOLUTION_UNSPECIFIED,
        resolved_by_account_id=row.resolved_by_account_id,
        resolved_at=_ts(row.resolved_at),
    )


def report_to_pb(row: models.Report, body: str = "") -> pb.Report:
    return pb.Report(
        report_id=row.report_id,
        case_id=row.case_id,
        kind=to_pb_enum(pb.ReportKind, reports.ReportKind(row.kind)),
        parent_report_id=row.parent_report_id,
        author_doctor_id=row.author_doctor_id,
        author_account_id=row.author_account_id,
        status=to_pb_enum(pb.ReportStatus, reports.ReportStatus(row.status)),
        body=body,
        attachment_document_id=row.attachment_document_id,
        seal_sha256_hex=row.seal_sha256_hex,
        created_at=to_timestamp(row.created_at),
        sealed_at=_ts(row.sealed_at),
    )


def log_entry_to_pb(row: models.AccessLogEntry) -> pb.AccessLogEntry:
    return pb.AccessLogEntry(
        sequence=row.sequence,
        actor_account_id=row.actor_account_id,
        actor_role=row.actor_role.upper(),
        action=to_pb_enum(pb.AccessAction, Action(row.action)),
        object_kind=to_pb_enum(pb.AccessObjectKind, ObjectKind(row.object_kind)),
        object_id=row.object_id,
        case_id=row.case_id,
        purpose=to_pb_enum(pb.AccessPurpose, Purpose(row.purpose)),
        occurred_at=to_timestamp(row.occurred_at),
        previous_hash_hex=row.previous_hash,
        entry_hash_hex=row.entry_hash,
    )


class DossierServicer(pb_grpc.DossierServiceServicer):
    def __init__(
        self,
        gate: Gate,
        vault: DocumentVault,
        keyring: Keyring,
        settings: DossierSettings,
        messaging: SecureHealthMessaging | None = None,
    ) -> None:
        self._gate = gate
        self._sessions = gate.sessions
        self._vault = vault
        self._keyring = keyring
        self._settings = settings
        self._messaging = messaging or DevelopmentSecureMessaging()

    async def _read_case(self, session: AsyncSession, principal: Principal, case_id: str) -> models.Case:
        """A case for a response right after the caller's own logged write."""
        return (await self._gate.resolve(session, principal, case_id, Need.READ)).case

    # --- cases ------------------------------------------------------------------------------
    async def CreateCase(self, request: pb.CreateCaseRequest, context: Any) -> pb.CreateCaseResponse:
        principal = require_principal()
        if principal.role is Role.PATIENT:
            if request.on_behalf_of_account_id:
                raise InvalidArgument(
                    "on_behalf_of_account_id is for staff under the personal-assistant mandate"
                )
            filer, entered_by, purpose = principal.subject, "", Purpose.OWN_SPACE
        elif self._gate.policy.personal_assistant(principal):
            if not request.on_behalf_of_account_id:
                raise InvalidArgument("on_behalf_of_account_id (the patient) is required for staff")
            filer, entered_by, purpose = (
                request.on_behalf_of_account_id,
                principal.subject,
                Purpose.PERSONAL_ASSISTANT,
            )
        else:
            raise PermissionDenied("this operation is not allowed for the caller's role")
        new = NewCase(
            filer_account_id=filer,
            filing_capacity=_required(
                from_pb_enum(pb.FilingCapacity, FilingCapacity, request.filing_capacity), "filing_capacity"
            ),
            therapeutic_area=request.therapeutic_area,
            purpose=_required(from_pb_enum(pb.CasePurpose, CasePurpose, request.purpose), "purpose"),
            doctor_choice_mode=_required(
                from_pb_enum(pb.DoctorChoiceMode, DoctorChoiceMode, request.doctor_choice_mode),
                "doctor_choice_mode",
            ),
            beneficiary_id=request.beneficiary_id,
            chosen_doctor_ids=list(request.chosen_doctor_ids),
            entered_by_account_id=entered_by,
            requested_doctor_count=request.requested_doctor_count,
        )

        async def create(session: AsyncSession) -> str:
            case = await open_case(session, new)
            await accesslog.append(
                session, actor=principal, action=Action.CREATE, object_kind=ObjectKind.CASE,
                object_id=case.case_id, case=case, purpose=purpose,
            )  # fmt: skip
            return case.case_id

        # The key is scoped to the caller so two people can never collide on a key.
        case_id, _ = await run_once(
            self._sessions, models.IdempotencyRecord, request, f"CreateCase:{principal.subject}", create
        )
        await self._gate.keys.ensure(filer)  # the subject's key, before any of their data
        async with self._sessions() as session:
            return pb.CreateCaseResponse(case=case_to_pb(await self._read_case(session, principal, case_id)))

    async def GetCase(self, request: pb.GetCaseRequest, context: Any) -> pb.GetCaseResponse:
        principal = require_principal()
        async with self._gate.read(principal, request.case_id) as (_session, access, reads):
            reads.add(access, ObjectKind.CASE, access.case.case_id)
            response = pb.GetCaseResponse(case=case_to_pb(access.case))
        return response

    async def GetCaseOverview(
        self, request: pb.GetCaseOverviewRequest, context: Any
    ) -> pb.GetCaseOverviewResponse:
        """A case page in one read: one transaction, one access-log entry (the case, read),
        committed before the response leaves."""
        principal = require_principal()
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            found = await overview.case_overview(session, access, MAX_PAGE, request.include_form_answers)
            reads.add(access, ObjectKind.CASE, access.case.case_id)
            response = self._overview_to_pb(access, found)
        return response

    def _overview_to_pb(self, access: CaseAccess, found: overview.CaseOverview) -> pb.GetCaseOverviewResponse:
        documents, documents_next = _documents_page(found.documents, MAX_PAGE)
        return pb.GetCaseOverviewResponse(
            case=case_to_pb(access.case),
            documents=documents,
            documents_next_page_token=documents_next,
            messages=self._messages_to_pb(found.messages[:MAX_PAGE], found.receipts),
            messages_next_page_token=str(MAX_PAGE) if len(found.messages) > MAX_PAGE else "",
            reports=[
                report_to_pb(r, reports.body_of(self._keyring, r) if overview.own_draft(r, access) else "")
                for r in found.reports
            ],
            notes=self._notes_to_pb(access.case.case_id, found.notes),
            forms=[
                pb.CaseFormOverview(
                    kind=to_pb_enum(pb.FormKind, form.kind),
                    versions=[answers_to_pb(v) for v in form.versions],
                    answers=answers_to_pb(form.answers, forms.open_answers(self._keyring, form.answers))
                    if form.answers
                    else None,
                    definition=definition_to_pb(form.definition) if form.definition else None,
                )
                for form in found.forms
            ],
        )

    async def ListCases(self, request: pb.ListCasesRequest, context: Any) -> pb.ListCasesResponse:
        principal = require_principal()
        scope = request.scope
        limit, offset = _page(request.page_size), _offset(request.page_token)
        query = select(models.Case).where(models.Case.archived_at.is_(None))
        order: Any = (models.Case.created_at.desc(), models.Case.case_id)
        if scope == pb.CASE_LIST_SCOPE_MINE and principal.role is Role.PATIENT:
            query = query.where(models.Case.filer_account_id == principal.subject)
        elif scope == pb.CASE_LIST_SCOPE_ASSIGNED_TO_ME and principal.role is Role.REFERENT_DOCTOR:
            query = query.where(
                models.Case.case_id.in_(
                    select(models.Assignment.case_id).where(
                        models.Assignment.doctor_account_id == principal.subject,
                        models.Assignment.ended_at.is_(None),
                    )
                )
            )
        elif scope == pb.CASE_LIST_SCOPE_ESCALATED and self._gate.policy.health_data_habilitated(principal):
            query = query.where(models.Case.status == CaseStatus.ESCALATED.value)
        elif scope == pb.CASE_LIST_SCOPE_AT_RISK and self._gate.policy.health_data_habilitated(principal):
            within = request.at_risk_within.ToTimedelta() if request.HasField("at_risk_within") else None
            query = query.where(
                models.Case.status.in_(AT_RISK_STATUSES),
                models.Case.deadline_at.is_not(None),
                models.Case.deadline_at <= at_risk_before(utcnow(), within),
            )
            order = (models.Case.deadline_at, models.Case.case_id)  # nearest deadline first
        elif scope == pb.CASE_LIST_SCOPE_UNSPECIFIED:
            raise InvalidArgument("scope is required")
        else:
            raise PermissionDenied("this listing is not allowed for the caller")
        statuses = [from_pb_enum(pb.CaseStatus, CaseStatus, s) for s in request.statuses]
        if statuses:
            query = query.where(models.Case.status.in_([s.value for s in statuses if s is not None]))
        query = query.order_by(*order).offset(offset).limit(limit + 1)
        reads = Reads()
        async with self._sessions.begin() as session:
            rows = list((await session.scalars(query)).all())
            visible: list[models.Case] = []
            for case in rows[:limit]:
                try:
                    access = await self._gate.resolve(session, principal, case.case_id, Need.READ)
                except (AccessRefused, ProcessingRestricted):
                    continue  # an opposed doctor, a restricted file, for instance
                reads.add(access, ObjectKind.CASE, case.case_id)
                visible.append(case)
        response = pb.ListCasesResponse(
            cases=[case_to_pb(c) for c in visible],
            next_page_token=str(offset + limit) if len(rows) > limit else "",
        )
        await self._gate.log_reads(reads)  # before any of it leaves
        return response

    async def SubmitCase(self, request: pb.SubmitCaseRequest, context: Any) -> pb.SubmitCaseResponse:
        """The filer confirms the request: both forms must have a submitted version. A case
        created submitted (the default) stays as it is; one past submission is returned."""
        principal = require_principal()

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            case = access.case
            if case.status in (CaseStatus.DRAFT, CaseStatus.SUBMITTED):
                for kind in forms.FormKind:
                    submitted = [
                        v
                        for v in await forms.list_versions(session, case.case_id, kind)
                        if v.status == forms.FormStatus.SUBMITTED
                    ]
                    if not submitted:
                        raise FailedPrecondition(
                            f"the {kind.value} form must be completed and submitted first"
                        )
            if case.status == CaseStatus.DRAFT:
                await change_status(session, case.case_id, CaseStatus.SUBMITTED)
                case.submitted_at = utcnow()
            await record(session, access, Action.UPDATE, ObjectKind.CASE, case.case_id)
            return case.case_id

        await self._gate.write(principal, request, "SubmitCase", request.case_id, Need.FILL_IN, run)
        async with self._sessions() as session:
            return pb.SubmitCaseResponse(
                case=case_to_pb(await self._read_case(session, principal, request.case_id))
            )

    async def UpdateCaseStatus(
        self, request: pb.UpdateCaseStatusRequest, context: Any
    ) -> pb.UpdateCaseStatusResponse:
        # Only the case workflow reports status: it is the source of truth for progress.
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("this operation is not allowed for the caller's role")
        status = _required(from_pb_enum(pb.CaseStatus, CaseStatus, request.status), "status")
        async with self._gate.case(principal, request.case_id, Need.PLATFORM) as (session, access):
            case = await change_status(session, request.case_id, status)
            await record(session, access, Action.UPDATE, ObjectKind.CASE, case.case_id)
            response = pb.UpdateCaseStatusResponse(case=case_to_pb(case))
        return response

    async def SetCaseDeadline(
        self, request: pb.SetCaseDeadlineRequest, context: Any
    ) -> pb.SetCaseDeadlineResponse:
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("only the case workflow sets the review deadline")
        _required(from_pb_enum(pb.DeadlineChangeReason, DeadlineChangeReason, request.reason), "reason")
        if not request.HasField("deadline_at"):
            raise InvalidArgument("deadline_at is required")
        deadline = request.deadline_at.ToDatetime(tzinfo=UTC)

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            access.case.deadline_at = deadline
            access.case.updated_at = utcnow()
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return access.case.case_id

        await self._gate.write(principal, request, "SetCaseDeadline", request.case_id, Need.PLATFORM, run)
        async with self._sessions() as session:
            return pb.SetCaseDeadlineResponse(
                case=case_to_pb(await self._read_case(session, principal, request.case_id))
            )

    # --- treating physician (CASE-16, CNS-08) ---------------------------------------------------
    async def SetTreatingPhysician(
        self, request: pb.SetTreatingPhysicianRequest, context: Any
    ) -> pb.SetTreatingPhysicianResponse:
        principal = require_principal()
        if principal.role not in (Role.PATIENT, Role.COORDINATOR):
            raise PermissionDenied("the patient (or their representative) gives the treating physician")
        sharing.check_contact(request.display_name, request.rpps_number, request.secure_messaging_address)

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            sharing.set_contact(
                self._keyring,
                access,
                request.display_name,
                request.rpps_number,
                request.secure_messaging_address,
            )
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return access.case.case_id

        await self._gate.write(principal, request, "SetTreatingPhysician", request.case_id, Need.FILL_IN, run)
        async with self._sessions() as session:
            contact = sharing.contact_of(
                self._keyring, await self._read_case(session, principal, request.case_id)
            )
        assert contact is not None
        return pb.SetTreatingPhysicianResponse(treating_physician=physician_to_pb(contact))

    async def GetTreatingPhysician(
        self, request: pb.GetTreatingPhysicianRequest, context: Any
    ) -> pb.GetTreatingPhysicianResponse:
        principal = require_principal()
        if principal.role not in (Role.PATIENT, Role.COORDINATOR):
            raise PermissionDenied("the treating physician's contact is the patient's")
        async with self._gate.read(principal, request.case_id) as (_session, access, reads):
            if not access.filer_side:
                raise NotFound("case not found")
            contact = sharing.contact_of(self._keyring, access.case)
            if contact is None:
                raise NotFound("no treating physician's contact was given")
            reads.add(access, ObjectKind.CASE, access.case.case_id)
        return pb.GetTreatingPhysicianResponse(treating_physician=physician_to_pb(contact))

    async def SetReportSharingObjection(
        self, request: pb.SetReportSharingObjectionRequest, context: Any
    ) -> pb.SetReportSharingObjectionResponse:
        principal = require_principal()
        if self._gate.policy.platform(principal):
            need = Need.PLATFORM  # mirroring an objection recorded with the identity service
        elif principal.role in (Role.PATIENT, Role.COORDINATOR):
            need = Need.FILL_IN
        else:
            raise PermissionDenied("the patient (or their representative) objects")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            sharing.set_objection(access, request.opposed)
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return access.case.case_id

        await self._gate.write(principal, request, "SetReportSharingObjection", request.case_id, need, run)
        async with self._sessions() as session:
            return pb.SetReportSharingObjectionResponse(
                case=case_to_pb(await self._read_case(session, principal, request.case_id))
            )

    async def ShareReportWithTreatingPhysician(
        self, request: pb.ShareReportWithTreatingPhysicianRequest, context: Any
    ) -> pb.ShareReportWithTreatingPhysicianResponse:
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("the case workflow sends the report, once consent is checked")
        existing = await self._report_case(request.report_id)

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await session.get(models.Report, request.report_id)
            assert row is not None
            share, sent = await sharing.share_report(session, self._keyring, self._messaging, access, row)
            action = Action.SHARE if sent else Action.READ  # a retry sends nothing again
            await record(session, access, action, ObjectKind.REPORT, row.report_id)
            return share.report_id

        await self._gate.write(
            principal, request, "ShareReportWithTreatingPhysician", existing.case_id, Need.PLATFORM, run
        )
        async with self._sessions() as session:
            share = await session.get(models.ReportShare, request.report_id)
            assert share is not None
            return pb.ShareReportWithTreatingPhysicianResponse(shared_at=to_timestamp(share.shared_at))

    # --- assignments and opposition -----------------------------------------------------------
    async def RecordAssignment(
        self, request: pb.RecordAssignmentRequest, context: Any
    ) -> pb.RecordAssignmentResponse:
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("only the case workflow records assignments")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            assignment = await record_assignment(
                session, access.case, request.assignment_id, request.doctor_id, request.doctor_account_id
            )
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return assignment.assignment_id

        assignment_id, _ = await self._gate.write(
            principal, request, "RecordAssignment", request.case_id, Need.PLATFORM, run
        )
        async with self._sessions() as session:
            row = await session.get(models.Assignment, assignment_id)
            assert row is not None
            return pb.RecordAssignmentResponse(assignment=assignment_to_pb(row))

    async def EndAssignment(self, request: pb.EndAssignmentRequest, context: Any) -> pb.EndAssignmentResponse:
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("only the case workflow ends assignments")
        reason = _required(
            from_pb_enum(pb.AssignmentEndReason, AssignmentEndReason, request.reason), "reason"
        )
        async with self._sessions() as session:
            existing = (
                await session.get(models.Assignment, request.assignment_id) if request.assignment_id else None
            )
        if existing is None:
            raise NotFound("assignment not found")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            assignment = await session.get(models.Assignment, request.assignment_id, with_for_update=True)
            assert assignment is not None
            await end_assignment(session, assignment, access.case, reason)
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return assignment.assignment_id

        await self._gate.write(principal, request, "EndAssignment", existing.case_id, Need.PLATFORM, run)
        async with self._sessions() as session:
            row = await session.get(models.Assignment, request.assignment_id)
            assert row is not None
            return pb.EndAssignmentResponse(assignment=assignment_to_pb(row))

    async def ListCaseAssignments(
        self, request: pb.ListCaseAssignmentsRequest, context: Any
    ) -> pb.ListCaseAssignmentsResponse:
        principal = require_principal()
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            rows = await list_assignments(session, request.case_id)
            reads.add(access, ObjectKind.CASE, request.case_id)
            response = pb.ListCaseAssignmentsResponse(assignments=[assignment_to_pb(r) for r in rows])
        return response

    async def OpposeDoctorAccess(
        self, request: pb.OpposeDoctorAccessRequest, context: Any
    ) -> pb.OpposeDoctorAccessResponse:
        principal = require_principal()
        if principal.role is not Role.PATIENT:
            raise PermissionDenied("only the patient (or their representative) opposes a doctor's access")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            opposition, _ = await oppose_doctor(session, access.case, request.doctor_id, principal.subject)
            await record(session, access, Action.UPDATE, ObjectKind.CASE, access.case.case_id)
            return opposition.opposition_id

        opposition_id, _ = await self._gate.write(
            principal, request, "OpposeDoctorAccess", request.case_id, Need.FILL_IN, run
        )
        async with self._sessions() as session:
            opposition = await session.get(models.DoctorOpposition, opposition_id)
            assert opposition is not None
            ended = await session.scalar(
                select(models.Assignment)
                .where(
                    models.Assignment.case_id == opposition.case_id,
                    models.Assignment.doctor_id == opposition.doctor_id,
                    models.Assignment.end_reason == AssignmentEndReason.OPPOSED_BY_PATIENT.value,
                )
                .order_by(models.Assignment.ended_at.desc())
                .limit(1)
            )
            return pb.OpposeDoctorAccessResponse(
                opposed_at=to_timestamp(opposition.opposed_at),
                ended_assignment=assignment_to_pb(ended) if ended else None,
            )

    # --- forms ----------------------------------------------------------------------------
    async def GetFormDefinition(
        self, request: pb.GetFormDefinitionRequest, context: Any
    ) -> pb.GetFormDefinitionResponse:
        require_principal()  # definitions hold no personal data
        kind = _required(from_pb_enum(pb.FormKind, forms.FormKind, request.kind), "kind")
        if request.version < 0:
            raise InvalidArgument("version must be 0 (current) or a positive number")
        definition = forms.definition(request.therapeutic_area, kind, request.version)
        return pb.GetFormDefinitionResponse(definition=definition_to_pb(definition))

    async def _save_form(self, request: Any, submit: bool) -> models.FormAnswers:
        principal = require_principal()
        kind = _required(from_pb_enum(pb.FormKind, forms.FormKind, request.kind), "kind")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await forms.save(
                session, self._keyring, access, kind, request.answers_json,
                submit=submit, max_bytes=self._settings.max_form_answers_bytes,
            )  # fmt: skip
            await record(session, access, Action.UPDATE, ObjectKind.FORM_ANSWERS, row.form_answers_id)
            return row.form_answers_id

        operation = "SubmitFormAnswers" if submit else "SaveFormDraft"
        row_id, _ = await self._gate.write(principal, request, operation, request.case_id, Need.FILL_IN, run)
        async with self._sessions() as session:
            row = await session.get(models.FormAnswers, row_id)
            assert row is not None
            return row

    async def SaveFormDraft(self, request: pb.SaveFormDraftRequest, context: Any) -> pb.SaveFormDraftResponse:
        row = await self._save_form(request, submit=False)
        return pb.SaveFormDraftResponse(answers=answers_to_pb(row, forms.open_answers(self._keyring, row)))

    async def SubmitFormAnswers(
        self, request: pb.SubmitFormAnswersRequest, context: Any
    ) -> pb.SubmitFormAnswersResponse:
        row = await self._save_form(request, submit=True)
        return pb.SubmitFormAnswersResponse(
            answers=answers_to_pb(row, forms.open_answers(self._keyring, row))
        )

    async def GetFormAnswers(
        self, request: pb.GetFormAnswersRequest, context: Any
    ) -> pb.GetFormAnswersResponse:
        principal = require_principal()
        kind = _required(from_pb_enum(pb.FormKind, forms.FormKind, request.kind), "kind")
        if request.version < 0:
            raise InvalidArgument("version must be 0 (latest) or a positive number")
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            row = await overview.readable_answers(session, access, kind, request.version)
            reads.add(access, ObjectKind.FORM_ANSWERS, row.form_answers_id)
            response = pb.GetFormAnswersResponse(
                answers=answers_to_pb(row, forms.open_answers(self._keyring, row))
            )
        return response

    async def ListFormVersions(
        self, request: pb.ListFormVersionsRequest, context: Any
    ) -> pb.ListFormVersionsResponse:
        principal = require_principal()
        kind = _required(from_pb_enum(pb.FormKind, forms.FormKind, request.kind), "kind")
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            rows = await overview.visible_versions(session, access, kind)
            reads.add(access, ObjectKind.FORM_ANSWERS, request.case_id)
            response = pb.ListFormVersionsResponse(versions=[answers_to_pb(r) for r in rows])
        return response

    # --- documents ------------------------------------------------------------------------
    async def _upload(self, request_iterator: AsyncIterator[Any], postal: bool) -> models.Document:
        principal = require_principal()
        try:
            first = await anext(request_iterator)
        except StopAsyncIteration:
            raise InvalidArgument("the upload is empty: send the metadata, then the bytes") from None
        if first.WhichOneof("part") != "metadata":
            raise InvalidArgument("the first message must carry the metadata")
        meta = first.metadata
        if postal:
            if principal.role is not Role.COORDINATOR:
                raise PermissionDenied("only a coordinator adds documents received by post")
            if not meta.HasField("received_at"):
                raise InvalidArgument("received_at is required for a postal document")
            received = meta.received_at.ToDatetime().replace(tzinfo=utcnow().tzinfo)
            if received > utcnow():
                raise InvalidArgument("received_at is in the future")
            upload = UploadRequest(
                case_id=meta.case_id,
                purpose=DocumentPurpose.MEDICAL_RECORD,
                file_name=sanitise_file_name(meta.file_name),
                declared_size=meta.declared_size_bytes,
                received_by_post_at=received,
            )
        else:
            upload = UploadRequest(
                case_id=meta.case_id,
                purpose=_required(from_pb_enum(pb.DocumentPurpose, DocumentPurpose, meta.purpose), "purpose"),
                file_name=sanitise_file_name(meta.file_name),
                declared_size=meta.declared_size_bytes,
                beneficiary_id=meta.beneficiary_id,
                replaces_document_id=meta.replaces_document_id,
                subject_account_id=meta.subject_account_id,
            )

        async def chunks() -> AsyncIterator[bytes]:
            async for message in request_iterator:
                if message.WhichOneof("part") != "chunk":
                    raise InvalidArgument(
                        "only the first message carries metadata; the next ones carry bytes"
                    )
                yield message.chunk

        document_id = await self._vault.upload(principal, first, upload, chunks(), postal=postal)
        async with self._sessions() as session:
            row = await session.get(models.Document, document_id)
            assert row is not None
            return row

    async def UploadDocument(self, request_iterator: Any, context: Any) -> pb.UploadDocumentResponse:
        _cancel_when_client_leaves(context)
        return pb.UploadDocumentResponse(document=document_to_pb(await self._upload(request_iterator, False)))

    async def AddPostalDocument(self, request_iterator: Any, context: Any) -> pb.AddPostalDocumentResponse:
        _cancel_when_client_leaves(context)
        return pb.AddPostalDocumentResponse(
            document=document_to_pb(await self._upload(request_iterator, True))
        )

    async def DownloadDocument(
        self, request: pb.DownloadDocumentRequest, context: Any
    ) -> AsyncIterator[pb.DownloadDocumentResponse]:
        principal = require_principal()
        document, plaintext = await self._vault.open_download(principal, request.document_id)
        yield pb.DownloadDocumentResponse(metadata=document_to_pb(document))
        async for chunk in plaintext:
            yield pb.DownloadDocumentResponse(chunk=chunk)

    async def GetDocument(self, request: pb.GetDocumentRequest, context: Any) -> pb.GetDocumentResponse:
        principal = require_principal()
        return pb.GetDocumentResponse(
            document=document_to_pb(await self._vault.get(principal, request.document_id))
        )

    async def ListDocuments(self, request: pb.ListDocumentsRequest, context: Any) -> pb.ListDocumentsResponse:
        principal = require_principal()
        limit = _page(request.page_size)
        rows = await self._vault.list_for_case(principal, request.case_id, request.page_token, limit + 1)
        documents, next_page_token = _documents_page(rows, limit)
        return pb.ListDocumentsResponse(documents=documents, next_page_token=next_page_token)

    async def FlagDocument(self, request: pb.FlagDocumentRequest, context: Any) -> pb.FlagDocumentResponse:
        principal = require_principal()
        reason = _required(from_pb_enum(pb.DocumentFlagReason, FlagReason, request.reason), "reason")
        if principal.role is not Role.REFERENT_DOCTOR:
            raise PermissionDenied("only an assigned referent doctor flags a document")
        document_id = await self._vault.flag(principal, request, request.document_id, reason)
        async with self._sessions() as session:
            row = await session.get(models.Document, document_id)
            assert row is not None
            return pb.FlagDocumentResponse(document=document_to_pb(row))

    # --- notes ------------------------------------------------------------------------------
    def _notes_to_pb(self, case_id: str, row: models.CaseNotes | None) -> pb.CaseNotes:
        if row is None:
            return pb.CaseNotes(case_id=case_id)
        return pb.CaseNotes(
            case_id=row.case_id,
            text=exchanges.notes_text(self._keyring, row),
            version=row.version,
            updated_by_account_id=row.updated_by_account_id,
            updated_at=to_timestamp(row.updated_at),
            entered_under_mandate=row.entered_under_mandate,
        )

    async def SaveCaseNotes(self, request: pb.SaveCaseNotesRequest, context: Any) -> pb.SaveCaseNotesResponse:
        principal = require_principal()

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await exchanges.save_notes(
                session, self._keyring, access, request.text, self._settings.max_text_chars
            )
            await record(session, access, Action.UPDATE, ObjectKind.CASE_NOTES, row.notes_id)
            return row.notes_id

        notes_id, _ = await self._gate.write(
            principal, request, "SaveCaseNotes", request.case_id, Need.FILL_IN, run
        )
        async with self._sessions() as session:
            row = await session.get(models.CaseNotes, notes_id)
            return pb.SaveCaseNotesResponse(notes=self._notes_to_pb(request.case_id, row))

    async def GetCaseNotes(self, request: pb.GetCaseNotesRequest, context: Any) -> pb.GetCaseNotesResponse:
        principal = require_principal()
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            row = await exchanges.latest_notes(session, request.case_id)
            reads.add(access, ObjectKind.CASE_NOTES, row.notes_id if row else request.case_id)
            response = pb.GetCaseNotesResponse(notes=self._notes_to_pb(request.case_id, row))
        return response

    # --- messages ---------------------------------------------------------------------------
    def _messages_to_pb(
        self, rows: list[models.Message], found: dict[str, list[models.ReadReceipt]]
    ) -> list[pb.ThreadMessage]:
        return [
            pb.ThreadMessage(
                message_id=row.message_id,
                case_id=row.case_id,
                sender_account_id=row.sender_account_id,
                kind=to_pb_enum(pb.MessageKind, exchanges.MessageKind(row.kind)),
                body=exchanges.message_body(self._keyring, row),
                attachment_document_ids=row.attachment_document_ids,
                sent_at=to_timestamp(row.sent_at),
                read_receipts=[
                    pb.ReadReceipt(account_id=r.account_id, read_at=to_timestamp(r.read_at))
                    for r in found[row.message_id]
                ],
                hidden=row.hidden,
                in_reply_to_message_id=row.in_reply_to_message_id,
            )
            for row in rows
        ]

    async def SendMessage(self, request: pb.SendMessageRequest, context: Any) -> pb.SendMessageResponse:
        principal = require_principal()
        kind = _required(from_pb_enum(pb.MessageKind, exchanges.MessageKind, request.kind), "kind")
        need = Need.REVIEW if principal.role is Role.REFERENT_DOCTOR else Need.FILL_IN

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await exchanges.send_message(
                session, self._keyring, access, kind, request.body, list(request.attachment_document_ids),
                request.in_reply_to_message_id, self._settings.max_text_chars,
            )  # fmt: skip
            await record(session, access, Action.CREATE, ObjectKind.MESSAGE, row.message_id)
            return row.message_id

        message_id, _ = await self._gate.write(principal, request, "SendMessage", request.case_id, need, run)
        async with self._sessions() as session:
            row = await session.get(models.Message, message_id)
            assert row is not None
            found = await exchanges.receipts(session, [message_id])
            return pb.SendMessageResponse(message=self._messages_to_pb([row], found)[0])

    async def ListMessages(self, request: pb.ListMessagesRequest, context: Any) -> pb.ListMessagesResponse:
        principal = require_principal()
        limit, offset = _page(request.page_size), _offset(request.page_token)
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            rows = await exchanges.thread(session, request.case_id, offset, limit + 1)
            for row in rows[:limit]:
                reads.add(access, ObjectKind.MESSAGE, row.message_id)
            found = await exchanges.receipts(session, [r.message_id for r in rows[:limit]])
            response = pb.ListMessagesResponse(
                messages=self._messages_to_pb(rows[:limit], found),
                next_page_token=str(offset + limit) if len(rows) > limit else "",
            )
        return response

    async def MarkMessagesRead(
        self, request: pb.MarkMessagesReadRequest, context: Any
    ) -> pb.MarkMessagesReadResponse:
        principal = require_principal()
        need = Need.REVIEW if principal.role is Role.REFERENT_DOCTOR else Need.FILL_IN
        marked: dict[str, int] = {}

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            marked["count"] = await exchanges.mark_read(session, access, request.up_to_message_id)
            await record(session, access, Action.READ, ObjectKind.MESSAGE, request.up_to_message_id)
            return str(marked["count"])

        result, _ = await self._gate.write(principal, request, "MarkMessagesRead", request.case_id, need, run)
        return pb.MarkMessagesReadResponse(marked_count=int(result))

    async def ReportAbuse(self, request: pb.ReportAbuseRequest, context: Any) -> pb.ReportAbuseResponse:
        principal = require_principal()
        target = _required(
            from_pb_enum(pb.AbuseTargetKind, exchanges.AbuseTarget, request.target_kind), "target_kind"
        )
        category = _required(
            from_pb_enum(pb.AbuseCategory, exchanges.AbuseCategory, request.category), "category"
        )
        need = Need.REVIEW if principal.role is Role.REFERENT_DOCTOR else Need.FILL_IN

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            report = await exchanges.report_abuse(session, access, target, request.target_id, category)
            kind = {
                exchanges.AbuseTarget.MESSAGE: ObjectKind.MESSAGE,
                exchanges.AbuseTarget.CASE_NOTES: ObjectKind.CASE_NOTES,
                exchanges.AbuseTarget.FORM_ANSWERS: ObjectKind.FORM_ANSWERS,
            }[target]
            await record(session, access, Action.READ, kind, request.target_id or request.case_id)
            return report.abuse_report_id

        report_id, _ = await self._gate.write(principal, request, "ReportAbuse", request.case_id, need, run)
        async with self._sessions() as session:
            row = await session.get(models.AbuseReport, report_id)
            assert row is not None
            return pb.ReportAbuseResponse(abuse_report=abuse_to_pb(row))

    def _require_abuse_staff(self) -> Principal:
        principal = require_principal()
        if principal.role not in ABUSE_STAFF:
            raise PermissionDenied("the abuse queue is for staff")
        return principal

    async def ListAbuseReports(
        self, request: pb.ListAbuseReportsRequest, context: Any
    ) -> pb.ListAbuseReportsResponse:
        self._require_abuse_staff()
        status = from_pb_enum(pb.AbuseReportStatus, exchanges.AbuseStatus, request.status)
        limit = _page(request.page_size)
        async with self._sessions() as session:
            rows = await exchanges.abuse_queue(session, status, request.page_token, limit + 1)
        return pb.ListAbuseReportsResponse(
            abuse_reports=[abuse_to_pb(r) for r in rows[:limit]],
            next_page_token=rows[limit - 1].abuse_report_id if len(rows) > limit else "",
        )

    async def ResolveAbuseReport(
        self, request: pb.ResolveAbuseReportRequest, context: Any
    ) -> pb.ResolveAbuseReportResponse:
        principal = self._require_abuse_staff()
        resolution = _required(
            from_pb_enum(pb.AbuseResolution, exchanges.AbuseResolution, request.resolution), "resolution"
        )

        async def run(session: AsyncSession) -> str:
            report = await exchanges.resolve_abuse(session, principal, request.abuse_report_id, resolution)
            return report.abuse_report_id

        report_id, _ = await run_once(
            self._sessions, models.IdempotencyRecord, request, f"ResolveAbuseReport:{principal.subject}", run
        )
        async with self._sessions() as session:
            row = await session.get(models.AbuseReport, report_id)
            assert row is not None
            return pb.ResolveAbuseReportResponse(abuse_report=abuse_to_pb(row))

    # --- report -----------------------------------------------------------------------------
    async def SaveReportDraft(
        self, request: pb.SaveReportDraftRequest, context: Any
    ) -> pb.SaveReportDraftResponse:
        principal = require_principal()
        if principal.role is not Role.REFERENT_DOCTOR:
            raise PermissionDenied("only an assigned referent doctor writes the report")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await reports.save_draft(
                session, self._keyring, access, request.body, request.attachment_document_id,
                self._settings.max_text_chars,
            )  # fmt: skip
            await record(session, access, Action.UPDATE, ObjectKind.REPORT, row.report_id)
            return row.report_id

        report_id, _ = await self._gate.write(
            principal, request, "SaveReportDraft", request.case_id, Need.REVIEW, run
        )
        async with self._sessions() as session:
            row = await session.get(models.Report, report_id)
            assert row is not None
            return pb.SaveReportDraftResponse(report=report_to_pb(row, reports.body_of(self._keyring, row)))

    async def _report_case(self, report_id: str) -> models.Report:
        async with self._sessions() as session:
            row = await session.get(models.Report, report_id) if report_id else None
        if row is None:
            raise NotFound("report not found")
        return row

    async def DeliverReport(self, request: pb.DeliverReportRequest, context: Any) -> pb.DeliverReportResponse:
        principal = require_principal()
        if not self._gate.policy.platform(principal):
            raise PermissionDenied("the case workflow delivers reports")
        existing = await self._report_case(request.report_id)

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await session.get(models.Report, request.report_id, with_for_update=True)
            assert row is not None
            await reports.deliver(session, self._keyring, row)
            await record(session, access, Action.UPDATE, ObjectKind.REPORT, row.report_id)
            return row.report_id

        await self._gate.write(principal, request, "DeliverReport", existing.case_id, Need.PLATFORM, run)
        async with self._sessions() as session:
            row = await session.get(models.Report, request.report_id)
            assert row is not None
            return pb.DeliverReportResponse(report=report_to_pb(row))

    async def AddReportAddendum(
        self, request: pb.AddReportAddendumRequest, context: Any
    ) -> pb.AddReportAddendumResponse:
        principal = require_principal()
        if principal.role is not Role.REFERENT_DOCTOR:
            raise PermissionDenied("only an assigned referent doctor adds an addendum")
        parent = await self._report_case(request.parent_report_id)

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            row = await reports.add_addendum(
                session, self._keyring, access, parent, request.body, request.attachment_document_id,
                self._settings.max_text_chars,
            )  # fmt: skip
            await record(session, access, Action.CREATE, ObjectKind.REPORT, row.report_id)
            return row.report_id

        report_id, _ = await self._gate.write(
            principal, request, "AddReportAddendum", parent.case_id, Need.REVIEW, run
        )
        async with self._sessions() as session:
            row = await session.get(models.Report, report_id)
            assert row is not None
            return pb.AddReportAddendumResponse(report=report_to_pb(row, reports.body_of(self._keyring, row)))

    async def GetReport(self, request: pb.GetReportRequest, context: Any) -> pb.GetReportResponse:
        principal = require_principal()
        row = await self._report_case(request.report_id)
        try:
            async with self._gate.read(principal, row.case_id) as (_session, access, reads):
                if row.status != reports.ReportStatus.SEALED and row.author_account_id != principal.subject:
                    raise NotFound("report not found")  # drafts are the author's own
                reads.add(access, ObjectKind.REPORT, row.report_id)
                response = pb.GetReportResponse(report=report_to_pb(row, reports.body_of(self._keyring, row)))
        except AccessRefused:
            raise NotFound("report not found") from None
        return response

    async def ListCaseReports(
        self, request: pb.ListCaseReportsRequest, context: Any
    ) -> pb.ListCaseReportsResponse:
        principal = require_principal()
        async with self._gate.read(principal, request.case_id) as (session, access, reads):
            rows = await overview.visible_reports(session, access)
            reads.add(access, ObjectKind.REPORT, request.case_id)
            response = pb.ListCaseReportsResponse(reports=[report_to_pb(r) for r in rows])
        return response

    # --- access log -------------------------------------------------------------------------
    async def ListAccessLog(self, request: pb.ListAccessLogRequest, context: Any) -> pb.ListAccessLogResponse:
        principal = require_principal()
        limit = _page(request.page_size)
        before = int(request.page_token) if request.page_token.isdigit() else None
        if request.page_token and before is None:
            raise InvalidArgument("page_token is not valid")
        subject: str | None
        beneficiary: str | None
        if principal.role is Role.PATIENT:
            subject = principal.subject
            # Someone the caller represents: only the cases the caller filed for them.
            beneficiary = request.subject_id if request.subject_id not in ("", principal.subject) else None
        elif principal.role in LOG_AUDITORS:
            if not request.subject_id:
                raise InvalidArgument("subject_id is required")
            subject = beneficiary = request.subject_id
        else:
            raise PermissionDenied("the access history is for the person concerned and the DPO")
        async with self._sessions() as session:
            rows = await accesslog.entries_about(
                session, subject_account_id=subject, beneficiary_id=beneficiary,
                case_id=request.case_id, before_sequence=before, limit=limit + 1,
            )  # fmt: skip
        return pb.ListAccessLogResponse(
            entries=[log_entry_to_pb(r) for r in rows[:limit]],
            next_page_token=str(rows[limit - 1].sequence) if len(rows) > limit else "",
        )

    async def VerifyAccessLogChain(
        self, request: pb.VerifyAccessLogChainRequest, context: Any
    ) -> pb.VerifyAccessLogChainResponse:
        principal = require_principal()
        if principal.role not in LOG_AUDITORS and not (principal.is_service and principal.subject == "ops"):
            raise PermissionDenied("chain verification is for the DPO and administrators")
        async with self._sessions() as session:
            result = await accesslog.verify_chain(session)
        problem = {
            "": pb.CHAIN_PROBLEM_UNSPECIFIED,
            "altered": pb.CHAIN_PROBLEM_ALTERED,
            "missing": pb.CHAIN_PROBLEM_MISSING,
            "broken_link": pb.CHAIN_PROBLEM_BROKEN_LINK,
        }[result.problem]
        return pb.VerifyAccessLogChainResponse(
            intact=result.intact,
            checked_count=result.checked,
            first_bad_sequence=result.first_bad_sequence,
            problem=problem,
        )

    # --- data lifecycle (issue 10) ----------------------------------------------------------
    def _lifecycle_caller(self, *, dpo: bool = True) -> Principal:
        """The lifecycle worker (service `worker`), or the DPO answering a rights request."""
        principal = require_principal()
        if self._gate.policy.platform(principal) or (dpo and principal.role is Role.DPO):
            return principal
        raise PermissionDenied("lifecycle operations are for the lifecycle worker and the DPO")

    async def ExportSubjectData(
        self, request: pb.ExportSubjectDataRequest, context: Any
    ) -> pb.ExportSubjectDataResponse:
        # The export holds health data: it goes from the worker into the person's archive,
        # no staff member reads it on the way.
        principal = self._lifecycle_caller(dpo=False)
        check_key(request.idempotency_key)
        subject_id = lifecycle.check_subject(request.subject_id)
        if not request.rights_request_id:
            raise InvalidArgument(
                "rights_request_id is required (an export answers an access or portability request)"
            )
        async with self._sessions.begin() as session:
            bundle, document_ids, _ = await lifecycle.export_subject(
                session, self._keyring, self._gate.keys, principal, subject_id
            )
        log.info(
            "subject exported",
            extra={"fields": {"subject_id": subject_id, "rights_request_id": request.rights_request_id}},
        )
        return pb.ExportSubjectDataResponse(
            fhir_bundle_json=json.dumps(bundle, ensure_ascii=False).encode(),
            resource_count=len(bundle.get("entry", [])),
            document_ids=document_ids,
            generated_at=to_timestamp(datetime.fromisoformat(bundle["timestamp"])),
        )

    async def ArchiveSubject(
        self, request: pb.ArchiveSubjectRequest, context: Any
    ) -> pb.ArchiveSubjectResponse:
        principal = self._lifecycle_caller()
        subject_id = lifecycle.check_subject(request.subject_id)

        async def run(session: AsyncSession) -> str:
            archived_at, _ = await lifecycle.archive_subject(session, principal, subject_id)
            return archived_at.isoformat()

        result, _ = await run_once(self._sessions, models.IdempotencyRecord, request, "ArchiveSubject", run)
        async with self._sessions() as session:
            archived = await lifecycle.subject_cases(session, subject_id, archived=True)
            counts = await lifecycle.inventory(session, subject_id, [c.case_id for c in archived])
        log.info("subject archived", extra={"fields": {"subject_id": subject_id, "cases": len(archived)}})
        return pb.ArchiveSubjectResponse(
            archived_at=to_timestamp(datetime.fromisoformat(result)), archived=_counts(counts)
        )

    async def RestrictSubject(
        self, request: pb.RestrictSubjectRequest, context: Any
    ) -> pb.RestrictSubjectResponse:
        principal = self._lifecycle_caller()
        subject_id = lifecycle.check_subject(request.subject_id)

        async def run(session: AsyncSession) -> str:
            changed_at, _ = await lifecycle.restrict_subject(
                session, principal, subject_id, request.restricted
            )
            return changed_at.isoformat()

        result, _ = await run_once(self._sessions, models.IdempotencyRecord, request, "RestrictSubject", run)
        async with self._sessions() as session:
            cases = await lifecycle.subject_cases(session, subject_id)
            counts = await lifecycle.inventory(session, subject_id, [c.case_id for c in cases])
        log.info(
            "subject restriction changed",
            extra={"fields": {"subject_id": subject_id, "restricted": request.restricted}},
        )
        return pb.RestrictSubjectResponse(
            affected=_counts(counts), changed_at=to_timestamp(datetime.fromisoformat(result))
        )

    async def PurgeSubject(self, request: pb.PurgeSubjectRequest, context: Any) -> pb.PurgeSubjectResponse:
        principal = self._lifecycle_caller()
        subject_id = lifecycle.check_subject(request.subject_id)
        retention = timedelta(days=self._settings.access_log_evidence_retention_days)

        async def run(session: AsyncSession) -> str:
            await lifecycle.purge_subject(
                session, principal, subject_id, request.rights_request_id, retention
            )
            return subject_id

        await run_once(self._sessions, models.IdempotencyRecord, request, "PurgeSubject", run)
        async with self._sessions() as session:
            purge = await session.get(models.SubjectPurge, subject_id)
            assert purge is not None
            purged_at, report, pending = purge.purged_at, dict(purge.report), list(purge.pending_object_keys)
        # The rows are gone and the key destroyed; now the objects (again on a retry, until
        # the store confirms: an object left behind cannot be decrypted anyway).
        if pending:
            left = await self._vault.delete_objects(pending)
            async with self._sessions.begin() as session:
                purge = await session.get(models.SubjectPurge, subject_id, with_for_update=True)
                assert purge is not None
                purge.pending_object_keys = left
        log.info("subject purged", extra={"fields": {"subject_id": subject_id, "objects_left": len(pending)}})
        purged = report["purged"]
        assert isinstance(purged, dict)
        retained = report["retained"]
        assert isinstance(retained, list)
        return pb.PurgeSubjectResponse(
            purged_at=to_timestamp(purged_at),
            purged=_counts(purged),
            retained=[
                pb.RetainedDataItem(
                    category=item["category"],
                    count=item["count"],
                    legal_basis=to_pb_enum(pb.RetentionLegalBasis, lifecycle.LegalBasis(item["legal_basis"])),
                    retained_until=to_timestamp(datetime.fromisoformat(item["retained_until"]))
                    if item["retained_until"]
                    else None,
                )
                for item in retained
            ],
            subject_key_destroyed=bool(report["subject_key_destroyed"]),
        )

    async def ReadArchivedSubject(
        self, request: pb.ReadArchivedSubjectRequest, context: Any
    ) -> pb.ReadArchivedSubjectResponse:
        """RET-07: the only path to archived files; the DPO, or a coordinator holding the
        archive-access habilitation (SEC-05), with a legal reason."""
        principal = require_principal()
        if not self._gate.policy.archive_reader(principal):
            raise PermissionDenied(
                "archived files are read by the DPO or staff holding the archive-access habilitation"
            )
        subject_id = lifecycle.check_subject(request.subject_id)
        if request.purpose == pb.ARCHIVE_READ_PURPOSE_UNSPECIFIED:
            raise InvalidArgument("purpose (the legal reason) is required")
        reference = request.reference.strip()
        if not reference or len(reference) > 200 or not reference.isprintable():
            raise InvalidArgument("reference (1 to 200 printable characters) names the legal matter")
        async with self._sessions.begin() as session:
            archived = await lifecycle.subject_cases(session, subject_id, archived=True)
            if not archived:
                raise NotFound("nothing of this subject is archived")
            bundle, _, logged = await lifecycle.export_subject(
                session, self._keyring, self._gate.keys, principal, subject_id,
                archived_only=True, purpose=Purpose.LEGAL_ARCHIVE,
            )  # fmt: skip
            archived_at = min(c.archived_at for c in archived if c.archived_at is not None)
        log.info(
            "archive read",
            extra={
                "fields": {"subject_id": subject_id, "purpose": pb.ArchiveReadPurpose.Name(request.purpose)}
            },
        )
        return pb.ReadArchivedSubjectResponse(
            fhir_bundle_json=json.dumps(bundle, ensure_ascii=False).encode(),
            archived_at=to_timestamp(archived_at),
            logged_count=logged,
        )

    async def ListSubjectCases(
        self, request: pb.ListSubjectCasesRequest, context: Any
    ) -> pb.ListSubjectCasesResponse:
        """The lifecycle worker's view of a subject's cases (is an erasure possible now?),
        logged once per call; a restricted case's status is not read (GDPR-04)."""
        principal = self._lifecycle_caller(dpo=False)
        subject_id = lifecycle.check_subject(request.subject_id)
        cases = await lifecycle.list_subject_cases(self._sessions, self._gate.read_log, principal, subject_id)
        return pb.ListSubjectCasesResponse(
            cases=[
                pb.SubjectCase(
                    case_id=c.case_id,
                    status=to_pb_enum(pb.CaseStatus, c.status) if c.status else pb.CASE_STATUS_UNSPECIFIED,
                    processing_restricted=c.restricted,
                )
                for c in cases
            ]
        )


def _counts(counts: dict[str, Any]) -> list[pb.DataItemCount]:
    return [pb.DataItemCount(category=name, count=int(count)) for name, count in sorted(counts.items())]
