"""Thin gRPC layer of the data-lifecycle RPCs (issue 10), mixed into IdentityServicer."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import lifecycle_pb2 as lpb
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity.domain import lifecycle as lc
from services.identity.domain.habilitations import archive_reader, rights_request_handler
from services.identity.domain.retention import Category
from services.identity.models import LegalHoldRecord, RightsRequestRecord, SubjectLifecycle
from services.shared.auth import HUMAN_ROLES, Principal, Role
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from services.shared.principals import require_role
from services.shared.protoconv import to_timestamp

E = TypeVar("E", bound=StrEnum)
# The lifecycle worker calls as the `worker` service; the DPO acts in person, and so does
# a coordinator holding the matching habilitation (SEC-05): `rights_requests` for the
# rights-request desk, `archive_access` for archive reads (RET-07).
WORKERS = frozenset({"worker"})
DPO_STAFF = (Role.DPO, Role.ADMINISTRATOR)
MAX_PAGE = 200
MAX_DUE_PAGE = 5000


def enum_in(pb_enum: Any, domain: type[E], value: int, field: str) -> E:
    """`RIGHTS_REQUEST_KIND_ACCESS` -> Kind.ACCESS; unspecified/unknown -> INVALID_ARGUMENT."""
    prefix = pb_enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    try:
        name: str = pb_enum.Name(value)
    except ValueError:
        name = ""
    member = domain.__members__.get(name.removeprefix(prefix)) if name else None
    if member is None:
        raise InvalidArgument(f"{field} is required")
    return member


def enum_out(pb_enum: Any, member: StrEnum | str) -> Any:
    prefix = pb_enum.DESCRIPTOR.values[0].name.removesuffix("UNSPECIFIED")
    return pb_enum.Value(prefix + str(member))


def page(size: int, token: str, cap: int = MAX_PAGE) -> tuple[int, int]:
    if size < 0:
        raise InvalidArgument("page_size must not be negative")
    try:
        offset = int(token) if token else 0
    except ValueError as exc:
        raise InvalidArgument("page_token is not valid") from exc
    if offset < 0:
        raise InvalidArgument("page_token is not valid")
    return offset, min(size or 50, cap)


def next_token(offset: int, limit: int, got: int) -> str:
    return str(offset + limit) if got == limit else ""


def rights_desk() -> Principal:
    """The DPO desk's callers: the DPO, administrators, a coordinator holding the
    rights-requests habilitation, and the lifecycle worker."""
    principal = require_role(*DPO_STAFF, Role.COORDINATOR, Role.SERVICE, services=WORKERS)
    if not principal.is_service and not rights_request_handler(principal):
        raise PermissionDenied("rights requests are handled by the DPO or habilitated staff")
    return principal


def when(stamp: Any) -> Any:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def request_to_pb(record: RightsRequestRecord, sealed: dict[str, str] | None = None) -> lpb.RightsRequest:
    message = lpb.RightsRequest(
        request_id=record.request_id,
        subject_id=record.subject_id,
        kind=enum_out(lpb.RightsRequestKind, record.kind),
        channel=enum_out(lpb.RightsRequestChannel, record.channel),
        identity_verification=enum_out(lpb.IdentityVerificationMethod, record.identity_verification),
        identity_proof_document_id=record.identity_proof_document_id,
        recorded_by_account_id=record.recorded_by_account_id,
        status=enum_out(lpb.RightsRequestStatus, record.status),
        received_at=to_timestamp(record.received_at),
        due_at=to_timestamp(record.due_at),
        answer_document_id=record.answer_document_id,
    )
    if record.extended_at is not None:
        message.extended_at.CopyFrom(to_timestamp(record.extended_at))
    if record.answered_at is not None:
        message.answered_at.CopyFrom(to_timestamp(record.answered_at))
    if record.outcome:
        message.outcome = enum_out(lpb.RightsRequestOutcome, record.outcome)
    if sealed:
        message.details = sealed.get("details", "")
        message.designated_doctor_rpps_number = sealed.get("doctor_rpps", "")
        message.designated_doctor_display_name = sealed.get("doctor_name", "")
    return message


def hold_to_pb(hold: LegalHoldRecord) -> lpb.LegalHold:
    message = lpb.LegalHold(
        legal_hold_id=hold.legal_hold_id,
        subject_id=hold.subject_id,
        reason=enum_out(lpb.LegalHoldReason, hold.reason),
        external_reference=hold.external_reference,
        placed_by_account_id=hold.placed_by_account_id,
        placed_at=to_timestamp(hold.placed_at),
        released_by_account_id=hold.released_by_account_id,
    )
    if hold.released_at is not None:
        message.released_at.CopyFrom(to_timestamp(hold.released_at))
    return message


def counts(items: dict[str, int]) -> list[lpb.DataItemCount]:
    return [lpb.DataItemCount(category=k, count=v) for k, v in sorted(items.items())]


class LifecycleRpcs:
    """Needs `_sessions`, `_subject_keys` and `_once` from the servicer it is mixed into."""

    _sessions: async_sessionmaker[AsyncSession]
    _subject_keys: lc.SubjectKeys
    _once: Callable[..., Awaitable[str]]

    async def _read(self, action: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with self._sessions() as session:
            return await action(session)

    # ------------------------------------------------------------ rights requests

    async def RecordRightsRequest(
        self, request: pb.RecordRightsRequestRequest, context: Any
    ) -> pb.RecordRightsRequestResponse:
        principal = require_role(*HUMAN_ROLES)
        new = lc.NewRightsRequest(
            subject_id=request.subject_id,
            kind=enum_in(lpb.RightsRequestKind, lc.Kind, request.kind, "kind"),
            channel=enum_in(lpb.RightsRequestChannel, lc.Channel, request.channel, "channel"),
            verification=enum_in(
                lpb.IdentityVerificationMethod,
                lc.Verification,
                request.identity_verification,
                "identity_verification",
            ),
            proof_document_id=request.identity_proof_document_id,
            received_at=when(request.received_at),
            doctor_rpps=request.designated_doctor_rpps_number,
            doctor_name=request.designated_doctor_display_name,
            details=request.details,
        )
        if not new.subject_id:
            raise InvalidArgument("subject_id is required")

        async def record(session: AsyncSession) -> str:
            return (await lc.record_rights_request(session, self._subject_keys, principal, new)).request_id

        request_id = await self._once(request, "RecordRightsRequest", record)
        return pb.RecordRightsRequestResponse(rights_request=await self._request_pb(request_id))

    async def _request_pb(self, request_id: str, principal: Principal | None = None) -> lpb.RightsRequest:
        async def read(session: AsyncSession) -> lpb.RightsRequest:
            record = await lc.get_request(session, request_id)
            staff = principal is None or principal.is_service or rights_request_handler(principal)
            if not staff and principal is not None and record.subject_id != principal.subject:
                raise NotFound("rights request not found")
            return request_to_pb(record, await lc.request_secrets(session, self._subject_keys, record))

        result: lpb.RightsRequest = await self._read(read)
        return result

    async def GetRightsRequest(
        self, request: pb.GetRightsRequestRequest, context: Any
    ) -> pb.GetRightsRequestResponse:
        principal = require_role(*Role)
        if principal.is_service and principal.subject not in WORKERS:
            raise NotFound("rights request not found")
        return pb.GetRightsRequestResponse(
            rights_request=await self._request_pb(request.request_id, principal)
        )

    async def ListRightsRequests(
        self, request: pb.ListRightsRequestsRequest, context: Any
    ) -> pb.ListRightsRequestsResponse:
        principal = require_role(*Role)
        staff = rights_request_handler(principal) or (principal.is_service and principal.subject in WORKERS)
        if not staff and (not request.subject_id or request.subject_id != principal.subject):
            raise InvalidArgument("subject_id must name the caller's own account")
        statuses = [enum_in(lpb.RightsRequestStatus, lc.Status, s, "statuses") for s in request.statuses]
        offset, limit = page(request.page_size, request.page_token)

        async def read(session: AsyncSession) -> list[lpb.RightsRequest]:
            rows = await lc.list_requests(session, request.subject_id, statuses, offset, limit)
            return [request_to_pb(r) for r in rows]

        items: list[lpb.RightsRequest] = await self._read(read)
        return pb.ListRightsRequestsResponse(
            rights_requests=items, next_page_token=next_token(offset, limit, len(items))
        )

    async def ExtendRightsRequestDeadline(
        self, request: pb.ExtendRightsRequestDeadlineRequest, context: Any
    ) -> pb.ExtendRightsRequestDeadlineResponse:
        rights_desk()
        reason = enum_in(pb.DeadlineExtensionReason, lc.ExtensionReason, request.reason, "reason")

        async def extend(session: AsyncSession) -> str:
            return (
                await lc.extend_request(session, request.request_id, reason, request.extension_months)
            ).request_id

        request_id = await self._once(request, "ExtendRightsRequestDeadline", extend)
        return pb.ExtendRightsRequestDeadlineResponse(rights_request=await self._request_pb(request_id))

    async def RecordRightsRequestAnswer(
        self, request: pb.RecordRightsRequestAnswerRequest, context: Any
    ) -> pb.RecordRightsRequestAnswerResponse:
        rights_desk()
        outcome = enum_in(lpb.RightsRequestOutcome, lc.Outcome, request.outcome, "outcome")

        async def answer(session: AsyncSession) -> str:
            return (
                await lc.answer_request(session, request.request_id, outcome, request.answer_document_id)
            ).request_id

        request_id = await self._once(request, "RecordRightsRequestAnswer", answer)
        return pb.RecordRightsRequestAnswerResponse(rights_request=await self._request_pb(request_id))

    # ------------------------------------------------------------ legal holds

    async def PlaceLegalHold(
        self, request: pb.PlaceLegalHoldRequest, context: Any
    ) -> pb.PlaceLegalHoldResponse:
        principal = require_role(*DPO_STAFF)
        reason = enum_in(lpb.LegalHoldReason, lc.HoldReason, request.reason, "reason")

        async def place(session: AsyncSession) -> str:
            hold = await lc.place_hold(
                session, request.subject_id, reason, request.external_reference, principal.subject
            )
            return hold.legal_hold_id

        hold_id = await self._once(request, "PlaceLegalHold", place)
        return pb.PlaceLegalHoldResponse(legal_hold=await self._hold_pb(hold_id))

    async def _hold_pb(self, hold_id: str) -> lpb.LegalHold:
        async def read(session: AsyncSession) -> lpb.LegalHold:
            hold = await session.get(LegalHoldRecord, hold_id)
            if hold is None:
                raise NotFound("legal hold not found")
            return hold_to_pb(hold)

        result: lpb.LegalHold = await self._read(read)
        return result

    async def ReleaseLegalHold(
        self, request: pb.ReleaseLegalHoldRequest, context: Any
    ) -> pb.ReleaseLegalHoldResponse:
        principal = require_role(*DPO_STAFF)

        async def release(session: AsyncSession) -> str:
            return (await lc.release_hold(session, request.legal_hold_id, principal.subject)).legal_hold_id

        hold_id = await self._once(request, "ReleaseLegalHold", release)
        return pb.ReleaseLegalHoldResponse(legal_hold=await self._hold_pb(hold_id))

    async def ListLegalHolds(
        self, request: pb.ListLegalHoldsRequest, context: Any
    ) -> pb.ListLegalHoldsResponse:
        require_role(*DPO_STAFF, Role.SERVICE, services=WORKERS)
        offset, limit = page(request.page_size, request.page_token)

        async def read(session: AsyncSession) -> list[lpb.LegalHold]:
            rows = await lc.list_holds(session, request.subject_id, request.include_released, offset, limit)
            return [hold_to_pb(h) for h in rows]

        items: list[lpb.LegalHold] = await self._read(read)
        return pb.ListLegalHoldsResponse(
            legal_holds=items, next_page_token=next_token(offset, limit, len(items))
        )

    # ------------------------------------------------------------ retention

    async def RecordSubjectActivity(
        self, request: pb.RecordSubjectActivityRequest, context: Any
    ) -> pb.RecordSubjectActivityResponse:
        # Any internal service that sees an activity of the person moves the clock.
        require_role(Role.SERVICE)
        category = enum_in(lpb.RetentionCategory, Category, request.category, "category")
        occurred = when(request.occurred_at)
        if occurred is None:
            raise InvalidArgument("occurred_at is required")

        async def move(session: AsyncSession) -> str:
            due = await lc.record_activity(session, request.subject_id, category, occurred)
            return due.isoformat()

        due = await self._once(request, "RecordSubjectActivity", move)
        return pb.RecordSubjectActivityResponse(due_at=to_timestamp(datetime.fromisoformat(due)))

    async def ListSubjectsDueForRetention(
        self, request: pb.ListSubjectsDueForRetentionRequest, context: Any
    ) -> pb.ListSubjectsDueForRetentionResponse:
        require_role(Role.DPO, Role.SERVICE, services=WORKERS | {"ops"})
        category = enum_in(lpb.RetentionCategory, Category, request.category, "category")
        as_of = when(request.as_of)
        if as_of is None:
            raise InvalidArgument("as_of is required")
        if request.page_size < 0:
            raise InvalidArgument("page_size must not be negative")
        limit = min(request.page_size or 500, MAX_DUE_PAGE)

        async def read(session: AsyncSession) -> list[lc.DueSubject]:
            return await lc.list_due(session, category, as_of, request.page_token, limit)

        rows: list[lc.DueSubject] = await self._read(read)
        return pb.ListSubjectsDueForRetentionResponse(
            subjects=[
                lpb.DueSubject(
                    subject_id=r.subject_id,
                    subject_kind=enum_out(lpb.SubjectKind, r.kind),
                    category=enum_out(lpb.RetentionCategory, r.category),
                    action=enum_out(lpb.RetentionAction, r.action),
                    clock_started_at=to_timestamp(r.clock_started_at),
                    due_at=to_timestamp(r.due_at),
                )
                for r in rows
            ],
            next_page_token=lc.page_token(rows[-1]) if len(rows) == limit else "",
        )

    async def GetSubjectRetention(
        self, request: lpb.GetSubjectRetentionRequest, context: Any
    ) -> lpb.GetSubjectRetentionResponse:
        require_role(Role.DPO, Role.SERVICE, services=WORKERS)

        async def read(session: AsyncSession) -> lc.SubjectRetention:
            return await lc.subject_retention(session, request.subject_id)

        info: lc.SubjectRetention = await self._read(read)
        message = lpb.GetSubjectRetentionResponse(
            subject_id=info.subject_id,
            subject_kind=enum_out(lpb.SubjectKind, info.kind),
            stage=enum_out(lpb.SubjectStage, info.stage),
            legal_hold=info.legal_hold,
            restricted=info.restricted,
            converted=info.converted,
        )
        for name in ("clock_started_at", "archived_at", "purged_at"):
            value = getattr(info, name)
            if value is not None:
                getattr(message, name).CopyFrom(to_timestamp(value))
        return message

    async def ArchiveSubject(
        self, request: pb.ArchiveSubjectRequest, context: Any
    ) -> pb.ArchiveSubjectResponse:
        require_role(Role.SERVICE, services=WORKERS)
        reason = enum_in(pb.ArchiveReason, lc.ArchiveReason, request.reason, "reason")
        keys = self._subject_keys

        async def archive(session: AsyncSession) -> str:
            await lc.archive_subject(session, keys, request.subject_id, reason)
            return request.subject_id

        subject_id = await self._once(request, "ArchiveSubject", archive)

        async def report(session: AsyncSession) -> tuple[datetime, dict[str, int]]:
            state = await session.get(SubjectLifecycle, subject_id)
            if state is not None and state.archived_at is not None:
                return state.archived_at, json.loads(state.archive_report or "{}")
            record = await lc.get_request(session, subject_id)
            if record.archived_at is None:
                raise NotFound("subject not found")
            return record.archived_at, {"rights_requests": 1}

        archived_at, items = await self._read(report)
        return pb.ArchiveSubjectResponse(archived_at=to_timestamp(archived_at), archived=counts(items))

    async def RestrictSubject(
        self, request: pb.RestrictSubjectRequest, context: Any
    ) -> pb.RestrictSubjectResponse:
        require_role(*DPO_STAFF, Role.SERVICE, services=WORKERS)

        async def restrict(session: AsyncSession) -> str:
            changed_at, _ = await lc.restrict_subject(session, request.subject_id, request.restricted)
            return changed_at.isoformat()

        changed_at = datetime.fromisoformat(await self._once(request, "RestrictSubject", restrict))

        async def affected(session: AsyncSession) -> dict[str, int]:
            return await lc.restricted_items(session, request.subject_id)

        return pb.RestrictSubjectResponse(
            affected=counts(await self._read(affected)), changed_at=to_timestamp(changed_at)
        )

    async def PurgeSubject(self, request: pb.PurgeSubjectRequest, context: Any) -> pb.PurgeSubjectResponse:
        require_role(Role.SERVICE, services=WORKERS)
        reason = enum_in(pb.PurgeReason, lc.PurgeReason, request.reason, "reason")

        async def purge(session: AsyncSession) -> str:
            await lc.purge_subject(session, request.subject_id, reason)
            return request.subject_id

        subject_id = await self._once(request, "PurgeSubject", purge)

        async def report(session: AsyncSession) -> Any:
            state = await session.get(SubjectLifecycle, subject_id)
            if state is None or state.purged_at is None:
                raise NotFound("subject not found")
            return state.purged_at, json.loads(state.purge_report)

        purged_at, data = await self._read(report)
        return pb.PurgeSubjectResponse(
            purged_at=to_timestamp(purged_at),
            purged=counts(data["purged"]),
            retained=[
                lpb.RetainedDataItem(
                    category=item["category"],
                    count=item["count"],
                    legal_basis=enum_out(lpb.RetentionLegalBasis, item["legal_basis"]),
                    retained_until=to_timestamp(datetime.fromisoformat(item["retained_until"]))
                    if item["retained_until"]
                    else None,
                )
                for item in data["retained"]
            ],
            subject_key_destroyed=data["subject_key_destroyed"],
        )

    async def PurgeConnectionLogs(
        self, request: lpb.PurgeConnectionLogsRequest, context: Any
    ) -> lpb.PurgeConnectionLogsResponse:
        require_role(Role.SERVICE, services=WORKERS)
        older_than = when(request.older_than)
        if older_than is None:
            raise InvalidArgument("older_than is required")

        async def purge(session: AsyncSession) -> str:
            return json.dumps(await lc.purge_connection_logs(session, older_than))

        return lpb.PurgeConnectionLogsResponse(
            purged=counts(json.loads(await self._once(request, "PurgeConnectionLogs", purge)))
        )

    async def ExportSubjectData(
        self, request: pb.ExportSubjectDataRequest, context: Any
    ) -> pb.ExportSubjectDataResponse:
        require_role(Role.SERVICE, services=WORKERS)
        if not request.rights_request_id:
            raise InvalidArgument(
                "rights_request_id is required (exports answer an access or portability request)"
            )

        async def export(session: AsyncSession) -> dict[str, Any]:
            record = await lc.get_request(session, request.rights_request_id)
            if record.subject_id != request.subject_id:
                raise InvalidArgument("the rights request is about another subject")
            if record.kind not in {lc.Kind.ACCESS.value, lc.Kind.PORTABILITY.value}:
                raise FailedPrecondition("only access and portability requests are answered with an export")
            return await lc.export_subject(session, self._subject_keys, request.subject_id)

        bundle: dict[str, Any] = await self._read(export)
        return pb.ExportSubjectDataResponse(
            fhir_bundle_json=json.dumps(bundle).encode(),
            resource_count=len(bundle["entry"]),
            generated_at=to_timestamp(datetime.fromisoformat(bundle["timestamp"])),
        )

    async def ReadArchivedSubject(
        self, request: lpb.ReadArchivedSubjectRequest, context: Any
    ) -> lpb.ReadArchivedSubjectResponse:
        principal = require_role(Role.DPO, Role.COORDINATOR)
        if not archive_reader(principal):
            raise PermissionDenied(
                "archives are read by the DPO or staff holding the archive-access habilitation"
            )
        purpose = enum_in(lpb.ArchiveReadPurpose, lc.ArchivePurpose, request.purpose, "purpose")

        async def read(session: AsyncSession) -> tuple[dict[str, Any], Any, str]:
            async with session.begin():
                return await lc.read_archive(
                    session,
                    self._subject_keys,
                    request.subject_id,
                    principal.subject,
                    purpose,
                    request.reference,
                )

        data, archived_at, access_id = await self._read(read)
        return lpb.ReadArchivedSubjectResponse(
            archive_json=json.dumps(data).encode(),
            archived_at=to_timestamp(archived_at),
            access_log_id=access_id,
        )
