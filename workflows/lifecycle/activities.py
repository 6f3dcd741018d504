"""Activities of the lifecycle workflows: calls to the services over gRPC.

Every call carries the worker's service identity and an idempotency key derived from the
subject and the step. Contact details and exported data are read and used here, never
returned: only ids, codes, dates and counts enter Temporal's history.

The export answering an access or portability request is written to the export folder,
streamed to the dossier as an account-level document of the person (a rights-request
answer, uploaded as the platform for them), then deleted here: the answer names the
document, which the person downloads from "Mes données".

A service that answers UNIMPLEMENTED to a lifecycle RPC holds nothing for that step yet:
the step records it under `not_implemented` and logs it, so the report says exactly which
service was not covered.

Matching knows a patient's cases by id only: the worker asks billing for the subject's
case ids (`ListSubjectCaseIds`: the payer's orders, live or archived; billing keeps them,
restricted, for ten years, so they are still there when a purge runs after an erasure or
an archive) and passes them to matching. A case that never reached checkout never reached
matching either.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import zipfile
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2 as ipb
from secondopinion.identity.v1 import identity_pb2_grpc as ipb_grpc
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2 as npb
from secondopinion.notifications.v1 import notifications_pb2_grpc as npb_grpc
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from services.identity.domain.retention import Category, add_months
from services.shared.protoconv import to_timestamp
from workflows.grpc_errors import as_activity_error
from workflows.lifecycle.models import (
    CASE_IN_PROGRESS,
    OPEN_RIGHTS_REQUEST_STATUSES,
    AgePurgeInput,
    AnnouncePageInput,
    AnnouncePageResult,
    AnswerCallInput,
    CasesInProgress,
    DueSweepInput,
    DueSweepResult,
    ExportInput,
    ExportResult,
    ExtendCallInput,
    LegalTextFacts,
    NotifyInput,
    RecordActivityInput,
    RequestFacts,
    RetainedItem,
    RetentionInput,
    RightsRequestInput,
    RightsSweepInput,
    RightsSweepResult,
    StepInput,
    StepReport,
    SubjectIdInput,
    SubjectStatus,
    TextIdInput,
)

log = logging.getLogger("workflows.lifecycle")

SERVICE_MODULES: dict[str, tuple[Any, Any]] = {
    "dossier": (dossier_pb2, dossier_pb2_grpc.DossierServiceStub),
    "matching": (matching_pb2, matching_pb2_grpc.MatchingServiceStub),
    "billing": (billing_pb2, billing_pb2_grpc.BillingServiceStub),
}
# Services that know a patient's cases by id only: the worker passes the subject's case ids.
CASE_ID_SERVICES = frozenset({"matching"})
# What the person is told about their rights request, by notice kind (template names;
# see `notify_rights_request`). No health data: the email only links to the request.
PERSON_TEMPLATES = {
    "PERSON_EXTENDED": npb.NOTIFICATION_TEMPLATE_RIGHTS_REQUEST_EXTENDED,
    # "Refused for now: a case is in progress; carried out once it is closed."
    "PERSON_POSTPONED": npb.NOTIFICATION_TEMPLATE_RIGHTS_REQUEST_POSTPONED,
}
# Case statuses that do not stop an erasure (the dossier's own rule: a draft never started,
# a closed or cancelled case is over).
CASE_NOT_IN_PROGRESS = frozenset(
    {dossier_pb2.CASE_STATUS_DRAFT, dossier_pb2.CASE_STATUS_CLOSED, dossier_pb2.CASE_STATUS_CANCELLED}
)
# The dossier's purpose code for rights-request answers, as its DocumentReferences name it.
ANSWER_PURPOSE_CODE = "rights_request_answer"
# Streaming a file to or from a service: far longer than a plain call, within LONG_CALL.
TRANSFER_TIMEOUT_SECONDS = 540.0
UPLOAD_CHUNK = 1024 * 1024
# Which step each service implements (matching keeps no restrictable personal data).
SERVICE_STEPS = {
    "dossier": {"ARCHIVE", "RESTRICT", "LIFT_RESTRICTION", "PURGE"},
    "matching": {"ARCHIVE", "PURGE"},
    "billing": {"ARCHIVE", "RESTRICT", "LIFT_RESTRICTION", "PURGE"},
}


def _when(stamp: Any) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def _enum_name(pb_enum: Any, value: int) -> str:
    prefix = pb_enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    name: str = pb_enum.Name(value)
    return name.removeprefix(prefix)


def _enum_value(pb_enum: Any, name: str) -> Any:
    prefix = pb_enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return pb_enum.Value(prefix + name)


def _raise(error: grpc.aio.AioRpcError) -> NoReturn:
    """Refusals become non-retryable ApplicationErrors; outages re-raise as they are (retried)."""
    converted = as_activity_error(error)
    if converted is error:
        raise error
    raise converted from error


def _not_implemented(error: grpc.aio.AioRpcError) -> bool:
    return error.code() is grpc.StatusCode.UNIMPLEMENTED


class LifecycleActivities:
    def __init__(
        self,
        *,
        identity: grpc.aio.Channel,
        notifications: grpc.aio.Channel,
        services: dict[str, grpc.aio.Channel],
        billing: grpc.aio.Channel | None,
        client: Client | None,
        retention_task_queue: str,
        dpo_email: str,
        portal_base_url: str,
        export_dir: Path,
    ) -> None:
        self._identity = ipb_grpc.IdentityServiceStub(identity)
        self._notifications = npb_grpc.NotificationsServiceStub(notifications)
        self._services = {name: SERVICE_MODULES[name][1](channel) for name, channel in services.items()}
        self._billing = billing_pb2_grpc.BillingServiceStub(billing) if billing is not None else None
        self._client = client
        self._queue = retention_task_queue
        self._dpo_email = dpo_email
        self._portal = portal_base_url.rstrip("/")
        self._export_dir = export_dir

    def all(self) -> list[Any]:
        return [
            self.get_subject_status,
            self.record_subject_activity,
            self.run_step,
            self.count_cases_in_progress,
            self.get_rights_request,
            self.extend_rights_request,
            self.answer_rights_request,
            self.notify_rights_request,
            self.export_subject,
            self.export_to_dossier,
            self.purge_by_age,
            self.start_due_workflows,
            self.start_rights_request_workflows,
            self.get_legal_text,
            self.announce_page,
        ]

    # ------------------------------------------------------------ retention

    @activity.defn(name="lifecycle.get_subject_status")
    async def get_subject_status(self, data: SubjectIdInput) -> SubjectStatus:
        try:
            reply = await self._identity.GetSubjectRetention(
                lpb.GetSubjectRetentionRequest(subject_id=data.subject_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return SubjectStatus(exists=False)
            _raise(error)
        return SubjectStatus(
            exists=True,
            kind=_enum_name(lpb.SubjectKind, reply.subject_kind),
            stage=_enum_name(lpb.SubjectStage, reply.stage),
            clock_started_at=_when(reply.clock_started_at),
            archived_at=_when(reply.archived_at),
            legal_hold=reply.legal_hold,
            restricted=reply.restricted,
            converted=reply.converted,
        )

    @activity.defn(name="lifecycle.record_subject_activity")
    async def record_subject_activity(self, data: RecordActivityInput) -> datetime:
        try:
            reply = await self._identity.RecordSubjectActivity(
                ipb.RecordSubjectActivityRequest(
                    idempotency_key=data.idempotency_key,
                    subject_id=data.subject_id,
                    category=lpb.RETENTION_CATEGORY_ACCOUNT_ACTIVE,
                    occurred_at=to_timestamp(data.occurred_at),
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        due = _when(reply.due_at)
        assert due is not None
        return due

    async def _contact(self, subject_id: str) -> tuple[str, str, str, str]:
        """(email, phone, locale, first name) of a live account; blanks once archived."""
        try:
            reply = await self._identity.GetAccount(ipb.GetAccountRequest(account_id=subject_id))
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.NOT_FOUND:
                return "", "", "fr", ""
            _raise(error)
        account = reply.account
        first = account.display_name.split(" ")[0] if account.display_name else ""
        return account.email, account.phone_number, account.locale or "fr", first

    async def _purge_recipients(self, data: StepInput, report: StepReport) -> None:
        email, phone, _, _ = await self._contact(data.subject_id)
        purged = 0
        for n, (field, value) in enumerate((("email", email), ("phone_number", phone))):
            if not value:
                continue
            request = npb.PurgeRecipientDataRequest(idempotency_key=f"{data.idempotency_key}:recipients:{n}")
            setattr(request, field, value)
            try:
                purged += (await self._notifications.PurgeRecipientData(request)).purged_count
            except grpc.aio.AioRpcError as error:
                _raise(error)
        if purged:
            report.items["notifications"] = {"recipient_addresses": purged}

    async def _case_ids(self, subject_id: str) -> list[str]:
        """The subject's case ids, for services that know cases by id only (matching)."""
        if self._billing is None:
            return []
        try:
            reply = await self._billing.ListSubjectCaseIds(
                billing_pb2.ListSubjectCaseIdsRequest(subject_id=subject_id)
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        return list(reply.case_ids)

    async def _case_fields(self, name: str, subject_id: str) -> dict[str, Any]:
        return {"case_ids": await self._case_ids(subject_id)} if name in CASE_ID_SERVICES else {}

    async def _service_step(self, name: str, data: StepInput, report: StepReport) -> None:
        module, _ = SERVICE_MODULES[name]
        stub = self._services[name]
        key = f"{data.idempotency_key}:{name}"
        cases = await self._case_fields(name, data.subject_id)
        try:
            if data.step == "ARCHIVE":
                reply = await stub.ArchiveSubject(
                    module.ArchiveSubjectRequest(idempotency_key=key, subject_id=data.subject_id, **cases)
                )
                counts = {c.category: c.count for c in reply.archived}
            elif data.step in {"RESTRICT", "LIFT_RESTRICTION"}:
                reply = await stub.RestrictSubject(
                    module.RestrictSubjectRequest(
                        idempotency_key=key,
                        subject_id=data.subject_id,
                        rights_request_id=data.rights_request_id,
                        restricted=data.step == "RESTRICT",
                    )
                )
                counts = {c.category: c.count for c in reply.affected}
            else:
                reply = await stub.PurgeSubject(
                    module.PurgeSubjectRequest(
                        idempotency_key=key,
                        subject_id=data.subject_id,
                        rights_request_id=data.rights_request_id,
                        **cases,
                    )
                )
                counts = {c.category: c.count for c in reply.purged}
                for item in getattr(reply, "retained", []):
                    report.retained.append(
                        RetainedItem(
                            service=name,
                            category=item.category,
                            count=item.count,
                            legal_basis=_enum_name(module.RetentionLegalBasis, item.legal_basis),
                            retained_until=_when(item.retained_until),
                        )
                    )
                if getattr(reply, "subject_key_destroyed", False):
                    report.keys_destroyed.append(name)
        except grpc.aio.AioRpcError as error:
            if _not_implemented(error):
                log.warning(
                    "lifecycle step not implemented by service: it holds nothing for this step yet",
                    extra={"fields": {"service": name, "step": data.step, "subject_id": data.subject_id}},
                )
                report.not_implemented.append(name)
                return
            if (
                name == "dossier"
                and data.step == "PURGE"
                and data.rights_request_id
                and error.code() is grpc.StatusCode.FAILED_PRECONDITION
            ):
                # The dossier's one refusal of an erasure: a case is in progress.
                raise ApplicationError(
                    f"FAILED_PRECONDITION: {error.details()}", type=CASE_IN_PROGRESS, non_retryable=True
                ) from error
            _raise(error)
        if counts:
            report.items[name] = counts

    @activity.defn(name="lifecycle.run_step")
    async def run_step(self, data: StepInput) -> StepReport:
        """One archive, restriction or purge across every service holding subject data;
        identity goes last (the others may still need the account until then)."""
        report = StepReport(subject_id=data.subject_id, step=data.step)
        if data.kind == "ACCOUNT":
            # The dossier first: it refuses an erasure while a case is in progress before
            # anything anywhere is touched. Notifications then forgets the addresses, while
            # identity (last) still has them.
            for name in self._services:
                if data.step in SERVICE_STEPS[name]:
                    await self._service_step(name, data, report)
            if data.step in {"ARCHIVE", "PURGE"}:
                await self._purge_recipients(data, report)
        try:
            if data.step == "ARCHIVE":
                archived = await self._identity.ArchiveSubject(
                    ipb.ArchiveSubjectRequest(
                        idempotency_key=f"{data.idempotency_key}:identity",
                        subject_id=data.subject_id,
                        reason=_enum_value(ipb.ArchiveReason, data.reason),
                    )
                )
                report.items["identity"] = {c.category: c.count for c in archived.archived}
                report.done_at = _when(archived.archived_at)
            elif data.step in {"RESTRICT", "LIFT_RESTRICTION"}:
                restricted = await self._identity.RestrictSubject(
                    ipb.RestrictSubjectRequest(
                        idempotency_key=f"{data.idempotency_key}:identity",
                        subject_id=data.subject_id,
                        rights_request_id=data.rights_request_id,
                        restricted=data.step == "RESTRICT",
                    )
                )
                report.items["identity"] = {c.category: c.count for c in restricted.affected}
                report.done_at = _when(restricted.changed_at)
            else:
                purged = await self._identity.PurgeSubject(
                    ipb.PurgeSubjectRequest(
                        idempotency_key=f"{data.idempotency_key}:identity",
                        subject_id=data.subject_id,
                        reason=_enum_value(ipb.PurgeReason, data.reason),
                        rights_request_id=data.rights_request_id,
                    )
                )
                report.items["identity"] = {c.category: c.count for c in purged.purged}
                report.done_at = _when(purged.purged_at)
                if purged.subject_key_destroyed:
                    report.keys_destroyed.append("identity")
                for item in purged.retained:
                    report.retained.append(
                        RetainedItem(
                            service="identity",
                            category=item.category,
                            count=item.count,
                            legal_basis=_enum_name(lpb.RetentionLegalBasis, item.legal_basis),
                            retained_until=_when(item.retained_until),
                        )
                    )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        log.info(
            "lifecycle step done",
            extra={
                "fields": {
                    "subject_id": data.subject_id,
                    "step": data.step,
                    "not_implemented": report.not_implemented,
                }
            },
        )
        return report

    @activity.defn(name="lifecycle.count_cases_in_progress")
    async def count_cases_in_progress(self, data: SubjectIdInput) -> CasesInProgress:
        """Whether an erasure can run now: the subject's live cases and their status, in one
        call to the dossier (ListSubjectCases, read as the platform, one access-log entry).
        Archived or purged cases are not listed (not in progress); a restricted case's
        status is not read (`unknown`: the dossier's own refusal of the erasure decides)."""
        counted = CasesInProgress()
        dossier = self._services.get("dossier")
        if dossier is None:
            return counted
        try:
            reply = await dossier.ListSubjectCases(
                dossier_pb2.ListSubjectCasesRequest(subject_id=data.subject_id)
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        for case in reply.cases:
            if case.processing_restricted:
                counted.unknown += 1
            elif case.status not in CASE_NOT_IN_PROGRESS:
                counted.in_progress += 1
        return counted

    # ------------------------------------------------------------ rights requests

    @staticmethod
    def _facts(message: Any) -> RequestFacts:
        received = _when(message.received_at)
        due = _when(message.due_at)
        if received is None or due is None:
            raise ApplicationError("the rights request has no dates", non_retryable=True)
        months = 0
        if message.HasField("extended_at"):
            total = (due.year - received.year) * 12 + due.month - received.month
            months = max(0, total - 1)
        return RequestFacts(
            request_id=message.request_id,
            subject_id=message.subject_id,
            kind=_enum_name(lpb.RightsRequestKind, message.kind),
            status=_enum_name(lpb.RightsRequestStatus, message.status),
            received_at=received,
            due_at=due,
            extension_months=months,
            outcome=_enum_name(lpb.RightsRequestOutcome, message.outcome) if message.outcome else "",
            answered_at=_when(message.answered_at),
        )

    @activity.defn(name="lifecycle.get_rights_request")
    async def get_rights_request(self, request_id: str) -> RequestFacts:
        try:
            reply = await self._identity.GetRightsRequest(ipb.GetRightsRequestRequest(request_id=request_id))
        except grpc.aio.AioRpcError as error:
            _raise(error)
        return self._facts(reply.rights_request)

    @activity.defn(name="lifecycle.extend_rights_request")
    async def extend_rights_request(self, data: ExtendCallInput) -> RequestFacts:
        try:
            reply = await self._identity.ExtendRightsRequestDeadline(
                ipb.ExtendRightsRequestDeadlineRequest(
                    idempotency_key=data.idempotency_key,
                    request_id=data.request_id,
                    reason=_enum_value(ipb.DeadlineExtensionReason, data.reason),
                    extension_months=data.months,
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        return self._facts(reply.rights_request)

    @activity.defn(name="lifecycle.answer_rights_request")
    async def answer_rights_request(self, data: AnswerCallInput) -> RequestFacts:
        try:
            reply = await self._identity.RecordRightsRequestAnswer(
                ipb.RecordRightsRequestAnswerRequest(
                    idempotency_key=data.idempotency_key,
                    request_id=data.request_id,
                    outcome=_enum_value(lpb.RightsRequestOutcome, data.outcome),
                    answer_document_id=data.answer_document_id,
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        return self._facts(reply.rights_request)

    @activity.defn(name="lifecycle.notify_rights_request")
    async def notify_rights_request(self, data: NotifyInput) -> str:
        link = f"{self._portal}/privacy/requests/{data.request_id}"
        variables = npb.TemplateVariables(link=link, date=to_timestamp(data.date))
        if data.kind in PERSON_TEMPLATES:
            template = PERSON_TEMPLATES[data.kind]
            email, _, locale, first_name = await self._contact(data.subject_id)
            if not email:
                return ""
            variables.first_name = first_name
            if data.kind == "PERSON_POSTPONED":
                variables.ClearField("date")  # no date is promised: it waits for the case
        else:
            email, locale = self._dpo_email, "fr"
            link = f"{self._portal}/dpo/rights-requests/{data.request_id}"
            variables.link = link
            template = npb.NOTIFICATION_TEMPLATE_DPO_RIGHTS_REQUEST_REMINDER
        try:
            reply = await self._notifications.SendNotification(
                npb.SendNotificationRequest(
                    idempotency_key=data.idempotency_key,
                    template=template,
                    channel=npb.CHANNEL_EMAIL,
                    email=email,
                    locale=locale,
                    variables=variables,
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        return str(reply.notification_id)

    @activity.defn(name="lifecycle.export_subject")
    async def export_subject(self, data: ExportInput) -> ExportResult:
        """GDPR-01 / GDPR-05, as runs answered before PATCH_EXPORT_DOCUMENT do it: the
        archive is written to the worker's export folder and stays there."""
        return await self._write_export(data)

    @activity.defn(name="lifecycle.export_to_dossier")
    async def export_to_dossier(self, data: ExportInput) -> ExportResult:
        """GDPR-01 / GDPR-05: the export archive, written, then streamed to the dossier as a
        rights-request answer of the person (theirs to download, sealed under their key,
        malware-scanned); the local copy is deleted whatever happens. One activity: the
        archive never has to be found on another worker's disk. A retry writes it again;
        the same archive is the same document (the upload's key carries its hash)."""
        result = await self._write_export(data)
        path = self._export_dir / result.object_key
        try:
            document_id = await self._store_answer(data, result, path)
        finally:
            path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        log.info(
            "export stored in the dossier",
            extra={"fields": {"request_id": data.request_id, "document_id": document_id}},
        )
        return result.model_copy(update={"document_id": document_id})

    async def _store_answer(self, data: ExportInput, result: ExportResult, path: Path) -> str:
        """UploadDocument as the platform for the person; returns the document id."""
        dossier = self._services.get("dossier")
        if dossier is None:
            raise ApplicationError(
                "the dossier is not among the lifecycle services: the export cannot reach the person",
                non_retryable=True,
            )

        async def messages() -> AsyncIterator[dossier_pb2.UploadDocumentRequest]:
            yield dossier_pb2.UploadDocumentRequest(
                idempotency_key=f"rights-answer:{data.request_id}:{result.sha256_hex}",
                metadata=dossier_pb2.UploadDocumentMetadata(
                    purpose=dossier_pb2.DOCUMENT_PURPOSE_RIGHTS_REQUEST_ANSWER,
                    file_name=export_file_name(data.request_id),
                    declared_size_bytes=result.size_bytes,
                    subject_account_id=data.subject_id,
                ),
            )
            with path.open("rb") as handle:
                while chunk := await asyncio.to_thread(handle.read, UPLOAD_CHUNK):
                    yield dossier_pb2.UploadDocumentRequest(chunk=chunk)

        try:
            reply = await dossier.UploadDocument(messages(), timeout=TRANSFER_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as error:
            _raise(error)
        document = reply.document
        if document.status == dossier_pb2.DOCUMENT_STATUS_REJECTED:
            raise ApplicationError(
                "the export archive was refused by the dossier's malware scan; the DPO must look into it",
                non_retryable=True,
            )
        if document.sha256_hex != result.sha256_hex:
            raise ApplicationError(
                "the dossier holds other bytes than the export written", non_retryable=True
            )
        return str(document.document_id)

    async def _write_export(self, data: ExportInput) -> ExportResult:
        """Every service's FHIR R4 part merged into one Bundle, validated with
        fhir.resources, written with a readable summary and the files it references; only
        its key, size and hash return."""
        from workflows.lifecycle.fhir import merge_bundles, readable_summary, validate_bundle

        key = f"export:{data.request_id}"
        parts: list[dict[str, Any]] = []
        not_implemented: list[str] = []
        # The files the bundle's DocumentReferences point to: (service, id).
        files: list[tuple[str, str]] = []
        try:
            reply = await self._identity.ExportSubjectData(
                ipb.ExportSubjectDataRequest(
                    idempotency_key=f"{key}:identity",
                    subject_id=data.subject_id,
                    rights_request_id=data.request_id,
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        parts.append(json.loads(reply.fhir_bundle_json))
        for name, stub in self._services.items():
            module, _ = SERVICE_MODULES[name]
            try:
                part = await stub.ExportSubjectData(
                    module.ExportSubjectDataRequest(
                        idempotency_key=f"{key}:{name}",
                        subject_id=data.subject_id,
                        rights_request_id=data.request_id,
                        **await self._case_fields(name, data.subject_id),
                    )
                )
            except grpc.aio.AioRpcError as error:
                if _not_implemented(error):
                    log.warning(
                        "export not implemented by service: it holds nothing to export yet",
                        extra={"fields": {"service": name, "request_id": data.request_id}},
                    )
                    not_implemented.append(name)
                    continue
                _raise(error)
            parts.append(json.loads(part.fhir_bundle_json))
            files += [(name, file_id) for file_id in _exported_file_ids(name, part)]
        bundle = merge_bundles(parts, data.subject_id)
        # Earlier answers are named in the bundle, not copied into the new archive.
        answers = _answer_document_ids(bundle)
        files = [(service, file_id) for service, file_id in files if file_id not in answers]
        try:
            validate_bundle(bundle)
        except ValueError as error:
            raise ApplicationError(
                f"the export is not a valid FHIR R4 bundle: {error}", non_retryable=True
            ) from error
        object_key = f"{data.request_id}/export.zip"
        path = self._export_dir / object_key
        # Private to the worker: the person's whole file passes through here.
        self._export_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.parent.mkdir(exist_ok=True, mode=0o700)
        partial = path.with_name(path.name + ".partial")
        # Written to disk as it streams: documents can be large, nothing is held whole. The
        # files go first; then the bundle, whose DocumentReferences point to them.
        try:
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
                left_out: list[str] = []
                entries: dict[str, str] = {}
                for service, file_id in files:
                    entry, note = await self._add_file(archive, service, file_id)
                    if entry:
                        entries[_file_urn(service, file_id)] = entry
                    if note:
                        left_out.append(note)
                _point_to_entries(bundle, entries)
                try:
                    validate_bundle(bundle)
                except ValueError as error:
                    raise ApplicationError(
                        f"the export is not a valid FHIR R4 bundle: {error}", non_retryable=True
                    ) from error
                body = json.dumps(bundle, indent=2, ensure_ascii=False).encode()
                archive.writestr("fhir-bundle.json", body)
                summary = readable_summary(bundle, not_implemented)
                if left_out:
                    summary += "\nFiles not included (ask the DPO):\n" + "\n".join(left_out) + "\n"
                archive.writestr("summary.txt", summary.encode())
        except BaseException:
            # Nothing half-written stays behind with the person's files in it.
            partial.unlink(missing_ok=True)
            raise
        digest = hashlib.sha256()
        size = 0
        with partial.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        partial.replace(path)
        types = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
        return ExportResult(
            object_key=object_key,
            sha256_hex=digest.hexdigest(),
            resource_count=len(bundle["entry"]),
            resource_types=dict(types),
            not_implemented=not_implemented,
            size_bytes=size,
        )

    async def _add_file(self, archive: zipfile.ZipFile, service: str, file_id: str) -> tuple[str, str]:
        """Stream one exported file into the archive: (its entry name, "") or ("", a note
        saying why it is not there)."""
        stub = self._services.get(service)
        if stub is None:
            return "", f"- {service} {file_id}: service not configured"
        if service == "dossier":
            stream = stub.DownloadDocument(
                SERVICE_MODULES[service][0].DownloadDocumentRequest(document_id=file_id),
                timeout=TRANSFER_TIMEOUT_SECONDS,
            )
        else:
            stream = stub.DownloadInvoice(
                SERVICE_MODULES[service][0].DownloadInvoiceRequest(invoice_id=file_id),
                timeout=TRANSFER_TIMEOUT_SECONDS,
            )
        entry = f"{'documents' if service == 'dossier' else 'invoices'}/{file_id}"
        name = ""
        target = None
        try:
            async for reply in stream:
                if reply.WhichOneof("part") == "metadata":
                    meta = reply.metadata
                    number = getattr(meta, "invoice_number", "")
                    name = f"{entry}-" + _safe_file_name(
                        getattr(meta, "file_name", "") or (f"{number}.pdf" if number else "file")
                    )
                    target = archive.open(name, "w")
                elif target is not None:
                    target.write(reply.chunk)
        except grpc.aio.AioRpcError as error:
            # A quarantined or purged file is named, not silently dropped.
            if target is not None:
                target.close()
                return "", f"- {name}: incomplete ({error.code().name.lower()})"
            return "", f"- {entry}: {error.code().name.lower()}"
        if target is None:
            return "", f"- {entry}: empty answer"
        target.close()
        return name, ""

    # ------------------------------------------------------------ sweep

    @activity.defn(name="lifecycle.purge_by_age")
    async def purge_by_age(self, data: AgePurgeInput) -> StepReport:
        """RET-03 / RET-04 / RET-05: data purged by its own age, whoever it belongs to."""
        report = StepReport(subject_id="*", step="AGE_PURGE", done_at=data.as_of)
        key = data.idempotency_key
        try:
            logs = await self._identity.PurgeConnectionLogs(
                lpb.PurgeConnectionLogsRequest(
                    idempotency_key=f"{key}:logs",
                    older_than=to_timestamp(add_months(data.as_of, -12)),
                )
            )
            report.items["identity"] = {c.category: c.count for c in logs.purged}
            recipients = await self._notifications.PurgeRecipientData(
                npb.PurgeRecipientDataRequest(
                    idempotency_key=f"{key}:recipients",
                    delivery_ended_before=to_timestamp(add_months(data.as_of, -12)),
                )
            )
            report.items["notifications"] = {"recipient_addresses": recipients.purged_count}
        except grpc.aio.AioRpcError as error:
            _raise(error)
        if self._billing is not None:
            stub = self._billing
            try:
                payments = await stub.PurgePaymentData(
                    billing_pb2.PurgePaymentDataRequest(
                        idempotency_key=f"{key}:payments",
                        older_than=to_timestamp(add_months(data.as_of, -13)),
                    )
                )
                satisfaction = await stub.PurgeSatisfactionData(
                    billing_pb2.PurgeSatisfactionDataRequest(
                        idempotency_key=f"{key}:satisfaction",
                        older_than=to_timestamp(add_months(data.as_of, -36)),
                    )
                )
            except grpc.aio.AioRpcError as error:
                _raise(error)
            report.items["billing"] = {
                "payment_attempts": payments.purged_payment_attempt_count,
                "psp_notifications": payments.purged_notification_count,
                "satisfaction_answers": satisfaction.purged_count,
            }
        return report

    async def list_due(
        self, category: Category, as_of: datetime, page_size: int = 1000
    ) -> list[tuple[str, str]]:
        """Every (subject id, kind) due in `category` at `as_of`, paged (keyset, identity's maximum page)."""
        found: list[tuple[str, str]] = []
        token = ""
        while True:
            reply = await self._identity.ListSubjectsDueForRetention(
                ipb.ListSubjectsDueForRetentionRequest(
                    category=_enum_value(lpb.RetentionCategory, category.value),
                    as_of=to_timestamp(as_of),
                    page_size=page_size,
                    page_token=token,
                )
            )
            found.extend((s.subject_id, _enum_name(lpb.SubjectKind, s.subject_kind)) for s in reply.subjects)
            activity.heartbeat(len(found)) if activity.in_activity() else None
            token = reply.next_page_token
            if not token:
                return found

    @activity.defn(name="lifecycle.start_due_workflows")
    async def start_due_workflows(self, data: DueSweepInput) -> DueSweepResult:
        """The safety net: each subject whose clock ran out gets its retention workflow
        (started once; a running one is left alone and does the work)."""
        from workflows.lifecycle.workflows import SubjectRetentionWorkflow, retention_workflow_id

        category = Category(data.category)
        try:
            due = await self.list_due(category, data.as_of)
        except grpc.aio.AioRpcError as error:
            _raise(error)
        result = DueSweepResult(category=data.category, listed=len(due))
        if self._client is None:
            return result
        archived = category in {Category.ACCOUNT_ARCHIVED, Category.RIGHTS_REQUESTS_ARCHIVED}
        for subject_id, _kind in due:
            await self._client.start_workflow(
                SubjectRetentionWorkflow.run,
                RetentionInput(subject_id=subject_id, stage="ARCHIVED" if archived else "ACTIVE"),
                id=retention_workflow_id(subject_id),
                task_queue=self._queue,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            )
            result.ensured += 1
        return result

    async def list_open_rights_requests(self, page_size: int = 200) -> list[str]:
        """The ids of every open rights request (received, in progress, extended, postponed),
        all pages read before anything is started (identity pages by offset)."""
        statuses = [_enum_value(lpb.RightsRequestStatus, s) for s in OPEN_RIGHTS_REQUEST_STATUSES]
        found: list[str] = []
        token = ""
        while True:
            reply = await self._identity.ListRightsRequests(
                ipb.ListRightsRequestsRequest(statuses=statuses, page_size=page_size, page_token=token)
            )
            found.extend(r.request_id for r in reply.rights_requests)
            if activity.in_activity():
                activity.heartbeat(len(found))
            token = reply.next_page_token
            if not token:
                return list(dict.fromkeys(found))

    @activity.defn(name="lifecycle.start_rights_request_workflows")
    async def start_rights_request_workflows(self, data: RightsSweepInput) -> RightsSweepResult:
        """GDPR-07 / GDPR-08: every open rights request has its deadline workflow, whatever
        channel recorded it (the portal starts its own; a letter, an email or a referent
        doctor's relay recorded by the DPO in identity gets it here). Started once: a running
        workflow (or the request's chain already in its retention stage) is never duplicated
        (`FAIL` on conflict), a completed one never restarted (`ALLOW_DUPLICATE_FAILED_ONLY`);
        one that failed, timed out or was terminated while the request is still open is
        started again: the deadline must still be watched (its notices keep their
        idempotency keys, so nobody is told twice). Answered requests are not listed: their
        chain is the record's retention, which the due sweep covers."""
        from workflows.lifecycle.workflows import RightsRequestWorkflow, rights_request_workflow_id

        try:
            open_ids = await self.list_open_rights_requests()
        except grpc.aio.AioRpcError as error:
            _raise(error)
        result = RightsSweepResult(listed=len(open_ids))
        if self._client is None:
            return result
        for request_id in open_ids:
            try:
                await self._client.start_workflow(
                    RightsRequestWorkflow.run,
                    RightsRequestInput(request_id=request_id),
                    id=rights_request_workflow_id(request_id),
                    task_queue=self._queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                )
            except WorkflowAlreadyStartedError:
                result.existing += 1
            else:
                result.started += 1
                log.info(
                    "rights-request workflow started by the sweep",
                    extra={"fields": {"request_id": request_id}},
                )
            if activity.in_activity():
                activity.heartbeat(result.started + result.existing)
        return result

    # ------------------------------------------------------------ legal-text announcements

    @activity.defn(name="lifecycle.get_legal_text")
    async def get_legal_text(self, data: TextIdInput) -> LegalTextFacts:
        try:
            reply = await self._identity.GetLegalText(ipb.GetLegalTextRequest(text_id=data.text_id))
        except grpc.aio.AioRpcError as error:
            _raise(error)
        text = reply.text
        return LegalTextFacts(
            text_id=text.text_id,
            kind=_enum_name(ipb.LegalTextKind, text.kind),
            version=text.version,
            locale=text.locale,
            effective_at=text.effective_at.ToDatetime(tzinfo=UTC),
        )

    @activity.defn(name="lifecycle.announce_page")
    async def announce_page(self, data: AnnouncePageInput) -> AnnouncePageResult:
        """One page of recipients: a TERMS_UPDATED email to each, keyed `{workflow id}:{account
        id}` so a retried page or a re-run workflow never sends one twice. Addresses stay
        here; only counts and the next page token go back to the workflow."""
        try:
            reply = await self._identity.ListAnnouncementRecipients(
                ipb.ListAnnouncementRecipientsRequest(
                    locale=data.locale, page_size=data.page_size, page_token=data.page_token
                )
            )
        except grpc.aio.AioRpcError as error:
            _raise(error)
        link = f"{self._portal}/account/texts/{data.text_id}"
        sent = skipped = 0
        for recipient in reply.recipients:
            if not recipient.email:
                skipped += 1
                continue
            try:
                await self._notifications.SendNotification(
                    npb.SendNotificationRequest(
                        idempotency_key=f"{data.workflow_id}:{recipient.account_id}",
                        template=npb.NOTIFICATION_TEMPLATE_TERMS_UPDATED,
                        channel=npb.CHANNEL_EMAIL,
                        email=recipient.email,
                        locale=recipient.locale or "fr",
                        variables=npb.TemplateVariables(
                            first_name=recipient.first_name,
                            date=to_timestamp(data.effective_at),
                            link=link,
                        ),
                    )
                )
                sent += 1
            except grpc.aio.AioRpcError as error:
                if error.code() not in {
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION,
                }:
                    raise
                # An address notifications refuses (or a suppressed recipient) must not stop
                # the fan-out: counted and logged by id.
                skipped += 1
                log.warning(
                    "announcement_refused",
                    extra={"fields": {"account_id": recipient.account_id, "code": error.code().name}},
                )
            if activity.in_activity():
                activity.heartbeat(sent + skipped)
        return AnnouncePageResult(sent=sent, skipped=skipped, next_page_token=reply.next_page_token)


def _exported_file_ids(service: str, part: Any) -> list[str]:
    """Ids of the files a service's export refers to (dossier documents, billing invoices)."""
    if service == "dossier":
        return list(getattr(part, "document_ids", []))
    if service == "billing":
        return list(getattr(part, "invoice_ids", []))
    return []


def export_file_name(request_id: str) -> str:
    """The archive's name where the person downloads it (no personal data in it)."""
    return f"export-{request_id[:8].lower()}.zip"


def _answer_document_ids(bundle: dict[str, Any]) -> set[str]:
    """Dossier documents that are earlier rights-request answers (their DocumentReference's
    type says so): each holds a whole earlier export, never copied into the next one."""
    found: set[str] = set()
    for item in bundle["entry"]:
        resource = item["resource"]
        if resource.get("resourceType") != "DocumentReference":
            continue
        codings = resource.get("type", {}).get("coding", [])
        if any(c.get("code") == ANSWER_PURPOSE_CODE for c in codings):
            found.add(str(resource.get("id", "")))
    return found


def _file_urn(service: str, file_id: str) -> str:
    """How a service's DocumentReference names the file it exports."""
    return f"urn:secondopinion:{'document' if service == 'dossier' else 'invoice'}:{file_id}"


def _point_to_entries(bundle: dict[str, Any], entries: dict[str, str]) -> None:
    """Each DocumentReference whose file is in the archive points to it (a URL relative to
    the archive's root); one whose file is not keeps the service's URN."""
    for item in bundle["entry"]:
        resource = item["resource"]
        if resource.get("resourceType") != "DocumentReference":
            continue
        for content in resource.get("content", []):
            attachment = content.get("attachment", {})
            entry = entries.get(attachment.get("url", ""))
            if entry:
                attachment["url"] = entry


def _safe_file_name(name: str) -> str:
    """A name safe inside a zip: no folders, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:100]
    return cleaned.lstrip(".") or "file"
