"""Typed inputs and outputs of the case workflow, its messages and its activities.

One model per workflow, activity, signal, update and query (the pydantic converter
degrades to dicts when argument counts differ). Nothing here holds a name, an email
address or clinical content: ids, codes, dates and amounts only; payloads are sealed by
the codec anyway (workflows/codec.py).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

# ---------------------------------------------------------------------------------------
# Codes


class DoctorChoiceMode(StrEnum):
    PLATFORM_CHOSEN = "platform_chosen"
    PATIENT_CHOSEN = "patient_chosen"


class CaseStatus(StrEnum):
    """The dossier's case statuses (dossier.v1.CaseStatus), as the workflow reports them."""

    SUBMITTED = "submitted"
    AWAITING_PAYMENT = "awaiting_payment"
    AWAITING_ASSIGNMENT = "awaiting_assignment"
    IN_REVIEW = "in_review"
    AWAITING_INFORMATION = "awaiting_information"
    ESCALATED = "escalated"
    REPORT_DELIVERED = "report_delivered"
    CLOSED = "closed"
    CANCELLED = "cancelled"


class Phase(StrEnum):
    """Where the workflow is; every phase is re-entrant so continue-as-new resumes it."""

    INTAKE = "intake"
    CHECKOUT = "checkout"
    PAYMENT = "payment"
    MATCHING = "matching"
    OFFERS = "offers"
    REVIEW = "review"
    DELIVERY = "delivery"
    DONE = "done"


class Funding(StrEnum):
    NONE = ""
    CARD = "card"
    COVERAGE = "coverage"


class Template(StrEnum):
    """notifications.v1.NotificationTemplate codes the workflow sends."""

    REPORT_AVAILABLE = "report_available"
    EXPECTED_DELAY = "expected_delay"
    PAYMENT_SUMMARY = "payment_summary"
    DOCTOR_DEADLINE_REMINDER = "doctor_deadline_reminder"
    COORDINATOR_ESCALATION = "coordinator_escalation"
    SATISFACTION_SURVEY = "satisfaction_survey"
    NEW_SECURE_MESSAGE = "new_secure_message"
    DOCTOR_NEW_OFFER = "doctor_new_offer"
    CASE_DEADLINE_EXTENDED = "case_deadline_extended"
    CASE_CANCELLED = "case_cancelled"


class RecipientKind(StrEnum):
    ACCOUNT = "account"  # an identity account (patient, filer): email resolved by identity
    DOCTOR = "doctor"  # a matching doctor id: account, then email, resolved by the activity
    COORDINATORS = "coordinators"  # the coordination team mailbox (worker setting)


class CancelReason(StrEnum):
    PATIENT_REQUEST = "patient_request"
    COORDINATOR_DECISION = "coordinator_decision"
    PAYMENT_NOT_RECEIVED = "payment_not_received"
    CHECKOUT_NOT_COMPLETED = "checkout_not_completed"
    NO_DOCTOR_IN_AREA = "no_doctor_in_area"
    CHOSEN_DOCTOR_UNAVAILABLE = "chosen_doctor_unavailable"
    NO_DOCTOR_AVAILABLE = "no_doctor_available"
    WORKFLOW_CANCELLED = "workflow_cancelled"


class Compensation(StrEnum):
    """Compensations, registered before the step they undo (saga). Each one works from
    the case's ids alone, so it is right even when the step's activity timed out after
    its effect (a charge captured, an offer created, an assignment made)."""

    WITHDRAW_OFFERS = "withdraw_offers"
    RELEASE_ASSIGNMENTS = "release_assignments"
    REFUND_PAYMENT = "refund_payment"


# ---------------------------------------------------------------------------------------
# Workflow input, policy, state and result


class CasePolicy(BaseModel):
    """The timing rules of a case, fixed at start (recorded in history, deterministic)."""

    platform_review_days: float = Field(default=7.0, gt=0)  # CASE-10: under 7 days
    offer_response_hours: float = Field(default=24.0, gt=0)
    checkout_window_days: float = Field(default=14.0, gt=0)  # terms, consents, forms, payment
    no_doctor_retry_hours: float = Field(default=12.0, gt=0)
    max_matching_rounds: int = Field(default=6, ge=1)
    # Reminders to the doctor: at these fractions of the review window, and this long
    # before the deadline (CASE-10 deadline kept).
    reminder_fractions: list[float] = [0.5, 0.8]
    reminder_before_deadline_hours: float = Field(default=24.0, ge=0)
    # What the deadline does when nobody reassigns: extension the patient is told about.
    deadline_extension_hours: float = Field(default=48.0, gt=0)
    # The clock pauses while the patient owes the doctor an answer, at most this long per
    # request (a case never stalls for ever on an unanswered request).
    information_pause_cap_days: float = Field(default=14.0, ge=0)
    treating_physician_contact_wait_days: float = Field(default=30.0, ge=0)
    # Start-to-close of every service call; the worker's gRPC deadline is shorter.
    activity_timeout_seconds: float = Field(default=30.0, gt=0)
    # Continue-as-new when Temporal suggests it, or past this many history events (0: only
    # when suggested; tests set a small number to exercise it).
    continue_as_new_after_events: int = Field(default=0, ge=0)


class Slot(BaseModel):
    """One referent doctor's part of the case (several for a collegial opinion, CASE-13)."""

    index: int
    doctor_id: str = ""
    doctor_account_id: str = ""
    assignment_id: str = ""
    review_started_at: datetime | None = None
    deadline_at: datetime | None = None
    window_seconds: float = 0.0
    paused_since: datetime | None = None
    open_requests: list[str] = []
    reminders_sent: list[str] = []
    extensions: int = 0
    escalations: int = 0
    report_pending: str = ""
    report_id: str = ""

    @property
    def filled(self) -> bool:
        return bool(self.assignment_id)

    @property
    def delivered(self) -> bool:
        return bool(self.report_id)


class PendingOffer(BaseModel):
    offer_id: str
    slot: int
    doctor_id: str
    respond_by: datetime


class OfferAnswerRecord(BaseModel):
    accepted: bool
    assignment_id: str = ""
    doctor_account_id: str = ""


class CaseState(BaseModel):
    """Everything the workflow knows; carried whole across continue-as-new."""

    phase: Phase = Phase.INTAKE
    status: CaseStatus = CaseStatus.SUBMITTED
    # From the dossier (ids and codes only).
    filer_account_id: str = ""
    beneficiary_id: str = ""
    purpose: str = "second_opinion"
    requested_doctor_count: int = 1
    chosen_doctor_ids: list[str] = []
    candidate_doctor_count: int = 0
    checkout_deadline_at: datetime | None = None
    # Billing.
    order_id: str = ""
    amount_cents: int = 0
    currency: str = "EUR"
    funding: Funding = Funding.NONE
    card_attempts: int = 0
    coverage_attempts: int = 0
    payment_notifications: int = 0
    payment_notifications_handled: int = 0
    payment_checks: int = 0
    payment_refused: int = 0
    # Matching.
    expected_delivery_at: datetime | None = None
    quoted_deadlines: dict[str, datetime] = {}
    candidates: list[str] = []
    tried_doctor_ids: list[str] = []
    matching_rounds: int = 0
    offer_rounds: int = 0
    pending_offer: PendingOffer | None = None
    offer_answers: dict[str, OfferAnswerRecord] = {}
    slots: list[Slot] = []
    escalated: bool = False
    escalation_count: int = 0
    # Requests for information: request id -> slot index.
    information_requests: dict[str, int] = {}
    answered_requests: list[str] = []
    # Delivery.
    shared_report_ids: list[str] = []
    treating_physician_contact_given: bool = False
    survey_sent: bool = False
    # Saga.
    compensations: list[Compensation] = []
    status_reports: int = 0
    cancel_reason: CancelReason | None = None
    cancel_requested_by: str = ""
    refunded: bool = False
    runs: int = 1


class CaseWorkflowInput(BaseModel):
    case_id: str
    therapeutic_area: str
    doctor_choice_mode: str
    policy: CasePolicy = CasePolicy()
    # Set only by continue-as-new: the state the next run resumes from.
    resume: CaseState | None = None


class CaseWorkflowResult(BaseModel):
    case_id: str
    status: str
    candidate_doctor_count: int
    report_ids: list[str] = []
    doctor_ids: list[str] = []
    refunded: bool = False
    cancel_reason: str = ""


class SlotView(BaseModel):
    doctor_id: str
    deadline_at: datetime | None
    paused: bool
    delivered: bool
    reminders_sent: list[str]
    extensions: int


class CaseView(BaseModel):
    """What the `state` query answers (coordinators, the gateway): no personal data."""

    case_id: str
    phase: Phase
    status: CaseStatus
    therapeutic_area: str
    doctor_choice_mode: str
    funding: Funding
    order_id: str
    escalated: bool
    expected_delivery_at: datetime | None
    deadline_at: datetime | None
    pending_offer_doctor_id: str
    tried_doctor_ids: list[str]
    slots: list[SlotView]
    open_information_requests: list[str]
    cancel_reason: str
    refunded: bool
    candidate_doctor_count: int
    runs: int
    attention: str = ""


# ---------------------------------------------------------------------------------------
# Signals and updates (sent by the gateway, billing's PSP handler, coordinators' tools)


class CheckoutChanged(BaseModel):
    """Terms accepted, a consent given or the forms submitted: the workflow re-checks."""

    what: str = ""


class PaymentNotified(BaseModel):
    """Billing verified a PSP notification; the workflow re-reads the payment status."""

    payment_attempt_id: str = ""


class StartCardPayment(BaseModel):
    locale: str = "fr"


class HostedPaymentForm(BaseModel):
    payment_attempt_id: str
    form_action_url: str
    form_fields: dict[str, str]
    expires_at: datetime | None


class ApplyCoverageCode(BaseModel):
    code: str = Field(min_length=4, max_length=64)


class CoverageApplied(BaseModel):
    order_id: str
    partner_id: str


class OfferAnswered(BaseModel):
    """The doctor answered an offer in matching (AcceptOffer/DeclineOffer succeeded)."""

    offer_id: str
    accepted: bool
    assignment_id: str = ""
    doctor_account_id: str = ""


class InformationRequested(BaseModel):
    """The assigned doctor asked the patient for information or a document (CASE-06);
    the message itself lives in the dossier."""

    request_id: str
    doctor_account_id: str


class InformationProvided(BaseModel):
    request_id: str


class SubmitReport(BaseModel):
    """The assigned doctor submits their sealed-to-be report (the draft is in the dossier).
    `doctor_account_id` comes from the gateway's verified session, never from a form."""

    doctor_account_id: str
    report_id: str


class ReportAccepted(BaseModel):
    report_id: str
    delivered_at: datetime


class CancelCase(BaseModel):
    requested_by: str = Field(pattern=r"^(patient|coordinator)$")
    reason: CancelReason = CancelReason.PATIENT_REQUEST


class CancelAccepted(BaseModel):
    status: CaseStatus
    refund_expected: bool


class ExtendDeadline(BaseModel):
    """A coordinator grants more time to one doctor; the patient is told."""

    doctor_id: str
    new_deadline_at: datetime


class TreatingPhysicianContactGiven(BaseModel):
    pass


# ---------------------------------------------------------------------------------------
# Activities


class LoadCaseInput(BaseModel):
    case_id: str


class CaseFacts(BaseModel):
    filer_account_id: str
    beneficiary_id: str
    therapeutic_area: str
    purpose: str
    doctor_choice_mode: str
    chosen_doctor_ids: list[str]
    requested_doctor_count: int
    forms_complete: bool


class ListCandidatesInput(BaseModel):
    therapeutic_area: str


class ListCandidatesResult(BaseModel):
    doctor_ids: list[str]


class ReportCaseStatusInput(BaseModel):
    case_id: str
    status: str
    idempotency_key: str


class ConsentCheckInput(BaseModel):
    account_id: str
    beneficiary_id: str = ""


class ConsentCheck(BaseModel):
    terms_accepted: bool
    health_data_consent: bool
    notice_accepted: bool
    report_sharing_consented: bool
    report_sharing_opposed: bool

    @property
    def ready(self) -> bool:
        return self.terms_accepted and self.health_data_consent


class CreateOrderInput(BaseModel):
    idempotency_key: str
    case_id: str
    payer_account_id: str
    purpose: str
    therapeutic_area: str
    doctor_count: int


class OrderRef(BaseModel):
    order_id: str
    amount_cents: int
    currency: str
    settled: bool = False
    funding: Funding = Funding.NONE


class ValidateCoverageInput(BaseModel):
    idempotency_key: str
    order_id: str
    code: str


class StartCardPaymentInput(BaseModel):
    idempotency_key: str
    order_id: str
    locale: str


class PaymentStatusInput(BaseModel):
    order_id: str


class PaymentState(BaseModel):
    captured: bool
    refused: bool
    covered: bool = False


class RefundInput(BaseModel):
    idempotency_key: str
    order_id: str


class RefundOutcome(BaseModel):
    refunded: bool
    refund_id: str = ""


class ProposeInput(BaseModel):
    case_id: str
    therapeutic_area: str
    doctor_count: int
    excluded_doctor_ids: list[str]
    target_delay_seconds: float
    as_of: datetime


class ProposalResult(BaseModel):
    doctor_ids: list[str]
    unavailable_reason: str = ""


class QuoteInput(BaseModel):
    therapeutic_area: str
    doctor_ids: list[str]
    as_of: datetime


class DelayQuote(BaseModel):
    expected_delivery_at: datetime
    per_doctor: dict[str, datetime]
    within_target: bool


class CreateOfferInput(BaseModel):
    idempotency_key: str
    case_id: str
    doctor_id: str
    therapeutic_area: str
    respond_by: datetime
    review_deadline_at: datetime


class OfferRef(BaseModel):
    offer_id: str


class ExpireOfferInput(BaseModel):
    idempotency_key: str
    offer_id: str


class OfferOutcome(BaseModel):
    """The offer's final state as matching holds it (an accept can beat the expiry)."""

    status: str  # accepted | declined | expired | withdrawn
    assignment_id: str = ""
    doctor_account_id: str = ""


class CaseOnlyInput(BaseModel):
    idempotency_key_prefix: str
    case_id: str


class RecordAssignmentInput(BaseModel):
    idempotency_key: str
    case_id: str
    assignment_id: str
    doctor_id: str
    doctor_account_id: str


class SetDeadlineInput(BaseModel):
    idempotency_key: str
    case_id: str
    deadline_at: datetime
    reason: str  # review_started | extended | reassigned | information_requested


class ReassignInput(BaseModel):
    idempotency_key: str
    case_id: str
    assignment_id: str
    therapeutic_area: str
    tried_doctor_ids: list[str]
    target_delay_seconds: float
    as_of: datetime


class ReassignOutcome(BaseModel):
    released: bool
    doctor_ids: list[str]
    unavailable_reason: str = ""


class EndAssignmentInput(BaseModel):
    idempotency_key: str
    assignment_id: str
    reason: str  # completed | reassigned | case_cancelled


class DeliverReportInput(BaseModel):
    idempotency_key: str
    case_id: str
    report_id: str
    author_account_id: str


class DeliveredReport(BaseModel):
    report_id: str
    sealed_at: datetime | None


class ShareReportInput(BaseModel):
    idempotency_key: str
    report_id: str


class ShareOutcome(BaseModel):
    shared: bool
    missing_contact: bool = False


class IssueInvoicesInput(BaseModel):
    idempotency_key: str
    order_id: str
    doctor_ids: list[str]


class Recipient(BaseModel):
    kind: RecipientKind
    id: str = ""


class NotifyInput(BaseModel):
    """A templated email; the activity resolves the address, which never enters history."""

    idempotency_key: str
    template: Template
    recipient: Recipient
    case_id: str
    date: datetime | None = None
    amount_cents: int = 0
    currency: str = ""


def case_workflow_id(case_id: str) -> str:
    return f"case-{case_id}"
