"""Thin gRPC layer of the matching service: who may call, message translation, one
transaction per command.

Who may call what (from the verified token only):
* registry changes: administrators and coordinators; registration also the `ops`
  seeding identity;
* the registry and the catalog: anyone signed in (DOC-01);
* absences and turnaround figures: the doctor themselves, staff, the case worker;
* picks and delay quotes: the case worker and staff (quotes also the gateway, patients
  and referring doctors: they choose doctors);
* offers and assignments: the case worker drives them; the referent doctor accepts or
  declines their own offers (token subject = their identity account).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.matching.v1 import matching_pb2 as pb
from secondopinion.matching.v1 import matching_pb2_grpc as pb_grpc
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.matching.domain import lifecycle as subject_lifecycle
from services.matching.domain import offers as offer_rules
from services.matching.domain import picking, reassignment, registry
from services.matching.domain.catalog import load_catalog
from services.matching.domain.delays import TARGET_DELAY, TURNAROUND_WINDOW
from services.matching.models import Absence, Assignment, IdempotencyRecord, Offer, ReferentDoctor
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import Aborted, InvalidArgument, NotFound, PermissionDenied
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

Clock = Callable[[], datetime]
T = TypeVar("T")
log = logging.getLogger(__name__)

STAFF = (Role.ADMINISTRATOR, Role.COORDINATOR)
WORKER = frozenset({"worker"})
# The lifecycle worker (issue 10) and the operators' tools.
LIFECYCLE = frozenset({"worker", "ops"})


# --- conversions -----------------------------------------------------------------------


def _duration(value: timedelta | None) -> Duration | None:
    if value is None:
        return None
    duration = Duration()
    duration.FromTimedelta(value)
    return duration


def _time(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def _time_or(request: Message, field: str, default: datetime) -> datetime:
    return _time(getattr(request, field)) if request.HasField(field) else default


def _required_time(request: Message, field: str) -> datetime:
    if not request.HasField(field):
        raise InvalidArgument(f"{field} is required")
    return _time(getattr(request, field))


def doctor_to_pb(doctor: ReferentDoctor) -> pb.ReferentDoctor:
    median = doctor.median_turnaround_seconds
    return pb.ReferentDoctor(
        doctor_id=doctor.doctor_id,
        account_id=doctor.account_id,
        rpps_number=doctor.rpps_number,
        display_name=doctor.display_name,
        therapeutic_areas=doctor.area_codes,
        languages=doctor.languages,
        max_concurrent_cases=doctor.max_concurrent_cases,
        current_load=doctor.current_load,
        sub_specialties=doctor.sub_specialties,
        active=doctor.active,
        median_turnaround=_duration(timedelta(seconds=median) if median is not None else None),
        created_at=to_timestamp(doctor.created_at),
        updated_at=to_timestamp(doctor.updated_at),
    )


def absence_to_pb(absence: Absence) -> pb.Absence:
    return pb.Absence(
        absence_id=absence.absence_id,
        doctor_id=absence.doctor_id,
        starts_at=to_timestamp(absence.starts_at),
        ends_at=to_timestamp(absence.ends_at),
    )


def offer_to_pb(offer: Offer) -> pb.Offer:
    message = pb.Offer(
        offer_id=offer.offer_id,
        case_id=offer.case_id,
        doctor_id=offer.doctor_id,
        status=to_pb_enum(pb.OfferStatus, offer_rules.OfferStatus(offer.status)),
        created_at=to_timestamp(offer.created_at),
        respond_by=to_timestamp(offer.respond_by),
        review_deadline_at=to_timestamp(offer.review_deadline_at),
        therapeutic_area=offer.therapeutic_area,
    )
    if offer.closed_at is not None:
        message.closed_at.CopyFrom(to_timestamp(offer.closed_at))
    if offer.decline_reason:
        message.decline_reason = to_pb_enum(pb.DeclineReason, offer_rules.DeclineReason(offer.decline_reason))
    return message


def assignment_to_pb(assignment: Assignment, account_id: str) -> pb.Assignment:
    message = pb.Assignment(
        assignment_id=assignment.assignment_id,
        case_id=assignment.case_id,
        doctor_id=assignment.doctor_id,
        doctor_account_id=account_id,
        offer_id=assignment.offer_id,
        started_at=to_timestamp(assignment.started_at),
        deadline_at=to_timestamp(assignment.deadline_at),
    )
    if assignment.released_at is not None:
        message.released_at.CopyFrom(to_timestamp(assignment.released_at))
    if assignment.release_reason:
        message.release_reason = to_pb_enum(
            pb.ReleaseReason, offer_rules.ReleaseReason(assignment.release_reason)
        )
    return message


def candidate_to_pb(candidate: picking.Candidate) -> pb.Candidate:
    return pb.Candidate(
        doctor_id=candidate.doctor_id,
        rank=candidate.rank,
        projected_delivery_at=to_timestamp(candidate.projected_delivery_at),
        current_load=candidate.current_load,
        max_concurrent_cases=candidate.max_concurrent_cases,
        reasons=[to_pb_enum(pb.SelectionReason, reason) for reason in candidate.reasons],
    )


def proposal_to_pb(proposal: picking.Proposal) -> pb.Proposal:
    return pb.Proposal(
        candidates=[candidate_to_pb(c) for c in proposal.candidates],
        alternates=[candidate_to_pb(c) for c in proposal.alternates],
    )


def unavailable_to_pb(outcome: picking.NoDoctorAvailable) -> pb.NoDoctorAvailable:
    message = pb.NoDoctorAvailable(
        reason=to_pb_enum(pb.UnavailabilityReason, outcome.reason),
        considered_count=outcome.considered_count,
    )
    if outcome.earliest_possible_delivery_at is not None:
        message.earliest_possible_delivery_at.CopyFrom(to_timestamp(outcome.earliest_possible_delivery_at))
    return message


class MatchingServicer(pb_grpc.MatchingServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._now = clock

    # --- plumbing ----------------------------------------------------------------------

    async def _once(
        self, request: Message, operation: str, action: Callable[[AsyncSession], Awaitable[str]]
    ) -> str:
        try:
            result_id, replayed = await run_once(
                self._sessions, IdempotencyRecord, request, operation, action
            )
        except OperationalError as exc:
            # SQLite's single writer refused a concurrent write; the caller may retry.
            if "locked" in str(exc.orig):
                raise Aborted("a concurrent request changed the same data; retry") from exc
            raise
        # Ids and codes only: no names, no clinical content.
        log.info(
            "matching change",
            extra={"fields": {"operation": operation, "result_id": result_id, "replayed": replayed}},
        )
        return result_id

    async def _read(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        async with self._sessions() as session:
            return await work(session)

    @staticmethod
    async def _own_doctor_id(session: AsyncSession, principal: Principal) -> str:
        doctor = await registry.doctor_of_account(session, principal.subject)
        return doctor.doctor_id if doctor else ""

    async def _require_doctor_access(
        self, session: AsyncSession, principal: Principal, doctor_id: str
    ) -> None:
        """A referent doctor reaches only their own records; staff and the worker any."""
        if (
            principal.role is Role.REFERENT_DOCTOR
            and await self._own_doctor_id(session, principal) != doctor_id
        ):
            raise NotFound("referent doctor not found")

    @staticmethod
    async def _account_of(session: AsyncSession, doctor_id: str) -> str:
        return (await registry.get_doctor(session, doctor_id)).account_id

    async def _doctor_response(self, doctor_id: str) -> pb.ReferentDoctor:
        async def read(session: AsyncSession) -> pb.ReferentDoctor:
            return doctor_to_pb(await registry.get_doctor(session, doctor_id))

        return await self._read(read)

    # --- registry ----------------------------------------------------------------------

    async def RegisterReferentDoctor(
        self, request: pb.RegisterReferentDoctorRequest, context: Any
    ) -> pb.RegisterReferentDoctorResponse:
        require_role(*STAFF, Role.SERVICE, services=frozenset({"ops"}))
        new = registry.NewReferentDoctor(
            account_id=request.account_id,
            rpps_number=request.rpps_number,
            display_name=request.display_name,
            therapeutic_areas=list(request.therapeutic_areas),
            languages=list(request.languages),
            max_concurrent_cases=request.max_concurrent_cases,
            sub_specialties=list(request.sub_specialties),
        )

        async def create(session: AsyncSession) -> str:
            return (await registry.register_doctor(session, new, self._now())).doctor_id

        doctor_id = await self._once(request, "RegisterReferentDoctor", create)
        return pb.RegisterReferentDoctorResponse(doctor=await self._doctor_response(doctor_id))

    async def UpdateReferentDoctor(
        self, request: pb.UpdateReferentDoctorRequest, context: Any
    ) -> pb.UpdateReferentDoctorResponse:
        require_role(*STAFF)
        changes = registry.DoctorChanges(
            fields=frozenset(request.update_mask.paths),
            display_name=request.doctor.display_name,
            therapeutic_areas=list(request.doctor.therapeutic_areas),
            languages=list(request.doctor.languages),
            max_concurrent_cases=request.doctor.max_concurrent_cases,
            sub_specialties=list(request.doctor.sub_specialties),
        )

        async def change(session: AsyncSession) -> str:
            return (await registry.update_doctor(session, request.doctor_id, changes, self._now())).doctor_id

        doctor_id = await self._once(request, "UpdateReferentDoctor", change)
        return pb.UpdateReferentDoctorResponse(doctor=await self._doctor_response(doctor_id))

    async def SetReferentDoctorActive(
        self, request: pb.SetReferentDoctorActiveRequest, context: Any
    ) -> pb.SetReferentDoctorActiveResponse:
        require_role(*STAFF)

        async def change(session: AsyncSession) -> str:
            doctor = await registry.set_active(session, request.doctor_id, request.active, self._now())
            return doctor.doctor_id

        doctor_id = await self._once(request, "SetReferentDoctorActive", change)
        return pb.SetReferentDoctorActiveResponse(doctor=await self._doctor_response(doctor_id))

    async def GetReferentDoctor(
        self, request: pb.GetReferentDoctorRequest, context: Any
    ) -> pb.GetReferentDoctorResponse:
        require_role(*Role)  # DOC-01: the registry is shown to anyone signed in
        return pb.GetReferentDoctorResponse(doctor=await self._doctor_response(request.doctor_id))

    async def ListReferentDoctors(
        self, request: pb.ListReferentDoctorsRequest, context: Any
    ) -> pb.ListReferentDoctorsResponse:
        # DOC-01: the platform lists its referent doctors to anyone signed in.
        principal = require_role(*Role)
        if request.include_inactive and principal.role not in (*STAFF, Role.SERVICE):
            raise PermissionDenied("only staff may list doctors taken out of matching")

        async def read(session: AsyncSession) -> pb.ListReferentDoctorsResponse:
            doctors, next_token = await registry.list_doctors(
                session,
                request.therapeutic_area,
                request.page_size,
                request.page_token,
                language=request.language,
                include_inactive=request.include_inactive,
            )
            return pb.ListReferentDoctorsResponse(
                doctors=[doctor_to_pb(d) for d in doctors], next_page_token=next_token
            )

        return await self._read(read)

    async def ListTherapeuticAreas(
        self, request: pb.ListTherapeuticAreasRequest, context: Any
    ) -> pb.ListTherapeuticAreasResponse:
        require_role(*Role)
        catalog = load_catalog()
        return pb.ListTherapeuticAreasResponse(
            catalog_version=catalog.version,
            areas=[
                pb.TherapeuticArea(
                    code=area.code,
                    label_fr=area.label_fr,
                    label_en=area.label_en,
                    sub_specialties=[
                        pb.SubSpecialty(code=sub.code, label_fr=sub.label_fr, label_en=sub.label_en)
                        for sub in area.sub_specialties
                    ],
                )
                for area in catalog.areas
            ],
        )

    # --- absences ----------------------------------------------------------------------

    async def RecordAbsence(self, request: pb.RecordAbsenceRequest, context: Any) -> pb.RecordAbsenceResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF)
        starts_at = _required_time(request, "starts_at")
        ends_at = _required_time(request, "ends_at")

        async def record(session: AsyncSession) -> str:
            await self._require_doctor_access(session, principal, request.doctor_id)
            absence = await registry.record_absence(
                session, request.doctor_id, starts_at, ends_at, self._now()
            )
            return absence.absence_id

        absence_id = await self._once(request, "RecordAbsence", record)

        async def read(session: AsyncSession) -> pb.RecordAbsenceResponse:
            absence = await session.get(Absence, absence_id)
            assert absence is not None
            await self._require_doctor_access(session, principal, absence.doctor_id)
            return pb.RecordAbsenceResponse(absence=absence_to_pb(absence))

        return await self._read(read)

    async def CancelAbsence(self, request: pb.CancelAbsenceRequest, context: Any) -> pb.CancelAbsenceResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF)

        async def check(session: AsyncSession) -> None:
            absence = await session.get(Absence, request.absence_id)
            if absence is None:
                raise NotFound("absence not found")
            await self._require_doctor_access(session, principal, absence.doctor_id)

        await self._read(check)

        async def cancel(session: AsyncSession) -> str:
            return (await registry.cancel_absence(session, request.absence_id, self._now())).absence_id

        absence_id = await self._once(request, "CancelAbsence", cancel)

        async def read(session: AsyncSession) -> pb.CancelAbsenceResponse:
            absence = await session.get(Absence, absence_id)
            assert absence is not None
            assert absence.cancelled_at is not None
            return pb.CancelAbsenceResponse(cancelled_at=to_timestamp(absence.cancelled_at))

        return await self._read(read)

    async def ListAbsences(self, request: pb.ListAbsencesRequest, context: Any) -> pb.ListAbsencesResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF, Role.SERVICE, services=WORKER)
        ending_after = _time_or(request, "ending_after", self._now())

        async def read(session: AsyncSession) -> pb.ListAbsencesResponse:
            await self._require_doctor_access(session, principal, request.doctor_id)
            absences = await registry.list_absences(session, request.doctor_id, ending_after)
            return pb.ListAbsencesResponse(absences=[absence_to_pb(a) for a in absences])

        return await self._read(read)

    # --- choosing doctors --------------------------------------------------------------

    async def QuoteExpectedDelay(
        self, request: pb.QuoteExpectedDelayRequest, context: Any
    ) -> pb.QuoteExpectedDelayResponse:
        require_role(
            Role.PATIENT,
            Role.REFERRING_DOCTOR,
            *STAFF,
            Role.SERVICE,
            services=frozenset({"worker", "gateway"}),
        )
        now = _time_or(request, "as_of", self._now())

        async def read(session: AsyncSession) -> pb.QuoteExpectedDelayResponse:
            quote = await picking.quote_expected_delay(
                session, request.therapeutic_area, list(request.doctor_ids), now
            )
            return pb.QuoteExpectedDelayResponse(
                quotes=[
                    pb.DoctorDelayQuote(
                        doctor_id=q.doctor_id,
                        expected_delivery_at=to_timestamp(q.expected_delivery_at),
                        expected_delay=_duration(q.expected_delay),
                    )
                    for q in quote.quotes
                ],
                expected_delivery_at=to_timestamp(quote.expected_delivery_at),
                within_target=quote.within_target,
            )

        return await self._read(read)

    @staticmethod
    def _pick_request(
        case_id: str,
        area: str,
        doctor_count: int,
        excluded: list[str],
        target: Duration | None,
        alternate_count: int,
        sub_specialty: str = "",
        language: str = "",
    ) -> picking.PickRequest:
        if doctor_count < 0:
            raise InvalidArgument("doctor_count must not be negative")
        return picking.PickRequest(
            case_id=case_id,
            therapeutic_area=area,
            doctor_count=doctor_count or 1,
            excluded_doctor_ids=tuple(excluded),
            sub_specialty=sub_specialty,
            language=language,
            target_delay=target.ToTimedelta() if target is not None else TARGET_DELAY,
            alternate_count=alternate_count,
        )

    async def ProposeAssignment(
        self, request: pb.ProposeAssignmentRequest, context: Any
    ) -> pb.ProposeAssignmentResponse:
        require_role(*STAFF, Role.SERVICE, services=WORKER)
        pick = self._pick_request(
            request.case_id,
            request.therapeutic_area,
            request.doctor_count,
            list(request.excluded_doctor_ids),
            request.target_delay if request.HasField("target_delay") else None,
            request.alternate_count,
            request.sub_specialty,
            request.language,
        )
        now = _time_or(request, "as_of", self._now())

        async def read(session: AsyncSession) -> pb.ProposeAssignmentResponse:
            outcome = await picking.propose(session, pick, now)
            if isinstance(outcome, picking.Proposal):
                return pb.ProposeAssignmentResponse(proposal=proposal_to_pb(outcome))
            log.info(
                "no doctor available",
                extra={"fields": {"case_id": pick.case_id, "reason": outcome.reason.value}},
            )
            return pb.ProposeAssignmentResponse(no_doctor_available=unavailable_to_pb(outcome))

        return await self._read(read)

    # --- offers ------------------------------------------------------------------------

    async def _offer_response(self, offer_id: str) -> pb.Offer:
        async def read(session: AsyncSession) -> pb.Offer:
            return offer_to_pb(await offer_rules.get_offer(session, offer_id))

        return await self._read(read)

    async def _check_offer_owner(self, offer_id: str, principal: Principal) -> None:
        async def check(session: AsyncSession) -> None:
            await offer_rules.offer_for_doctor(session, offer_id, principal.subject)

        await self._read(check)

    async def CreateOffer(self, request: pb.CreateOfferRequest, context: Any) -> pb.CreateOfferResponse:
        require_role(Role.SERVICE, services=WORKER)
        new = offer_rules.NewOffer(
            case_id=request.case_id,
            doctor_id=request.doctor_id,
            therapeutic_area=request.therapeutic_area,
            respond_by=_required_time(request, "respond_by"),
            review_deadline_at=_required_time(request, "review_deadline_at"),
            doctors_needed=request.doctors_needed,
        )

        async def create(session: AsyncSession) -> str:
            return (await offer_rules.create_offer(session, new, self._now())).offer_id

        offer_id = await self._once(request, "CreateOffer", create)
        return pb.CreateOfferResponse(offer=await self._offer_response(offer_id))

    async def GetOffer(self, request: pb.GetOfferRequest, context: Any) -> pb.GetOfferResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF, Role.SERVICE, services=WORKER)
        if principal.role is Role.REFERENT_DOCTOR:
            await self._check_offer_owner(request.offer_id, principal)
        return pb.GetOfferResponse(offer=await self._offer_response(request.offer_id))

    async def ListOffers(self, request: pb.ListOffersRequest, context: Any) -> pb.ListOffersResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF, Role.SERVICE, services=WORKER)
        statuses: list[offer_rules.OfferStatus] = []
        for value in request.statuses:
            status = from_pb_enum(pb.OfferStatus, offer_rules.OfferStatus, value)
            if status is None:
                raise InvalidArgument("statuses holds an unspecified or unknown status")
            statuses.append(status)

        async def read(session: AsyncSession) -> pb.ListOffersResponse:
            doctor_id = request.doctor_id
            if principal.role is Role.REFERENT_DOCTOR:
                own = await self._own_doctor_id(session, principal)
                if not own or (doctor_id and doctor_id != own):
                    raise NotFound("referent doctor not found")
                doctor_id = own
            offers, next_token = await offer_rules.list_offers(
                session,
                doctor_id=doctor_id,
                case_id=request.case_id,
                statuses=statuses,
                size_requested=request.page_size,
                page_token=request.page_token,
            )
            return pb.ListOffersResponse(offers=[offer_to_pb(o) for o in offers], next_page_token=next_token)

        return await self._read(read)

    async def AcceptOffer(self, request: pb.AcceptOfferRequest, context: Any) -> pb.AcceptOfferResponse:
        principal = require_role(Role.REFERENT_DOCTOR)
        # Checked before and after the idempotent run: a replayed key never shows another
        # doctor's assignment.
        await self._check_offer_owner(request.offer_id, principal)

        async def accept(session: AsyncSession) -> str:
            _, assignment = await offer_rules.accept_offer(
                session, request.offer_id, principal.subject, self._now()
            )
            return assignment.assignment_id

        assignment_id = await self._once(request, "AcceptOffer", accept)

        async def read(session: AsyncSession) -> pb.AcceptOfferResponse:
            offer = await offer_rules.offer_for_doctor(session, request.offer_id, principal.subject)
            assignment = await offer_rules.get_assignment(session, assignment_id)
            return pb.AcceptOfferResponse(
                offer=offer_to_pb(offer), assignment=assignment_to_pb(assignment, principal.subject)
            )

        return await self._read(read)

    async def DeclineOffer(self, request: pb.DeclineOfferRequest, context: Any) -> pb.DeclineOfferResponse:
        principal = require_role(Role.REFERENT_DOCTOR)
        await self._check_offer_owner(request.offer_id, principal)
        reason = from_pb_enum(pb.DeclineReason, offer_rules.DeclineReason, request.reason)

        async def decline(session: AsyncSession) -> str:
            offer = await offer_rules.decline_offer(
                session, request.offer_id, principal.subject, reason, self._now()
            )
            return offer.offer_id

        offer_id = await self._once(request, "DeclineOffer", decline)
        return pb.DeclineOfferResponse(offer=await self._offer_response(offer_id))

    async def ExpireOffer(self, request: pb.ExpireOfferRequest, context: Any) -> pb.ExpireOfferResponse:
        require_role(Role.SERVICE, services=WORKER)

        async def expire(session: AsyncSession) -> str:
            return (await offer_rules.expire_offer(session, request.offer_id, self._now())).offer_id

        offer_id = await self._once(request, "ExpireOffer", expire)
        return pb.ExpireOfferResponse(offer=await self._offer_response(offer_id))

    async def WithdrawOffer(self, request: pb.WithdrawOfferRequest, context: Any) -> pb.WithdrawOfferResponse:
        require_role(Role.SERVICE, services=WORKER)

        async def withdraw(session: AsyncSession) -> str:
            return (await offer_rules.withdraw_offer(session, request.offer_id, self._now())).offer_id

        offer_id = await self._once(request, "WithdrawOffer", withdraw)
        return pb.WithdrawOfferResponse(offer=await self._offer_response(offer_id))

    # --- assignments -------------------------------------------------------------------

    async def _assignment_response(self, assignment_id: str) -> pb.Assignment:
        async def read(session: AsyncSession) -> pb.Assignment:
            assignment = await offer_rules.get_assignment(session, assignment_id)
            return assignment_to_pb(assignment, await self._account_of(session, assignment.doctor_id))

        return await self._read(read)

    async def ReassignCase(self, request: pb.ReassignCaseRequest, context: Any) -> pb.ReassignCaseResponse:
        require_role(Role.SERVICE, services=WORKER)
        reason = from_pb_enum(pb.ReassignmentReason, reassignment.ReassignmentReason, request.reason)
        if reason is None:
            raise InvalidArgument("reason is required")
        pick = self._pick_request(
            request.case_id,
            request.therapeutic_area,
            request.doctor_count,
            list(request.tried_doctor_ids),
            request.target_delay if request.HasField("target_delay") else None,
            request.alternate_count,
        )
        now = _time_or(request, "as_of", self._now())

        async def reassign(session: AsyncSession) -> str:
            result = await reassignment.reassign_case(session, pick, request.assignment_id, reason, now)
            return result.reassignment_id

        reassignment_id = await self._once(request, "ReassignCase", reassign)

        async def read(session: AsyncSession) -> pb.ReassignCaseResponse:
            result = await reassignment.get_reassignment(session, reassignment_id)
            response = pb.ReassignCaseResponse()
            if result.released is not None:
                response.released_assignment.CopyFrom(
                    assignment_to_pb(
                        result.released, await self._account_of(session, result.released.doctor_id)
                    )
                )
            if isinstance(result.outcome, picking.Proposal):
                response.proposal.CopyFrom(proposal_to_pb(result.outcome))
            else:
                response.no_doctor_available.CopyFrom(unavailable_to_pb(result.outcome))
            return response

        return await self._read(read)

    async def ReleaseAssignment(
        self, request: pb.ReleaseAssignmentRequest, context: Any
    ) -> pb.ReleaseAssignmentResponse:
        require_role(Role.SERVICE, services=WORKER)
        reason = from_pb_enum(pb.ReleaseReason, offer_rules.ReleaseReason, request.reason)
        if reason is None:
            raise InvalidArgument("reason is required")

        async def release(session: AsyncSession) -> str:
            assignment = await offer_rules.release_assignment(
                session, request.assignment_id, reason, self._now()
            )
            return assignment.assignment_id

        assignment_id = await self._once(request, "ReleaseAssignment", release)
        return pb.ReleaseAssignmentResponse(assignment=await self._assignment_response(assignment_id))

    async def ListAssignments(
        self, request: pb.ListAssignmentsRequest, context: Any
    ) -> pb.ListAssignmentsResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF, Role.SERVICE, services=WORKER)

        async def read(session: AsyncSession) -> pb.ListAssignmentsResponse:
            doctor_id = request.doctor_id
            if principal.role is Role.REFERENT_DOCTOR:
                own = await self._own_doctor_id(session, principal)
                if not own or (doctor_id and doctor_id != own):
                    raise NotFound("referent doctor not found")
                doctor_id = own
            assignments, next_token = await offer_rules.list_assignments(
                session,
                doctor_id=doctor_id,
                case_id=request.case_id,
                include_released=request.include_released,
                size_requested=request.page_size,
                page_token=request.page_token,
            )
            accounts: dict[str, str] = {}
            for assignment in assignments:
                if assignment.doctor_id not in accounts:
                    accounts[assignment.doctor_id] = await self._account_of(session, assignment.doctor_id)
            return pb.ListAssignmentsResponse(
                assignments=[assignment_to_pb(a, accounts[a.doctor_id]) for a in assignments],
                next_page_token=next_token,
            )

        return await self._read(read)

    async def GetDoctorTurnaroundStats(
        self, request: pb.GetDoctorTurnaroundStatsRequest, context: Any
    ) -> pb.GetDoctorTurnaroundStatsResponse:
        principal = require_role(Role.REFERENT_DOCTOR, *STAFF, Role.SERVICE, services=WORKER)
        end = _time_or(request, "period_end", self._now())
        start = _time_or(request, "period_start", end - TURNAROUND_WINDOW)

        async def read(session: AsyncSession) -> pb.GetDoctorTurnaroundStatsResponse:
            await self._require_doctor_access(session, principal, request.doctor_id)
            stats = await offer_rules.turnaround_stats(session, request.doctor_id, start, end)
            return pb.GetDoctorTurnaroundStatsResponse(
                doctor_id=stats.doctor_id,
                completed_count=stats.completed_count,
                median_turnaround=_duration(stats.median_turnaround),
                p90_turnaround=_duration(stats.p90_turnaround),
                on_time_count=stats.on_time_count,
                declined_offer_count=stats.declined_offer_count,
                expired_offer_count=stats.expired_offer_count,
                reassigned_count=stats.reassigned_count,
            )

        return await self._read(read)

    # --- data lifecycle (issue 10) ------------------------------------------------------

    async def ExportSubjectData(
        self, request: pb.ExportSubjectDataRequest, context: Any
    ) -> pb.ExportSubjectDataResponse:
        # The export goes from the lifecycle worker into the person's archive.
        require_role(Role.SERVICE, services=LIFECYCLE)
        subject_id = subject_lifecycle.check_subject(request.subject_id)
        if not request.rights_request_id:
            raise InvalidArgument("rights_request_id is required (an export answers an access request)")
        at = self._now()

        async def read(session: AsyncSession) -> dict[str, Any]:
            return await subject_lifecycle.export_subject(session, subject_id, request.case_ids, at)

        bundle = await self._read(read)
        log.info(
            "subject exported",
            extra={"fields": {"subject_id": subject_id, "rights_request_id": request.rights_request_id}},
        )
        return pb.ExportSubjectDataResponse(
            fhir_bundle_json=json.dumps(bundle, ensure_ascii=False).encode(),
            resource_count=len(bundle.get("entry", [])),
            generated_at=to_timestamp(at),
        )

    async def ArchiveSubject(
        self, request: pb.ArchiveSubjectRequest, context: Any
    ) -> pb.ArchiveSubjectResponse:
        require_role(Role.DPO, Role.SERVICE, services=LIFECYCLE)
        subject_id = subject_lifecycle.check_subject(request.subject_id)

        async def archive(session: AsyncSession) -> str:
            counts = await subject_lifecycle.archive_subject(session, subject_id, request.case_ids)
            return await subject_lifecycle.record_operation(
                session, "archive", subject_id, counts, self._now()
            )

        result = await self._read(
            subject_lifecycle.outcome_reader(await self._once(request, "ArchiveSubject", archive))
        )
        return pb.ArchiveSubjectResponse(
            archived_at=to_timestamp(datetime.fromisoformat(result["at"])),
            archived=_item_counts(result["counts"]),
        )

    async def PurgeSubject(self, request: pb.PurgeSubjectRequest, context: Any) -> pb.PurgeSubjectResponse:
        require_role(Role.DPO, Role.SERVICE, services=LIFECYCLE)
        subject_id = subject_lifecycle.check_subject(request.subject_id)

        async def purge(session: AsyncSession) -> str:
            counts = await subject_lifecycle.purge_subject(session, subject_id, request.case_ids)
            return await subject_lifecycle.record_operation(session, "purge", subject_id, counts, self._now())

        result = await self._read(
            subject_lifecycle.outcome_reader(await self._once(request, "PurgeSubject", purge))
        )
        return pb.PurgeSubjectResponse(
            purged_at=to_timestamp(datetime.fromisoformat(result["at"])),
            purged=_item_counts(result["counts"]),
        )


def _item_counts(counts: dict[str, int]) -> list[pb.DataItemCount]:
    return [pb.DataItemCount(category=name, count=int(count)) for name, count in sorted(counts.items())]
