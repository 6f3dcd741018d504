"""Activities of the lifecycle workflows: calls to the services over gRPC.

Every call carries the worker's service identity and an idempotency key derived from the
subject and the step. Contact details and exported data are read and used here, never
returned: only ids, codes, dates and counts enter Temporal's history.

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

import hashlib
import json
import logging
import zipfile
from collections import Counter
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
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError

from services.identity.domain.retention import Category, add_months
from services.shared.protoconv import to_timestamp
from workflows.grpc_errors import as_activity_error
from workflows.lifecycle.models import (
    AgePurgeInput,
    AnnouncePageInput,
    AnnouncePageResult,
    AnswerCallInput,
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
            self.get_rights_request,
            self.extend_rights_request,
            self.answer_rights_request,
            self.notify_rights_request,
            self.export_subject,
            self.purge_by_age,
            self.start_due_workflows,
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
            _raise(error)
        if counts:
            report.items[name] = counts

    @activity.defn(name="lifecycle.run_step")
    async def run_step(self, data: StepInput) -> StepReport:
        """One archive, restriction or purge across every service holding subject data;
        identity goes last (the others may still need the account until then)."""
        report = StepReport(subject_id=data.subject_id, step=data.step)
        if data.kind == "ACCOUNT":
            if data.step in {"ARCHIVE", "PURGE"}:
                await self._purge_recipients(data, report)
            for name in self._services:
                if data.step in SERVICE_STEPS[name]:
                    await self._service_step(name, data, report)
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
        if data.kind == "PERSON_EXTENDED":
            email, _, locale, first_name = await self._contact(data.subject_id)
            if not email:
                return ""
            variables.first_name = first_name
            template = npb.NOTIFICATION_TEMPLATE_RIGHTS_REQUEST_EXTENDED
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
        """GDPR-01 / GDPR-05: every service's FHIR R4 part merged into one Bundle, validated
        with fhir.resources, written with a readable summary; only its key and hash return."""
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
        try:
            validate_bundle(bundle)
        except ValueError as error:
            raise ApplicationError(
                f"the export is not a valid FHIR R4 bundle: {error}", non_retryable=True
            ) from error
        body = json.dumps(bundle, indent=2, ensure_ascii=False).encode()
        object_key = f"{data.request_id}/export.zip"
        path = self._export_dir / object_key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        # Written to disk as it streams: documents can be large, nothing is held whole.
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("fhir-bundle.json", body)
            missing = [await self._add_file(archive, service, file_id) for service, file_id in files]
            summary = readable_summary(bundle, not_implemented)
            left_out = [note for note in missing if note]
            if left_out:
                summary += "\nFiles not included (ask the DPO):\n" + "\n".join(left_out) + "\n"
            archive.writestr("summary.txt", summary.encode())
        digest = hashlib.sha256()
        with partial.open("rb") as handle:
            while chunk := handle.read(1024 * 1024):
                digest.update(chunk)
        partial.replace(path)
        types = Counter(entry["resource"]["resourceType"] for entry in bundle["entry"])
        return ExportResult(
            object_key=object_key,
            sha256_hex=digest.hexdigest(),
            resource_count=len(bundle["entry"]),
            resource_types=dict(types),
            not_implemented=not_implemented,
        )

    async def _add_file(self, archive: zipfile.ZipFile, service: str, file_id: str) -> str:
        """Stream one exported file into the archive; return a note when it cannot be."""
        stub = self._services.get(service)
        if stub is None:
            return f"- {service} {file_id}: service not configured"
        if service == "dossier":
            stream = stub.DownloadDocument(
                SERVICE_MODULES[service][0].DownloadDocumentRequest(document_id=file_id)
            )
        else:
            stream = stub.DownloadInvoice(
                SERVICE_MODULES[service][0].DownloadInvoiceRequest(invoice_id=file_id)
            )
        entry = f"{'documents' if service == 'dossier' else 'invoices'}/{file_id}"
        try:
            target = None
            async for reply in stream:
                if reply.WhichOneof("part") == "metadata":
                    meta = reply.metadata
                    number = getattr(meta, "invoice_number", "")
                    name = _safe_file_name(
                        getattr(meta, "file_name", "") or (f"{number}.pdf" if number else "file")
                    )
                    target = archive.open(f"{entry}-{name}", "w")
                elif target is not None:
                    target.write(reply.chunk)
            if target is not None:
                target.close()
        except grpc.aio.AioRpcError as error:
            # A quarantined or purged file is named, not silently dropped.
            return f"- {entry}: {error.code().name.lower()}"
        return ""

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
        link = f"{self._portal}/legal/texts/{data.text_id}"
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


def _safe_file_name(name: str) -> str:
    """A name safe inside a zip: no folders, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:100]
    return cleaned.lstrip(".") or "file"
