"""Activities of the case workflow: calls to the services over gRPC.

Each call carries the worker's service identity (minted per process, short-lived), a
gRPC deadline shorter than the activity's start-to-close timeout, and, when it changes
something, an idempotency key derived from the workflow id and the step, so a retry
never charges, emails or assigns twice. Service refusals (INVALID_ARGUMENT,
FAILED_PRECONDITION, NOT_FOUND...) become non-retryable ApplicationErrors; outages
(UNAVAILABLE, DEADLINE_EXCEEDED) retry.

Email addresses are resolved here, at the last moment, and never returned: they never
enter Temporal's history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.duration_pb2 import Duration
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from temporalio import activity
from temporalio.exceptions import ApplicationError

from services.shared.protoconv import code_to_pb_enum, pb_enum_to_code, to_timestamp
from workflows.case.models import (
    CaseFacts,
    CaseOnlyInput,
    ConsentCheck,
    ConsentCheckInput,
    CoverageApplied,
    CreateOfferInput,
    CreateOrderInput,
    DelayQuote,
    DeliveredReport,
    DeliverReportInput,
    EndAssignmentInput,
    ExpireOfferInput,
    Funding,
    HostedPaymentForm,
    IssueInvoicesInput,
    ListCandidatesInput,
    ListCandidatesResult,
    LoadCaseInput,
    NotifyInput,
    OfferOutcome,
    OfferRef,
    OrderRef,
    PaymentState,
    PaymentStatusInput,
    ProposalResult,
    ProposeInput,
    QuoteInput,
    ReassignInput,
    ReassignOutcome,
    RecipientKind,
    RecordAssignmentInput,
    RefundInput,
    RefundOutcome,
    ReportCaseStatusInput,
    SetDeadlineInput,
    ShareOutcome,
    ShareReportInput,
    StartCardPaymentInput,
    Template,
    ValidateCoverageInput,
)
from workflows.grpc_errors import as_activity_error

T = TypeVar("T")
# Templates that show an amount (notifications refuses them without a currency).
AMOUNT_TEMPLATES = frozenset({Template.CASE_CANCELLED, Template.PAYMENT_SUMMARY})


def _when(stamp: Any) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def _duration(seconds: float) -> Duration:
    duration = Duration()
    duration.FromTimedelta(timedelta(seconds=seconds))
    return duration


class CaseActivities:
    """Holds the long-lived channels to the services; one instance per worker."""

    def __init__(
        self,
        *,
        identity: grpc.aio.Channel,
        dossier: grpc.aio.Channel,
        matching: grpc.aio.Channel,
        billing: grpc.aio.Channel,
        notifications: grpc.aio.Channel,
        call_timeout: float,
        coordinator_email: str,
        portal_base_url: str,
    ) -> None:
        self._identity = identity_pb2_grpc.IdentityServiceStub(identity)
        self._dossier = dossier_pb2_grpc.DossierServiceStub(dossier)
        self._matching = matching_pb2_grpc.MatchingServiceStub(matching)
        self._billing = billing_pb2_grpc.BillingServiceStub(billing)
        self._notifications = notifications_pb2_grpc.NotificationsServiceStub(notifications)
        self._timeout = call_timeout
        self._coordinator_email = coordinator_email
        self._portal = portal_base_url.rstrip("/")

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
        """Every activity, for the worker's registration."""
        return [
            self.load_case,
            self.list_candidate_doctors,
            self.report_case_status,
            self.check_consents,
            self.create_order,
            self.validate_coverage_code,
            self.start_card_payment,
            self.get_payment_status,
            self.refund_if_captured,
            self.propose_assignment,
            self.quote_expected_delay,
            self.create_offer,
            self.expire_offer,
            self.withdraw_open_offers,
            self.record_assignment,
            self.set_case_deadline,
            self.reassign_case,
            self.release_assignment,
            self.end_case_assignment,
            self.release_case_assignments,
            self.deliver_report,
            self.share_report_with_treating_physician,
            self.issue_invoices,
            self.notify,
        ]

    async def _call(self, rpc: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await rpc(request, timeout=self._timeout)
        except grpc.aio.AioRpcError as error:
            raise as_activity_error(error) from error

    # -- dossier -------------------------------------------------------------------------

    @activity.defn
    async def load_case(self, data: LoadCaseInput) -> CaseFacts:
        """The case's ids and codes; the forms are complete when both (the pre-form and the
        area's pathology form) have a submitted version: the dossier creates cases in status
        submitted, so the status alone says nothing about the forms."""
        case = (
            await self._call(self._dossier.GetCase, dossier_pb2.GetCaseRequest(case_id=data.case_id))
        ).case
        forms_complete = True
        for kind in (dossier_pb2.FORM_KIND_PRE_FORM, dossier_pb2.FORM_KIND_PATHOLOGY):
            versions = await self._call(
                self._dossier.ListFormVersions,
                dossier_pb2.ListFormVersionsRequest(case_id=data.case_id, kind=kind),
            )
            if not any(v.status == dossier_pb2.FORM_ANSWERS_STATUS_SUBMITTED for v in versions.versions):
                forms_complete = False
        return CaseFacts(
            filer_account_id=case.filer_account_id,
            beneficiary_id=case.beneficiary_id,
            therapeutic_area=case.therapeutic_area,
            purpose=pb_enum_to_code(dossier_pb2.CasePurpose, case.purpose),
            doctor_choice_mode=pb_enum_to_code(dossier_pb2.DoctorChoiceMode, case.doctor_choice_mode),
            chosen_doctor_ids=list(case.chosen_doctor_ids),
            requested_doctor_count=max(1, case.requested_doctor_count),
            forms_complete=forms_complete,
        )

    @activity.defn
    async def report_case_status(self, data: ReportCaseStatusInput) -> None:
        await self._call(
            self._dossier.UpdateCaseStatus,
            dossier_pb2.UpdateCaseStatusRequest(
                idempotency_key=data.idempotency_key,
                case_id=data.case_id,
                status=code_to_pb_enum(dossier_pb2.CaseStatus, data.status),
            ),
        )

    @activity.defn
    async def record_assignment(self, data: RecordAssignmentInput) -> None:
        await self._call(
            self._dossier.RecordAssignment,
            dossier_pb2.RecordAssignmentRequest(
                idempotency_key=data.idempotency_key,
                case_id=data.case_id,
                assignment_id=data.assignment_id,
                doctor_id=data.doctor_id,
                doctor_account_id=data.doctor_account_id,
            ),
        )

    @activity.defn
    async def set_case_deadline(self, data: SetDeadlineInput) -> None:
        await self._call(
            self._dossier.SetCaseDeadline,
            dossier_pb2.SetCaseDeadlineRequest(
                idempotency_key=data.idempotency_key,
                case_id=data.case_id,
                deadline_at=to_timestamp(data.deadline_at),
                reason=code_to_pb_enum(dossier_pb2.DeadlineChangeReason, data.reason),
            ),
        )

    @activity.defn
    async def end_case_assignment(self, data: EndAssignmentInput) -> None:
        """The doctor's access to the dossier ends (DOC-02)."""
        await self._call(
            self._dossier.EndAssignment,
            dossier_pb2.EndAssignmentRequest(
                idempotency_key=data.idempotency_key,
                assignment_id=data.assignment_id,
                reason=code_to_pb_enum(dossier_pb2.AssignmentEndReason, data.reason),
            ),
        )

    @activity.defn
    async def deliver_report(self, data: DeliverReportInput) -> DeliveredReport:
        """Seals the draft, after checking (metadata only) that it is this case's draft by
        this doctor: the dossier is the owner of the rule, this is a second lock."""
        reports = await self._call(
            self._dossier.ListCaseReports, dossier_pb2.ListCaseReportsRequest(case_id=data.case_id)
        )
        match = next((r for r in reports.reports if r.report_id == data.report_id), None)
        if match is None or match.author_account_id != data.author_account_id:
            raise ApplicationError(
                "the report is not a draft of this case by the assigned doctor",
                type="ReportRefused",
                non_retryable=True,
            )
        delivered = await self._call(
            self._dossier.DeliverReport,
            dossier_pb2.DeliverReportRequest(idempotency_key=data.idempotency_key, report_id=data.report_id),
        )
        return DeliveredReport(
            report_id=delivered.report.report_id, sealed_at=_when(delivered.report.sealed_at)
        )

    @activity.defn
    async def share_report_with_treating_physician(self, data: ShareReportInput) -> ShareOutcome:
        try:
            await self._dossier.ShareReportWithTreatingPhysician(
                dossier_pb2.ShareReportWithTreatingPhysicianRequest(
                    idempotency_key=data.idempotency_key, report_id=data.report_id
                ),
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # No treating physician's contact yet (it may come when the report arrives).
                return ShareOutcome(shared=False, missing_contact=True)
            raise as_activity_error(error) from error
        return ShareOutcome(shared=True)

    # -- identity ------------------------------------------------------------------------

    @activity.defn
    async def check_consents(self, data: ConsentCheckInput) -> ConsentCheck:
        """Latest terms accepted (CNS-01) and the consents and objections in force."""
        terms = await self._call(
            self._identity.CheckLatestTermsAccepted,
            identity_pb2.CheckLatestTermsAcceptedRequest(account_id=data.account_id),
        )
        status = await self._call(
            self._identity.GetConsentStatus,
            identity_pb2.GetConsentStatusRequest(
                account_id=data.account_id, beneficiary_id=data.beneficiary_id
            ),
        )
        given = set(status.given_consents)
        objections = set(status.objections)
        return ConsentCheck(
            terms_accepted=terms.accepted,
            health_data_consent=identity_pb2.CONSENT_KIND_HEALTH_DATA_PROCESSING in given,
            notice_accepted=status.notice_accepted,
            report_sharing_consented=identity_pb2.CONSENT_KIND_REPORT_TO_TREATING_PHYSICIAN in given,
            report_sharing_opposed=identity_pb2.OBJECTION_KIND_SHARING_WITH_TREATING_PHYSICIAN in objections,
        )

    # -- billing -------------------------------------------------------------------------

    @activity.defn
    async def create_order(self, data: CreateOrderInput) -> OrderRef:
        order = (
            await self._call(
                self._billing.CreateOrder,
                billing_pb2.CreateOrderRequest(
                    idempotency_key=data.idempotency_key,
                    case_id=data.case_id,
                    payer_account_id=data.payer_account_id,
                    purpose=code_to_pb_enum(billing_pb2.CasePurpose, data.purpose),
                    therapeutic_area=data.therapeutic_area,
                    doctor_count=data.doctor_count,
                ),
            )
        ).order
        return _order_ref(order)

    @activity.defn
    async def validate_coverage_code(self, data: ValidateCoverageInput) -> CoverageApplied:
        order = (
            await self._call(
                self._billing.ValidateCoverageCode,
                billing_pb2.ValidateCoverageCodeRequest(
                    idempotency_key=data.idempotency_key, order_id=data.order_id, code=data.code
                ),
            )
        ).order
        if order.status != billing_pb2.ORDER_STATUS_COVERED:
            raise ApplicationError("the order is not covered", type="CoverageRefused", non_retryable=True)
        return CoverageApplied(order_id=order.order_id, partner_id=order.partner_id)

    @activity.defn
    async def start_card_payment(self, data: StartCardPaymentInput) -> HostedPaymentForm:
        response = await self._call(
            self._billing.StartCardPayment,
            billing_pb2.StartCardPaymentRequest(
                idempotency_key=data.idempotency_key, order_id=data.order_id, locale=data.locale
            ),
        )
        return HostedPaymentForm(
            payment_attempt_id=response.payment_attempt_id,
            form_action_url=response.form_action_url,
            form_fields={field.name: field.value for field in response.form_fields},
            expires_at=_when(response.expires_at),
        )

    @activity.defn
    async def get_payment_status(self, data: PaymentStatusInput) -> PaymentState:
        try:
            response = await self._billing.GetPaymentStatus(
                billing_pb2.GetPaymentStatusRequest(order_id=data.order_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return PaymentState(captured=False, refused=False)
            raise as_activity_error(error) from error
        attempt = response.payment_attempt.status
        return PaymentState(
            captured=response.order_status == billing_pb2.ORDER_STATUS_PAID
            or attempt == billing_pb2.PAYMENT_STATUS_CAPTURED,
            refused=attempt in (billing_pb2.PAYMENT_STATUS_REFUSED, billing_pb2.PAYMENT_STATUS_ABANDONED),
            covered=response.order_status == billing_pb2.ORDER_STATUS_COVERED,
        )

    @activity.defn
    async def refund_if_captured(self, data: RefundInput) -> RefundOutcome:
        """Compensation: refunds in full what was captured on the order, if anything was.
        Reads billing first, so a charge whose notification never reached the workflow is
        refunded too; the idempotency key makes a retry return the same refund."""
        try:
            status = await self._billing.GetPaymentStatus(
                billing_pb2.GetPaymentStatusRequest(order_id=data.order_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise as_activity_error(error) from error
            # No card payment: a partner-covered order is cancelled so it is never invoiced.
            await self._cancel_if_covered(data)
            return RefundOutcome(refunded=False)
        if status.order_status in (billing_pb2.ORDER_STATUS_REFUNDED,):
            return RefundOutcome(refunded=True)
        if status.order_status != billing_pb2.ORDER_STATUS_PAID:
            return RefundOutcome(refunded=False)
        refund = await self._call(
            self._billing.RefundPayment,
            billing_pb2.RefundPaymentRequest(
                idempotency_key=data.idempotency_key,
                order_id=data.order_id,
                amount_cents=status.payment_attempt.amount_cents,
                currency=status.payment_attempt.currency,
                reason=billing_pb2.REFUND_REASON_CASE_CANCELLED_BEFORE_DELIVERY,
            ),
        )
        if refund.refund.status != billing_pb2.REFUND_STATUS_COMPLETED:
            raise ApplicationError("the refund did not complete", type="RefundNotCompleted")
        return RefundOutcome(refunded=True, refund_id=refund.refund.refund_id)

    async def _cancel_if_covered(self, data: RefundInput) -> None:
        order = await self._call(self._billing.GetOrder, billing_pb2.GetOrderRequest(order_id=data.order_id))
        if order.order.status != billing_pb2.ORDER_STATUS_COVERED:
            return
        await self._call(
            self._billing.RefundPayment,
            billing_pb2.RefundPaymentRequest(
                idempotency_key=data.idempotency_key,
                order_id=data.order_id,
                amount_cents=0,
                currency=order.order.currency,
                reason=billing_pb2.REFUND_REASON_CASE_CANCELLED_BEFORE_DELIVERY,
            ),
        )

    @activity.defn
    async def issue_invoices(self, data: IssueInvoicesInput) -> None:
        await self._call(
            self._billing.IssueInvoices,
            billing_pb2.IssueInvoicesRequest(
                idempotency_key=data.idempotency_key, order_id=data.order_id, doctor_ids=data.doctor_ids
            ),
        )

    # -- matching ------------------------------------------------------------------------

    @activity.defn
    async def list_candidate_doctors(self, data: ListCandidatesInput) -> ListCandidatesResult:
        doctor_ids: list[str] = []
        page_token = ""
        while True:
            response = await self._call(
                self._matching.ListReferentDoctors,
                matching_pb2.ListReferentDoctorsRequest(
                    therapeutic_area=data.therapeutic_area, page_size=100, page_token=page_token
                ),
            )
            doctor_ids += [doctor.doctor_id for doctor in response.doctors]
            page_token = response.next_page_token
            if not page_token:
                return ListCandidatesResult(doctor_ids=doctor_ids)

    @activity.defn
    async def propose_assignment(self, data: ProposeInput) -> ProposalResult:
        response = await self._call(
            self._matching.ProposeAssignment,
            matching_pb2.ProposeAssignmentRequest(
                case_id=data.case_id,
                therapeutic_area=data.therapeutic_area,
                doctor_count=data.doctor_count,
                excluded_doctor_ids=data.excluded_doctor_ids,
                target_delay=_duration(data.target_delay_seconds),
                as_of=to_timestamp(data.as_of),
                alternate_count=3,
            ),
        )
        if response.HasField("no_doctor_available"):
            return ProposalResult(
                doctor_ids=[],
                unavailable_reason=pb_enum_to_code(
                    matching_pb2.UnavailabilityReason, response.no_doctor_available.reason
                ),
            )
        proposal = response.proposal
        return ProposalResult(doctor_ids=[c.doctor_id for c in [*proposal.candidates, *proposal.alternates]])

    @activity.defn
    async def quote_expected_delay(self, data: QuoteInput) -> DelayQuote:
        response = await self._call(
            self._matching.QuoteExpectedDelay,
            matching_pb2.QuoteExpectedDelayRequest(
                therapeutic_area=data.therapeutic_area,
                doctor_ids=data.doctor_ids,
                as_of=to_timestamp(data.as_of),
            ),
        )
        expected = _when(response.expected_delivery_at)
        if expected is None:
            raise ApplicationError(
                "matching quoted no delivery date", type="QuoteMissing", non_retryable=True
            )
        return DelayQuote(
            expected_delivery_at=expected,
            per_doctor={q.doctor_id: _when(q.expected_delivery_at) or expected for q in response.quotes},
            within_target=response.within_target,
        )

    @activity.defn
    async def create_offer(self, data: CreateOfferInput) -> OfferRef:
        offer = (
            await self._call(
                self._matching.CreateOffer,
                matching_pb2.CreateOfferRequest(
                    idempotency_key=data.idempotency_key,
                    case_id=data.case_id,
                    doctor_id=data.doctor_id,
                    therapeutic_area=data.therapeutic_area,
                    respond_by=to_timestamp(data.respond_by),
                    review_deadline_at=to_timestamp(data.review_deadline_at),
                ),
            )
        ).offer
        return OfferRef(offer_id=offer.offer_id)

    @activity.defn
    async def expire_offer(self, data: ExpireOfferInput) -> OfferOutcome:
        """Marks an unanswered offer expired; when the doctor's answer beat the expiry,
        returns that answer instead (the workflow then follows what really happened)."""
        try:
            offer = (
                await self._matching.ExpireOffer(
                    matching_pb2.ExpireOfferRequest(
                        idempotency_key=data.idempotency_key, offer_id=data.offer_id
                    ),
                    timeout=self._timeout,
                )
            ).offer
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise as_activity_error(error) from error
            offer = (
                await self._call(
                    self._matching.GetOffer, matching_pb2.GetOfferRequest(offer_id=data.offer_id)
                )
            ).offer
        status = pb_enum_to_code(matching_pb2.OfferStatus, offer.status)
        if offer.status != matching_pb2.OFFER_STATUS_ACCEPTED:
            return OfferOutcome(status=status)
        assignments = await self._call(
            self._matching.ListAssignments,
            matching_pb2.ListAssignmentsRequest(case_id=offer.case_id, page_size=100),
        )
        assignment = next((a for a in assignments.assignments if a.offer_id == offer.offer_id), None)
        if assignment is None:
            raise ApplicationError("accepted offer without assignment", type="OfferInconsistent")
        return OfferOutcome(
            status=status,
            assignment_id=assignment.assignment_id,
            doctor_account_id=assignment.doctor_account_id,
        )

    @activity.defn
    async def withdraw_open_offers(self, data: CaseOnlyInput) -> int:
        """Compensation: withdraws every pending offer of the case (found by case, so an
        offer whose creation timed out after it was made is withdrawn too)."""
        response = await self._call(
            self._matching.ListOffers,
            matching_pb2.ListOffersRequest(
                case_id=data.case_id, statuses=[matching_pb2.OFFER_STATUS_PENDING], page_size=100
            ),
        )
        withdrawn = 0
        for offer in response.offers:
            await self._call(
                self._matching.WithdrawOffer,
                matching_pb2.WithdrawOfferRequest(
                    idempotency_key=f"{data.idempotency_key_prefix}:{offer.offer_id}", offer_id=offer.offer_id
                ),
            )
            withdrawn += 1
        return withdrawn

    @activity.defn
    async def reassign_case(self, data: ReassignInput) -> ReassignOutcome:
        response = await self._call(
            self._matching.ReassignCase,
            matching_pb2.ReassignCaseRequest(
                idempotency_key=data.idempotency_key,
                case_id=data.case_id,
                assignment_id=data.assignment_id,
                reason=matching_pb2.REASSIGNMENT_REASON_DEADLINE_AT_RISK,
                therapeutic_area=data.therapeutic_area,
                doctor_count=1,
                tried_doctor_ids=data.tried_doctor_ids,
                target_delay=_duration(data.target_delay_seconds),
                as_of=to_timestamp(data.as_of),
            ),
        )
        released = response.HasField("released_assignment")
        if response.HasField("no_doctor_available"):
            return ReassignOutcome(
                released=released,
                doctor_ids=[],
                unavailable_reason=pb_enum_to_code(
                    matching_pb2.UnavailabilityReason, response.no_doctor_available.reason
                ),
            )
        proposal = response.proposal
        return ReassignOutcome(
            released=released, doctor_ids=[c.doctor_id for c in [*proposal.candidates, *proposal.alternates]]
        )

    @activity.defn
    async def release_assignment(self, data: EndAssignmentInput) -> None:
        """Frees the doctor's capacity in matching (completed: records the turnaround)."""
        await self._call(
            self._matching.ReleaseAssignment,
            matching_pb2.ReleaseAssignmentRequest(
                idempotency_key=data.idempotency_key,
                assignment_id=data.assignment_id,
                reason=code_to_pb_enum(
                    matching_pb2.ReleaseReason,
                    "cancelled" if data.reason == "case_cancelled" else data.reason,
                ),
            ),
        )

    @activity.defn
    async def release_case_assignments(self, data: CaseOnlyInput) -> int:
        """Compensation: releases every open assignment of the case in matching and ends
        the doctors' access in the dossier (found by case, like the offers)."""
        response = await self._call(
            self._matching.ListAssignments,
            matching_pb2.ListAssignmentsRequest(case_id=data.case_id, page_size=100),
        )
        released = 0
        for assignment in response.assignments:
            if assignment.HasField("released_at"):
                continue
            await self._call(
                self._matching.ReleaseAssignment,
                matching_pb2.ReleaseAssignmentRequest(
                    idempotency_key=f"{data.idempotency_key_prefix}:release:{assignment.assignment_id}",
                    assignment_id=assignment.assignment_id,
                    reason=matching_pb2.RELEASE_REASON_CANCELLED,
                ),
            )
            released += 1
        in_dossier = await self._call(
            self._dossier.ListCaseAssignments, dossier_pb2.ListCaseAssignmentsRequest(case_id=data.case_id)
        )
        for access in in_dossier.assignments:
            if access.HasField("ended_at"):
                continue
            await self._call(
                self._dossier.EndAssignment,
                dossier_pb2.EndAssignmentRequest(
                    idempotency_key=f"{data.idempotency_key_prefix}:end:{access.assignment_id}",
                    assignment_id=access.assignment_id,
                    reason=dossier_pb2.ASSIGNMENT_END_REASON_CASE_CANCELLED,
                ),
            )
        return released

    # -- notifications -------------------------------------------------------------------

    async def _recipient_email(self, data: NotifyInput) -> tuple[str, str]:
        recipient = data.recipient
        if recipient.kind is RecipientKind.COORDINATORS:
            return self._coordinator_email, "fr"
        account_id = recipient.id
        if recipient.kind is RecipientKind.DOCTOR:
            doctor = await self._call(
                self._matching.GetReferentDoctor,
                matching_pb2.GetReferentDoctorRequest(doctor_id=recipient.id),
            )
            account_id = doctor.doctor.account_id
        account = (
            await self._call(self._identity.GetAccount, identity_pb2.GetAccountRequest(account_id=account_id))
        ).account
        return account.email, account.locale or "fr"

    def _link(self, data: NotifyInput) -> str:
        """The gateway page the message is about (tests/gateway/test_email_links.py checks
        every such path is served)."""
        if data.recipient.kind is RecipientKind.COORDINATORS:
            return f"{self._portal}/coordination/cases/{data.case_id}"
        if data.recipient.kind is RecipientKind.DOCTOR:
            if data.template is Template.DOCTOR_NEW_OFFER:
                # Not assigned yet: the case opens only once the offer is accepted.
                return f"{self._portal}/doctor"
            return f"{self._portal}/doctor/cases/{data.case_id}"
        return f"{self._portal}/cases/{data.case_id}"

    async def _implied_date(self, data: NotifyInput) -> datetime | None:
        """The date a template shows when the workflow gave none: the offer's answer-by
        date as matching holds it (doctor_new_offer; a doctor is offered a case once, and
        the offer may already be answered when a retried email goes out), the moment of
        the payment summary."""
        if data.template is Template.DOCTOR_NEW_OFFER and data.recipient.kind is RecipientKind.DOCTOR:
            offers = await self._call(
                self._matching.ListOffers,
                matching_pb2.ListOffersRequest(
                    case_id=data.case_id, doctor_id=data.recipient.id, page_size=1
                ),
            )
            return next((_when(o.respond_by) for o in offers.offers if o.HasField("respond_by")), None)
        if data.template is Template.PAYMENT_SUMMARY:
            return datetime.now(UTC)
        return None

    @activity.defn
    async def notify(self, data: NotifyInput) -> str:
        """Sends one templated email (ids, a link and a date at most: no health data)."""
        email, locale = await self._recipient_email(data)
        variables = notifications_pb2.TemplateVariables(link=self._link(data))
        date = data.date or await self._implied_date(data)
        if date is not None:
            variables.date.CopyFrom(to_timestamp(date))
        if data.amount_cents or data.template in AMOUNT_TEMPLATES:
            # A template that shows an amount needs its currency even for zero (a
            # cancellation with nothing to refund says 0,00 €).
            variables.amount_cents = data.amount_cents
            variables.currency = data.currency or "EUR"
        response = await self._call(
            self._notifications.SendNotification,
            notifications_pb2.SendNotificationRequest(
                idempotency_key=data.idempotency_key,
                template=code_to_pb_enum(notifications_pb2.NotificationTemplate, data.template.value),
                channel=notifications_pb2.CHANNEL_EMAIL,
                email=email,
                locale=locale,
                variables=variables,
            ),
        )
        return response.notification_id


def _order_ref(order: billing_pb2.Order) -> OrderRef:
    funding = Funding.NONE
    if order.status == billing_pb2.ORDER_STATUS_PAID:
        funding = Funding.CARD
    elif order.status == billing_pb2.ORDER_STATUS_COVERED:
        funding = Funding.COVERAGE
    return OrderRef(
        order_id=order.order_id,
        amount_cents=order.total_amount_cents,
        currency=order.currency or "EUR",
        settled=funding is not Funding.NONE,
        funding=funding,
    )
