"""The case workflow: one per opinion request (`case-{case_id}`), from submission to the
delivered opinion.

    intake    load the case, check someone covers the area, status awaiting_payment
    checkout  latest terms accepted and consents present (CNS-01), forms complete;
              the order is created
    payment   card payment captured (billing's PSP handler signals) or coverage code
              validated (update); nothing else starts before (CASE-11)
    matching  platform-chosen: matching proposes doctors; patient-chosen: the delay is
              quoted and emailed (CASE-10, NOT-02)
    offers    one offer at a time with a response timeout; decline or silence -> next
              candidate; several doctors for a collegial opinion (CASE-13)
    review    durable deadline per doctor (7 days, or the announced delay), reminders at
              half time, 80 % and 24 h before; at the deadline an escalation: coordinator
              task + Escalated, reassignment through matching, or an extension the patient
              is told about; requests for information pause the clock (below)
    delivery  reports arrive through the `submit_report` update (validated: only the
              assigned doctor, once, while open); the patient is emailed (CASE-09); the
              report goes to the treating physician when consented and not opposed
              (CASE-16, CNS-08); invoices; satisfaction survey (CASE-15); closed.

Requests for information (CASE-06) — the clock rule: while the patient owes the doctor
an answer, that doctor's clock is paused (no deadline, no reminders); when the last
open request is answered the deadline moves by the time paused, at most
`information_pause_cap_days` per pause (after the cap the clock runs again, so a case
never stalls for ever). The dossier records every moved deadline (SetCaseDeadline,
reason information_requested) and the case shows status awaiting_information meanwhile.

Cancellation (the `cancel_case` update, or cancelling the workflow) at any step before a
report is delivered runs the compensations registered before each step, newest first:
pending offers withdrawn, assignments released, the payment refunded (billing is asked
what was captured, so a charge whose notification never came is refunded too); then the
patient is told. A step that fails for a reason no retry can fix parks the case for a
coordinator (Escalated set, coordinators emailed) instead of failing it.

Deterministic code only: no I/O, no clocks but workflow.now(), ids from the workflow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import search_attributes as sa
    from workflows.case.activities import CaseActivities
    from workflows.case.models import (
        ApplyCoverageCode,
        CancelAccepted,
        CancelCase,
        CancelReason,
        CaseFacts,
        CaseOnlyInput,
        CasePolicy,
        CaseState,
        CaseStatus,
        CaseView,
        CaseWorkflowInput,
        CaseWorkflowResult,
        CheckoutChanged,
        Compensation,
        ConsentCheckInput,
        CoverageApplied,
        CreateOfferInput,
        CreateOrderInput,
        DeliverReportInput,
        DoctorChoiceMode,
        EndAssignmentInput,
        ExpireOfferInput,
        ExtendDeadline,
        Funding,
        HostedPaymentForm,
        InformationProvided,
        InformationRequested,
        IssueInvoicesInput,
        ListCandidatesInput,
        LoadCaseInput,
        NotifyInput,
        OfferAnswered,
        OfferAnswerRecord,
        PaymentNotified,
        PaymentStatusInput,
        PendingOffer,
        Phase,
        ProposeInput,
        QuoteInput,
        ReassignInput,
        Recipient,
        RecipientKind,
        RecordAssignmentInput,
        RefundInput,
        ReportAccepted,
        ReportCaseStatusInput,
        SetDeadlineInput,
        ShareReportInput,
        Slot,
        SlotView,
        StartCardPayment,
        StartCardPaymentInput,
        SubmitReport,
        Template,
        TreatingPhysicianContactGiven,
        ValidateCoverageInput,
    )

# Longer than the gRPC deadline the activities set, so a slow service times out first.
SERVICE_CALL_TIMEOUT = timedelta(seconds=30)
SERVICE_CALL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=1)
)
# Patches (workflow.patched) for changes made after a release; old histories replay the
# old branch (tests/workflows/histories/).
PATCH_FULL_LIFECYCLE = "case-full-lifecycle-v2"

P = TypeVar("P")
R = TypeVar("R")


class CaseCancelled(Exception):
    """Raised at the next wait point once a cancellation was accepted."""


@workflow.defn
class CaseWorkflow:
    @workflow.init
    def __init__(self, data: CaseWorkflowInput) -> None:
        self._data = data
        self._policy: CasePolicy = data.policy
        self._state = data.resume.model_copy(deep=True) if data.resume else CaseState()
        self._legacy = False
        self._wake = False
        self._checkout_changed = False
        self._coverage_in_flight = False
        self._resume_requested = False
        self._compensating = False
        self._attention = ""
        self._published: dict[str, Any] = {}
        self._continue_after_events = 0

    # -- run -----------------------------------------------------------------------------

    @workflow.run
    async def run(self, data: CaseWorkflowInput) -> CaseWorkflowResult:
        if not workflow.patched(PATCH_FULL_LIFECYCLE):
            return await self._legacy_skeleton(data)
        state = self._state
        try:
            while state.phase is not Phase.DONE:
                await self._maybe_continue_as_new()
                self._raise_if_cancelled()
                try:
                    await self._run_phase(state.phase)
                except ActivityError as error:
                    await self._park(error)
                self._publish()
        except CaseCancelled:
            await self._compensate()
        except asyncio.CancelledError:
            # The workflow itself was cancelled (an operator): compensate, then end as
            # cancelled. Activities started after the cancellation run normally.
            if state.cancel_reason is None:
                state.cancel_reason = CancelReason.WORKFLOW_CANCELLED
                state.cancel_requested_by = "operator"
            await self._compensate()
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._result()

    async def _run_phase(self, phase: Phase) -> None:
        handlers: dict[Phase, Callable[[], Awaitable[None]]] = {
            Phase.INTAKE: self._intake,
            Phase.CHECKOUT: self._checkout,
            Phase.PAYMENT: self._payment,
            Phase.MATCHING: self._matching,
            Phase.OFFERS: self._offers,
            Phase.REVIEW: self._review,
            Phase.DELIVERY: self._delivery,
        }
        await handlers[phase]()

    # -- phases --------------------------------------------------------------------------

    async def _intake(self) -> None:
        """Someone covers the area, then the checkout opens (status awaiting_payment)."""
        state, data = self._state, self._data
        self._publish()
        candidates = await self._act(
            CaseActivities.list_candidate_doctors, ListCandidatesInput(therapeutic_area=data.therapeutic_area)
        )
        state.candidate_doctor_count = len(candidates.doctor_ids)
        if not candidates.doctor_ids:
            # Nobody covers the area: the patient is told before paying anything.
            await self._load_facts()
            self._request_cancel(CancelReason.NO_DOCTOR_IN_AREA, "platform")
            self._raise_if_cancelled()
        state.checkout_deadline_at = workflow.now() + timedelta(days=self._policy.checkout_window_days)
        await self._report_status(CaseStatus.AWAITING_PAYMENT)
        state.phase = Phase.CHECKOUT

    async def _load_facts(self) -> CaseFacts:
        """The case as the dossier holds it (ids and codes): who files, for whom, how many
        doctors, whether the forms were submitted complete."""
        state = self._state
        facts: CaseFacts = await self._act(
            CaseActivities.load_case, LoadCaseInput(case_id=self._data.case_id)
        )
        state.filer_account_id = facts.filer_account_id
        state.beneficiary_id = facts.beneficiary_id
        state.purpose = facts.purpose
        state.chosen_doctor_ids = facts.chosen_doctor_ids
        state.requested_doctor_count = (
            max(1, len(facts.chosen_doctor_ids)) if self._patient_chosen else facts.requested_doctor_count
        )
        return facts

    async def _checkout(self) -> None:
        """Latest terms accepted and consents present (CNS-01), forms complete; the gateway
        signals `checkout_changed` when the patient completes one of them."""
        state, data = self._state, self._data
        while True:
            self._checkout_changed = False
            facts = await self._load_facts()
            consents = await self._act(
                CaseActivities.check_consents,
                ConsentCheckInput(account_id=state.filer_account_id, beneficiary_id=state.beneficiary_id),
            )
            if consents.ready and facts.forms_complete:
                break
            if not await self._wait(lambda: self._checkout_changed, state.checkout_deadline_at):
                self._request_cancel(CancelReason.CHECKOUT_NOT_COMPLETED, "platform")
                self._raise_if_cancelled()
        order = await self._act(
            CaseActivities.create_order,
            CreateOrderInput(
                idempotency_key=self._key("order"),
                case_id=data.case_id,
                payer_account_id=state.filer_account_id,
                purpose=state.purpose,
                therapeutic_area=data.therapeutic_area,
                doctor_count=state.requested_doctor_count,
            ),
        )
        state.order_id, state.amount_cents, state.currency = (
            order.order_id,
            order.amount_cents,
            order.currency,
        )
        if order.settled:
            state.funding = order.funding
        state.phase = Phase.PAYMENT

    async def _payment(self) -> None:
        """Card payment captured or coverage validated: nothing starts before (CASE-11)."""
        state = self._state
        # Registered before the step: a charge can be captured at the PSP at any moment
        # from now on, even if its notification never reaches us.
        self._register(Compensation.REFUND_PAYMENT)
        while state.funding is Funding.NONE:
            # A notification that came before this phase (or during a check) counts too.
            notified = await self._wait(
                self._payment_event(state.payment_notifications_handled), state.checkout_deadline_at
            )
            state.payment_notifications_handled = state.payment_notifications
            if state.funding is not Funding.NONE:
                break
            status = await self._act(
                CaseActivities.get_payment_status, PaymentStatusInput(order_id=state.order_id)
            )
            state.payment_checks += 1
            if status.captured:
                state.funding = Funding.CARD
            elif status.covered:
                state.funding = Funding.COVERAGE
            elif status.refused:
                state.payment_refused += 1
            if state.funding is Funding.NONE and not notified:
                self._request_cancel(CancelReason.PAYMENT_NOT_RECEIVED, "platform")
                self._raise_if_cancelled()
        # Billing sends the payment summary itself when it captures (one email, not two).
        if state.funding is Funding.CARD and not workflow.patched("billing-sends-payment-summary"):
            await self._notify(
                Template.PAYMENT_SUMMARY,
                self._patient,
                "payment-summary",
                amount_cents=state.amount_cents,
                currency=state.currency,
            )
        await self._report_status(CaseStatus.AWAITING_ASSIGNMENT)
        state.phase = Phase.MATCHING

    def _payment_event(self, seen: int) -> Callable[[], bool]:
        state = self._state

        def ready() -> bool:
            settled = state.payment_notifications > seen or state.funding is not Funding.NONE
            return settled and not self._coverage_in_flight

        return ready

    async def _matching(self) -> None:
        state, data = self._state, self._data
        if not state.slots:
            state.slots = [Slot(index=i) for i in range(state.requested_doctor_count)]
        if self._patient_chosen:
            if state.expected_delivery_at is None:
                try:
                    quote = await self._act(
                        CaseActivities.quote_expected_delay,
                        QuoteInput(
                            therapeutic_area=data.therapeutic_area,
                            doctor_ids=state.chosen_doctor_ids,
                            as_of=workflow.now(),
                        ),
                    )
                except ActivityError:
                    # A chosen doctor is outside the area or on leave: the patient chose
                    # them, so nobody is substituted; the case is cancelled and refunded.
                    self._request_cancel(CancelReason.CHOSEN_DOCTOR_UNAVAILABLE, "platform")
                    self._raise_if_cancelled()
                    return
                state.expected_delivery_at = quote.expected_delivery_at
                state.quoted_deadlines = quote.per_doctor
                # CASE-10, NOT-02: the patient who picked the doctor is told the delay.
                await self._notify(
                    Template.EXPECTED_DELAY, self._patient, "expected-delay", date=quote.expected_delivery_at
                )
            state.candidates = [d for d in state.chosen_doctor_ids if d not in state.tried_doctor_ids]
            state.phase = Phase.OFFERS
            return
        open_slots = sum(1 for slot in state.slots if not slot.filled)
        proposal = await self._act(
            CaseActivities.propose_assignment,
            ProposeInput(
                case_id=data.case_id,
                therapeutic_area=data.therapeutic_area,
                doctor_count=max(1, open_slots),
                excluded_doctor_ids=[*state.tried_doctor_ids, *self._assigned_doctor_ids()],
                target_delay_seconds=self._review_window().total_seconds(),
                as_of=workflow.now(),
            ),
        )
        state.matching_rounds += 1
        if proposal.doctor_ids:
            state.candidates = [d for d in proposal.doctor_ids if d not in state.tried_doctor_ids]
            state.phase = Phase.OFFERS
            return
        # Nobody available now: a coordinator is told, matching is tried again later; after
        # too many rounds the case is cancelled and refunded.
        await self._escalate(f"no-doctor-{state.matching_rounds}", report=False)
        if state.matching_rounds >= self._policy.max_matching_rounds:
            self._request_cancel(CancelReason.NO_DOCTOR_AVAILABLE, "platform")
            self._raise_if_cancelled()
        await self._wait(lambda: False, workflow.now() + timedelta(hours=self._policy.no_doctor_retry_hours))

    async def _offers(self) -> None:
        state = self._state
        for slot in state.slots:
            while not slot.filled:
                if not state.candidates:
                    if self._patient_chosen:
                        self._request_cancel(CancelReason.CHOSEN_DOCTOR_UNAVAILABLE, "platform")
                        self._raise_if_cancelled()
                    state.phase = Phase.MATCHING
                    return
                doctor_id = state.candidates.pop(0)
                if doctor_id in state.tried_doctor_ids or doctor_id in self._assigned_doctor_ids():
                    continue
                state.tried_doctor_ids.append(doctor_id)
                await self._offer(slot, doctor_id)
        state.phase = Phase.REVIEW

    async def _offer(self, slot: Slot, doctor_id: str) -> None:
        state, data = self._state, self._data
        state.offer_rounds += 1
        now = workflow.now()
        respond_by = now + timedelta(hours=self._policy.offer_response_hours)
        # Registered before the step: an offer (and the assignment an accept creates) can
        # exist even when create_offer timed out.
        self._register(Compensation.WITHDRAW_OFFERS)
        self._register(Compensation.RELEASE_ASSIGNMENTS)
        offer = await self._act(
            CaseActivities.create_offer,
            CreateOfferInput(
                idempotency_key=self._key(f"offer:{slot.index}:{doctor_id}"),
                case_id=data.case_id,
                doctor_id=doctor_id,
                therapeutic_area=data.therapeutic_area,
                respond_by=respond_by,
                review_deadline_at=self._deadline_for(doctor_id, respond_by),
            ),
        )
        state.pending_offer = PendingOffer(
            offer_id=offer.offer_id, slot=slot.index, doctor_id=doctor_id, respond_by=respond_by
        )
        self._publish()
        await self._notify(
            Template.DOCTOR_NEW_OFFER,
            Recipient(kind=RecipientKind.DOCTOR, id=doctor_id),
            f"offer:{offer.offer_id}",
        )
        answered = await self._wait(lambda: offer.offer_id in state.offer_answers, respond_by)
        if answered:
            answer = state.offer_answers[offer.offer_id]
        else:
            outcome = await self._act(
                CaseActivities.expire_offer,
                ExpireOfferInput(
                    idempotency_key=self._key(f"expire:{offer.offer_id}"), offer_id=offer.offer_id
                ),
            )
            answer = OfferAnswerRecord(
                accepted=outcome.status == "accepted",
                assignment_id=outcome.assignment_id,
                doctor_account_id=outcome.doctor_account_id,
            )
            state.offer_answers[offer.offer_id] = answer
        state.pending_offer = None
        if not answer.accepted:
            workflow.logger.info("offer not accepted", extra={"offer_id": offer.offer_id})
            return
        await self._act(
            CaseActivities.record_assignment,
            RecordAssignmentInput(
                idempotency_key=self._key(f"assignment:{answer.assignment_id}"),
                case_id=data.case_id,
                assignment_id=answer.assignment_id,
                doctor_id=doctor_id,
                doctor_account_id=answer.doctor_account_id,
            ),
        )
        reassigned = slot.escalations > 0
        slot.doctor_id, slot.doctor_account_id = doctor_id, answer.doctor_account_id
        slot.assignment_id = answer.assignment_id
        slot.review_started_at = workflow.now()
        slot.deadline_at = self._deadline_for(doctor_id, slot.review_started_at)
        slot.window_seconds = (slot.deadline_at - slot.review_started_at).total_seconds()
        slot.reminders_sent, slot.open_requests, slot.paused_since = [], [], None
        await self._set_deadline(
            slot, "reassigned" if reassigned else "review_started", f"start:{slot.assignment_id}"
        )
        if reassigned:
            # The patient is told the new date after a reassignment.
            await self._notify(
                Template.CASE_DEADLINE_EXTENDED,
                self._patient,
                f"deadline:{slot.assignment_id}",
                date=slot.deadline_at,
            )
        self._publish()

    async def _review(self) -> None:
        state = self._state
        if state.status not in (CaseStatus.IN_REVIEW, CaseStatus.AWAITING_INFORMATION):
            await self._report_status(CaseStatus.IN_REVIEW)
        while not all(slot.delivered for slot in state.slots):
            if state.phase is not Phase.REVIEW:
                return  # a slot was released for reassignment: offers first
            await self._maybe_continue_as_new()
            await self._process_due_events()
            if state.phase is not Phase.REVIEW:
                return
            self._publish()
            self._wake = False
            await self._wait(
                lambda: self._wake or all(slot.delivered for slot in state.slots), self._next_wake_at()
            )
        await workflow.wait_condition(lambda: not any(slot.report_pending for slot in state.slots))
        state.phase = Phase.DELIVERY

    async def _delivery(self) -> None:
        state, data = self._state, self._data
        await self._report_status(CaseStatus.REPORT_DELIVERED)
        await self._share_with_treating_physician()
        if state.order_id:
            await self._act(
                CaseActivities.issue_invoices,
                IssueInvoicesInput(
                    idempotency_key=self._key("invoices"),
                    order_id=state.order_id,
                    doctor_ids=[slot.doctor_id for slot in state.slots],
                ),
            )
        if not state.survey_sent:
            await self._notify(Template.SATISFACTION_SURVEY, self._patient, "survey")  # CASE-15
            state.survey_sent = True
        for slot in state.slots:
            # The doctors' access to the dossier ends with the case (DOC-02).
            await self._act(
                CaseActivities.end_case_assignment,
                EndAssignmentInput(
                    idempotency_key=self._key(f"end-assignment:{slot.assignment_id}"),
                    assignment_id=slot.assignment_id,
                    reason="completed",
                ),
            )
        await self._report_status(CaseStatus.CLOSED)
        state.phase = Phase.DONE
        workflow.logger.info("case closed", extra={"case_id": data.case_id})

    async def _share_with_treating_physician(self) -> None:
        """CASE-16, CNS-08: checked when the report is ready, since an objection can come
        at any time; the treating physician's contact may still be missing (it can be
        given when the report arrives): then we wait for it, for a while."""
        state = self._state
        waited = False
        while True:
            consents = await self._act(
                CaseActivities.check_consents,
                ConsentCheckInput(account_id=state.filer_account_id, beneficiary_id=state.beneficiary_id),
            )
            if not consents.report_sharing_consented or consents.report_sharing_opposed:
                return
            missing = False
            for slot in state.slots:
                if slot.report_id in state.shared_report_ids:
                    continue
                outcome = await self._act(
                    CaseActivities.share_report_with_treating_physician,
                    ShareReportInput(
                        idempotency_key=self._key(f"share:{slot.report_id}"), report_id=slot.report_id
                    ),
                )
                if outcome.shared:
                    state.shared_report_ids.append(slot.report_id)
                missing = missing or outcome.missing_contact
            if not missing or waited:
                return
            waited = True
            state.treating_physician_contact_given = False
            await self._wait_plain(
                lambda: state.treating_physician_contact_given,
                timedelta(days=self._policy.treating_physician_contact_wait_days),
            )

    # -- review clock --------------------------------------------------------------------

    def _reminder_times(self, slot: Slot) -> list[tuple[str, datetime]]:
        assert slot.deadline_at is not None
        window = timedelta(seconds=slot.window_seconds)
        generation = slot.extensions
        times = [
            (f"f{round(fraction * 100)}@{generation}", slot.deadline_at - window * (1 - fraction))
            for fraction in self._policy.reminder_fractions
        ]
        before = timedelta(hours=self._policy.reminder_before_deadline_hours)
        if before and before < window:
            times.append(
                (
                    f"h{round(self._policy.reminder_before_deadline_hours)}@{generation}",
                    slot.deadline_at - before,
                )
            )
        return sorted(times, key=lambda item: item[1])

    def _open_slots(self) -> list[Slot]:
        return [s for s in self._state.slots if s.filled and not s.delivered and not s.report_pending]

    def _next_wake_at(self) -> datetime | None:
        moments: list[datetime] = []
        cap = timedelta(days=self._policy.information_pause_cap_days)
        for slot in self._open_slots():
            if slot.paused_since is not None:
                moments.append(slot.paused_since + cap)
                continue
            assert slot.deadline_at is not None
            moments.append(slot.deadline_at)
            moments += [at for label, at in self._reminder_times(slot) if label not in slot.reminders_sent]
        return min(moments) if moments else None

    async def _process_due_events(self) -> None:
        now = workflow.now()
        cap = timedelta(days=self._policy.information_pause_cap_days)
        for slot in self._open_slots():
            if slot.paused_since is not None:
                if now >= slot.paused_since + cap:
                    # The patient did not answer in time: the clock runs again.
                    await self._resume_clock(
                        slot, credit=cap, reason_key=f"cap:{slot.paused_since.isoformat()}"
                    )
                continue
            assert slot.deadline_at is not None
            if now >= slot.deadline_at:
                await self._deadline_missed(slot)
                continue
            due = [(label, at) for label, at in self._reminder_times(slot) if at <= now]
            unsent = [label for label, _ in due if label not in slot.reminders_sent]
            if unsent:
                # Several due at once (after a pause): only the latest is worth sending.
                slot.reminders_sent += unsent
                await self._notify(
                    Template.DOCTOR_DEADLINE_REMINDER,
                    Recipient(kind=RecipientKind.DOCTOR, id=slot.doctor_id),
                    f"reminder:{slot.assignment_id}:{unsent[-1]}",
                    date=slot.deadline_at,
                )

    async def _deadline_missed(self, slot: Slot) -> None:
        state, data = self._state, self._data
        slot.escalations += 1
        assert slot.deadline_at is not None
        await self._escalate(f"deadline:{slot.assignment_id}:{slot.escalations}", report=True)
        if not self._patient_chosen and slot.escalations == 1:
            outcome = await self._act(
                CaseActivities.reassign_case,
                ReassignInput(
                    idempotency_key=self._key(f"reassign:{slot.assignment_id}"),
                    case_id=data.case_id,
                    assignment_id=slot.assignment_id,
                    therapeutic_area=data.therapeutic_area,
                    tried_doctor_ids=[*state.tried_doctor_ids],
                    target_delay_seconds=self._review_window().total_seconds(),
                    as_of=workflow.now(),
                ),
            )
            if outcome.released:
                await self._act(
                    CaseActivities.end_case_assignment,
                    EndAssignmentInput(
                        idempotency_key=self._key(f"end-assignment:{slot.assignment_id}"),
                        assignment_id=slot.assignment_id,
                        reason="reassigned",
                    ),
                )
                slot.doctor_id = slot.doctor_account_id = slot.assignment_id = ""
                slot.deadline_at = slot.review_started_at = None
                state.candidates = [d for d in outcome.doctor_ids if d not in state.tried_doctor_ids]
                state.phase = Phase.OFFERS
                return
        # Nobody to take over (or the patient chose this doctor): more time, and the
        # patient is told the new date.
        slot.extensions += 1
        slot.deadline_at = max(workflow.now(), slot.deadline_at) + timedelta(
            hours=self._policy.deadline_extension_hours
        )
        await self._set_deadline(slot, "extended", f"ext:{slot.assignment_id}:{slot.extensions}")
        await self._notify(
            Template.CASE_DEADLINE_EXTENDED,
            self._patient,
            f"deadline:{slot.assignment_id}:ext{slot.extensions}",
            date=slot.deadline_at,
        )
        await self._report_status(CaseStatus.IN_REVIEW)

    async def _resume_clock(self, slot: Slot, credit: timedelta, reason_key: str) -> None:
        assert slot.paused_since is not None
        assert slot.deadline_at is not None
        slot.deadline_at = slot.deadline_at + credit
        slot.paused_since = None
        await self._set_deadline(slot, "information_requested", f"resume:{slot.assignment_id}:{reason_key}")
        if not any(s.paused_since for s in self._open_slots()):
            await self._report_status(CaseStatus.IN_REVIEW)
        self._publish()

    # -- escalation, parking, cancellation -----------------------------------------------

    async def _escalate(self, key: str, *, report: bool) -> None:
        state = self._state
        state.escalated = True
        state.escalation_count += 1
        self._publish()
        if report:
            await self._report_status(CaseStatus.ESCALATED)
        # The coordinator task: the team is emailed; the case is listed (Escalated).
        await self._notify(
            Template.COORDINATOR_ESCALATION, Recipient(kind=RecipientKind.COORDINATORS), f"escalation:{key}"
        )

    async def _park(self, error: ActivityError) -> None:
        """A step failed for a reason no retry fixes (a refusal nobody planned for): the
        case waits for a coordinator, who retries it or cancels it."""
        cause = error.cause
        kind = cause.type if isinstance(cause, ApplicationError) and cause.type else "ActivityError"
        self._attention = f"{self._state.phase.value}:{kind}"
        workflow.logger.warning("case parked", extra={"attention": self._attention})
        self._state.escalated = True
        self._publish()
        try:
            await self._notify(
                Template.COORDINATOR_ESCALATION,
                Recipient(kind=RecipientKind.COORDINATORS),
                f"parked:{self._state.phase.value}:{workflow.info().run_id}:{self._state.escalation_count}",
            )
        except ActivityError:
            workflow.logger.warning("coordinators could not be emailed", extra={"attention": self._attention})
        self._state.escalation_count += 1
        self._resume_requested = False
        await self._wait(lambda: self._resume_requested, None)
        self._attention = ""

    def _request_cancel(self, reason: CancelReason, by: str) -> None:
        if self._state.cancel_reason is None:
            self._state.cancel_reason = reason
            self._state.cancel_requested_by = by

    def _raise_if_cancelled(self) -> None:
        if self._state.cancel_reason is not None and not self._compensating:
            raise CaseCancelled()

    async def _compensate(self) -> None:
        state = self._state
        self._compensating = True
        state.pending_offer = None
        failures: list[str] = []
        for compensation in reversed(state.compensations):
            try:
                await self._run_compensation(compensation)
            except ActivityError:
                failures.append(compensation.value)
        try:
            # Billing tells a refunded patient the amount itself (one email, not two).
            if not (state.refunded and workflow.patched("billing-sends-refund-email")):
                await self._notify(Template.CASE_CANCELLED, self._patient, "cancelled")
            if failures:
                await self._notify(
                    Template.COORDINATOR_ESCALATION,
                    Recipient(kind=RecipientKind.COORDINATORS),
                    "compensation",
                )
                state.escalated = True
            await self._report_status(CaseStatus.CANCELLED)
        except ActivityError:
            failures.append("notify")
            # A failed email must never leave the dossier out of step with the case.
            if workflow.patched("report-cancelled-despite-email-failure"):
                try:
                    await self._report_status(CaseStatus.CANCELLED)
                except ActivityError:
                    failures.append("status")
        if failures:
            workflow.logger.warning("compensation incomplete", extra={"failed": failures})
        state.status = CaseStatus.CANCELLED
        state.phase = Phase.DONE
        self._publish()

    async def _run_compensation(self, compensation: Compensation) -> None:
        state, data = self._state, self._data
        if compensation is Compensation.WITHDRAW_OFFERS:
            await self._act(
                CaseActivities.withdraw_open_offers,
                CaseOnlyInput(idempotency_key_prefix=self._key("withdraw"), case_id=data.case_id),
            )
        elif compensation is Compensation.RELEASE_ASSIGNMENTS:
            await self._act(
                CaseActivities.release_case_assignments,
                CaseOnlyInput(idempotency_key_prefix=self._key("cancel-assignment"), case_id=data.case_id),
            )
        elif compensation is Compensation.REFUND_PAYMENT and state.order_id:
            # Nothing was delivered (cancellation is refused afterwards): full refund.
            outcome = await self._act(
                CaseActivities.refund_if_captured,
                RefundInput(idempotency_key=self._key("refund"), order_id=state.order_id),
            )
            state.refunded = outcome.refunded

    def _register(self, compensation: Compensation) -> None:
        if compensation not in self._state.compensations:
            self._state.compensations.append(compensation)

    # -- signals, updates, queries -------------------------------------------------------

    @workflow.signal
    def checkout_changed(self, data: CheckoutChanged) -> None:
        self._checkout_changed = True

    @workflow.signal
    def payment_notified(self, data: PaymentNotified) -> None:
        self._state.payment_notifications += 1

    @workflow.update
    async def start_card_payment(self, data: StartCardPayment) -> HostedPaymentForm:
        state = self._state
        state.card_attempts += 1
        return await self._act(
            CaseActivities.start_card_payment,
            StartCardPaymentInput(
                idempotency_key=self._key(f"card-payment:{state.card_attempts}"),
                order_id=state.order_id,
                locale=data.locale,
            ),
        )

    @start_card_payment.validator
    def _validate_card_payment(self, data: StartCardPayment) -> None:
        self._require_awaiting_payment()

    @workflow.update
    async def apply_coverage_code(self, data: ApplyCoverageCode) -> CoverageApplied:
        state = self._state
        state.coverage_attempts += 1
        self._coverage_in_flight = True
        try:
            applied = await self._act(
                CaseActivities.validate_coverage_code,
                ValidateCoverageInput(
                    idempotency_key=self._key(f"coverage:{state.coverage_attempts}"),
                    order_id=state.order_id,
                    code=data.code,
                ),
            )
        except ActivityError as error:
            raise ApplicationError(
                "the coverage code was refused (expired, revoked, used up or not for this case)",
                type="CoverageRefused",
                non_retryable=True,
            ) from error
        finally:
            self._coverage_in_flight = False
        state.funding = Funding.COVERAGE
        return applied

    @apply_coverage_code.validator
    def _validate_coverage(self, data: ApplyCoverageCode) -> None:
        self._require_awaiting_payment()
        if self._coverage_in_flight:
            raise ValueError("a coverage code is already being checked")

    def _require_awaiting_payment(self) -> None:
        state = self._state
        if state.phase is not Phase.PAYMENT or state.funding is not Funding.NONE or not state.order_id:
            raise ValueError("the case is not awaiting payment")
        if state.cancel_reason is not None:
            raise ValueError("the case is being cancelled")

    @workflow.signal
    def offer_answered(self, data: OfferAnswered) -> None:
        self._state.offer_answers.setdefault(
            data.offer_id,
            OfferAnswerRecord(
                accepted=data.accepted,
                assignment_id=data.assignment_id,
                doctor_account_id=data.doctor_account_id,
            ),
        )

    @workflow.signal
    async def information_requested(self, data: InformationRequested) -> None:
        """CASE-06: the doctor asked; the patient is emailed; the doctor's clock pauses."""
        state = self._state
        slot = next((s for s in self._open_slots() if s.doctor_account_id == data.doctor_account_id), None)
        if slot is None or data.request_id in state.information_requests or state.phase is Phase.DONE:
            workflow.logger.info("information request ignored", extra={"request_id": data.request_id})
            return
        state.information_requests[data.request_id] = slot.index
        slot.open_requests.append(data.request_id)
        if slot.paused_since is None:
            slot.paused_since = workflow.now()
        self._wake = True
        self._publish()
        await self._notify(
            Template.NEW_SECURE_MESSAGE, self._patient, f"information-request:{data.request_id}"
        )
        if slot.paused_since is not None:
            await self._report_status(CaseStatus.AWAITING_INFORMATION)

    @workflow.signal
    async def information_provided(self, data: InformationProvided) -> None:
        state = self._state
        index = state.information_requests.get(data.request_id)
        if index is None or data.request_id in state.answered_requests:
            return
        state.answered_requests.append(data.request_id)
        slot = state.slots[index]
        if data.request_id in slot.open_requests:
            slot.open_requests.remove(data.request_id)
        self._wake = True
        if not slot.filled or slot.delivered:
            return
        await self._notify(
            Template.NEW_SECURE_MESSAGE,
            Recipient(kind=RecipientKind.DOCTOR, id=slot.doctor_id),
            f"information-answer:{data.request_id}",
        )
        if not slot.open_requests and slot.paused_since is not None:
            paused = workflow.now() - slot.paused_since
            cap = timedelta(days=self._policy.information_pause_cap_days)
            await self._resume_clock(slot, credit=min(paused, cap), reason_key=data.request_id)

    @workflow.update
    async def submit_report(self, data: SubmitReport) -> ReportAccepted:
        """The assigned doctor's report: sealed by the dossier, the patient emailed (CASE-09)."""
        slot = self._report_slot(data.doctor_account_id)
        slot.report_pending = data.report_id
        try:
            delivered = await self._act(
                CaseActivities.deliver_report,
                DeliverReportInput(
                    idempotency_key=self._key(f"deliver:{data.report_id}"),
                    case_id=self._data.case_id,
                    report_id=data.report_id,
                    author_account_id=data.doctor_account_id,
                ),
            )
        except ActivityError as error:
            slot.report_pending = ""
            raise ApplicationError(
                "the report could not be delivered (not this case's draft by you)",
                type="ReportRefused",
                non_retryable=True,
            ) from error
        slot.report_id, slot.report_pending = data.report_id, ""
        self._wake = True
        self._publish()
        await self._notify(Template.REPORT_AVAILABLE, self._patient, f"report-available:{data.report_id}")
        await self._act(
            CaseActivities.release_assignment,
            EndAssignmentInput(
                idempotency_key=self._key(f"release:{slot.assignment_id}"),
                assignment_id=slot.assignment_id,
                reason="completed",
            ),
        )
        return ReportAccepted(report_id=data.report_id, delivered_at=delivered.sealed_at or workflow.now())

    @submit_report.validator
    def _validate_report(self, data: SubmitReport) -> None:
        self._report_slot(data.doctor_account_id)

    def _report_slot(self, doctor_account_id: str) -> Slot:
        state = self._state
        if state.phase in (Phase.DELIVERY, Phase.DONE) or state.cancel_reason is not None:
            raise ValueError("the case is not open for reports")
        for slot in state.slots:
            if slot.filled and slot.doctor_account_id == doctor_account_id:
                if slot.delivered:
                    raise ValueError("your report was already submitted")
                if slot.report_pending:
                    raise ValueError("your report is already being submitted")
                return slot
        raise ValueError("only the doctor assigned to this case may submit its report")

    @workflow.update
    def cancel_case(self, data: CancelCase) -> CancelAccepted:
        self._request_cancel(data.reason, data.requested_by)
        self._wake = True
        return CancelAccepted(
            status=CaseStatus.CANCELLED, refund_expected=self._state.funding is Funding.CARD
        )

    @cancel_case.validator
    def _validate_cancel(self, data: CancelCase) -> None:
        state = self._state
        if state.phase in (Phase.DELIVERY, Phase.DONE):
            raise ValueError("the case is closed or its report was delivered")
        if any(slot.delivered or slot.report_pending for slot in state.slots):
            raise ValueError("a report was delivered: the case can no longer be cancelled")
        if state.cancel_reason is not None:
            raise ValueError("the case is already being cancelled")
        if data.requested_by == "patient" and data.reason is not CancelReason.PATIENT_REQUEST:
            raise ValueError("a patient cancels for patient_request")

    @workflow.update
    async def extend_deadline(self, data: ExtendDeadline) -> SlotView:
        """A coordinator grants one doctor more time; the patient is told the date."""
        slot = self._extendable_slot(data)
        slot.extensions += 1
        slot.deadline_at = data.new_deadline_at
        self._wake = True
        await self._set_deadline(slot, "extended", f"coordinator:{slot.assignment_id}:{slot.extensions}")
        await self._notify(
            Template.CASE_DEADLINE_EXTENDED,
            self._patient,
            f"deadline:{slot.assignment_id}:coordinator{slot.extensions}",
            date=slot.deadline_at,
        )
        return self._slot_view(slot)

    @extend_deadline.validator
    def _validate_extension(self, data: ExtendDeadline) -> None:
        self._extendable_slot(data)

    def _extendable_slot(self, data: ExtendDeadline) -> Slot:
        for slot in self._open_slots():
            if slot.doctor_id == data.doctor_id:
                if slot.deadline_at is None or data.new_deadline_at <= slot.deadline_at:
                    raise ValueError("an extension moves the deadline later")
                return slot
        raise ValueError("no open review by this doctor on the case")

    @workflow.signal
    def treating_physician_contact_given(self, data: TreatingPhysicianContactGiven) -> None:
        self._state.treating_physician_contact_given = True

    @workflow.signal
    def coordinator_retry(self) -> None:
        """A coordinator fixed what parked the case: the step runs again."""
        self._resume_requested = True

    @workflow.query
    def status(self) -> str:
        return self._state.status.value

    @workflow.query
    def state(self) -> CaseView:
        state = self._state
        return CaseView(
            case_id=self._data.case_id,
            phase=state.phase,
            status=state.status,
            therapeutic_area=self._data.therapeutic_area,
            doctor_choice_mode=self._data.doctor_choice_mode,
            funding=state.funding,
            order_id=state.order_id,
            escalated=state.escalated,
            expected_delivery_at=state.expected_delivery_at,
            deadline_at=self._earliest_deadline(),
            pending_offer_doctor_id=state.pending_offer.doctor_id if state.pending_offer else "",
            tried_doctor_ids=list(state.tried_doctor_ids),
            slots=[self._slot_view(slot) for slot in state.slots],
            open_information_requests=[r for s in state.slots for r in s.open_requests],
            cancel_reason=state.cancel_reason.value if state.cancel_reason else "",
            refunded=state.refunded,
            candidate_doctor_count=state.candidate_doctor_count,
            runs=state.runs,
            attention=self._attention,
        )

    # -- helpers -------------------------------------------------------------------------

    @property
    def _patient_chosen(self) -> bool:
        return self._data.doctor_choice_mode == DoctorChoiceMode.PATIENT_CHOSEN.value

    @property
    def _patient(self) -> Recipient:
        return Recipient(kind=RecipientKind.ACCOUNT, id=self._state.filer_account_id)

    def _review_window(self) -> timedelta:
        return timedelta(days=self._policy.platform_review_days)

    def _deadline_for(self, doctor_id: str, start: datetime) -> datetime:
        """7 days when the platform chose (CASE-10); the announced date when the patient
        chose (never earlier than the quote, never before a full window from now)."""
        if self._patient_chosen:
            quoted = self._state.quoted_deadlines.get(doctor_id) or self._state.expected_delivery_at
            if quoted is not None and quoted > start:
                return quoted
        return start + self._review_window()

    def _assigned_doctor_ids(self) -> list[str]:
        return [slot.doctor_id for slot in self._state.slots if slot.filled]

    def _earliest_deadline(self) -> datetime | None:
        deadlines = [
            s.deadline_at for s in self._open_slots() if s.deadline_at is not None and s.paused_since is None
        ]
        return min(deadlines) if deadlines else None

    def _slot_view(self, slot: Slot) -> SlotView:
        return SlotView(
            doctor_id=slot.doctor_id,
            deadline_at=slot.deadline_at,
            paused=slot.paused_since is not None,
            delivered=slot.delivered,
            reminders_sent=list(slot.reminders_sent),
            extensions=slot.extensions,
        )

    def _key(self, step: str) -> str:
        """Idempotency key of a side effect: the workflow id (the case) and the step."""
        return f"{workflow.info().workflow_id}:{step}"

    async def _act(self, activity: Callable[[CaseActivities, P], Awaitable[R]], arg: P) -> R:
        return await workflow.execute_activity_method(
            activity,
            arg,
            start_to_close_timeout=timedelta(seconds=self._policy.activity_timeout_seconds),
            retry_policy=SERVICE_CALL_RETRY,
        )

    async def _notify(
        self,
        template: Template,
        recipient: Recipient,
        step: str,
        *,
        date: datetime | None = None,
        amount_cents: int = 0,
        currency: str = "",
    ) -> None:
        await self._act(
            CaseActivities.notify,
            NotifyInput(
                idempotency_key=self._key(f"email:{step}"),
                template=template,
                recipient=recipient,
                case_id=self._data.case_id,
                date=date,
                amount_cents=amount_cents,
                currency=currency,
            ),
        )

    async def _report_status(self, status: CaseStatus) -> None:
        state = self._state
        if state.status is status and state.phase is not Phase.INTAKE:
            return
        state.status_reports += 1
        await self._act(
            CaseActivities.report_case_status,
            ReportCaseStatusInput(
                case_id=self._data.case_id,
                status=status.value,
                idempotency_key=self._key(f"status:{state.status_reports}:{status.value}"),
            ),
        )
        state.status = status
        self._publish()

    async def _set_deadline(self, slot: Slot, reason: str, step: str) -> None:
        assert slot.deadline_at is not None
        await self._act(
            CaseActivities.set_case_deadline,
            SetDeadlineInput(
                idempotency_key=self._key(f"deadline:{step}"),
                case_id=self._data.case_id,
                deadline_at=slot.deadline_at,
                reason=reason,
            ),
        )
        self._publish()

    async def _wait(self, ready: Callable[[], bool], until: datetime | None) -> bool:
        """Waits for `ready` until `until` (None: for ever). True when ready; raises
        CaseCancelled as soon as a cancellation was accepted."""

        def done() -> bool:
            return ready() or (self._state.cancel_reason is not None and not self._compensating)

        if until is None:
            await workflow.wait_condition(done)
        else:
            timeout = (until - workflow.now()).total_seconds()
            if timeout > 0 and not done():
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(done, timeout=timeout)
        self._raise_if_cancelled()
        return ready()

    async def _wait_plain(self, ready: Callable[[], bool], limit: timedelta) -> None:
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(ready, timeout=limit)

    async def _maybe_continue_as_new(self) -> None:
        info = workflow.info()
        limit = self._policy.continue_as_new_after_events
        too_long = bool(limit) and info.get_current_history_length() >= limit
        if not (info.is_continue_as_new_suggested() or too_long):
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        self._state.runs += 1
        workflow.continue_as_new(
            CaseWorkflowInput(
                case_id=self._data.case_id,
                therapeutic_area=self._data.therapeutic_area,
                doctor_choice_mode=self._data.doctor_choice_mode,
                policy=self._policy,
                resume=self._state,
            )
        )

    def _publish(self) -> None:
        """Search attributes (codes, dates, pseudonymous ids) and the current details the
        coordinators see in the UI; only what changed is upserted."""
        state, data = self._state, self._data
        doctor = next((slot.doctor_id for slot in state.slots if slot.filled), "")
        values: dict[str, Any] = {
            sa.CASE_STATUS.name: state.status.value,
            sa.THERAPEUTIC_AREA.name: data.therapeutic_area,
            sa.DEADLINE_AT.name: self._earliest_deadline(),
            sa.ESCALATED.name: state.escalated,
            sa.DOCTOR_REF.name: doctor or None,
        }
        changed = {name: value for name, value in values.items() if self._published.get(name, "?") != value}
        if changed:
            updates = []
            for key in sa.ALL:
                if key.name not in changed:
                    continue
                value = changed[key.name]
                updates.append(key.value_unset() if value is None else key.value_set(value))
            workflow.upsert_search_attributes(updates)
            self._published.update(changed)
        deadline = self._earliest_deadline()
        workflow.set_current_details(
            f"**{state.status.value}** ({state.phase.value}) · area `{data.therapeutic_area}` · "
            f"mode `{data.doctor_choice_mode}` · funding `{state.funding.value or 'none'}`  \n"
            f"deadline {deadline.isoformat() if deadline else '-'} · escalated {state.escalated} · "
            f"doctors {', '.join(s.doctor_id or '-' for s in state.slots) or '-'} · "
            f"offer to {state.pending_offer.doctor_id if state.pending_offer else '-'}"
            + (f"  \nneeds a coordinator: {self._attention}" if self._attention else "")
        )

    def _result(self) -> CaseWorkflowResult:
        state = self._state
        return CaseWorkflowResult(
            case_id=self._data.case_id,
            status=state.status.value,
            candidate_doctor_count=state.candidate_doctor_count,
            report_ids=[slot.report_id for slot in state.slots if slot.report_id],
            doctor_ids=[slot.doctor_id for slot in state.slots if slot.doctor_id],
            refunded=state.refunded,
            cancel_reason=state.cancel_reason.value if state.cancel_reason else "",
        )

    # -- the walking skeleton, kept for histories recorded before PATCH_FULL_LIFECYCLE ---

    async def _legacy_skeleton(self, data: CaseWorkflowInput) -> CaseWorkflowResult:
        workflow.upsert_search_attributes(
            [sa.CASE_STATUS.value_set("submitted"), sa.THERAPEUTIC_AREA.value_set(data.therapeutic_area)]
        )
        candidates = await workflow.execute_activity_method(
            CaseActivities.list_candidate_doctors,
            ListCandidatesInput(therapeutic_area=data.therapeutic_area),
            start_to_close_timeout=SERVICE_CALL_TIMEOUT,
            retry_policy=SERVICE_CALL_RETRY,
        )
        await workflow.execute_activity_method(
            CaseActivities.report_case_status,
            ReportCaseStatusInput(
                case_id=data.case_id,
                status="awaiting_payment",
                idempotency_key=f"{workflow.info().workflow_id}:status:awaiting_payment",
            ),
            start_to_close_timeout=SERVICE_CALL_TIMEOUT,
            retry_policy=SERVICE_CALL_RETRY,
        )
        workflow.upsert_search_attributes([sa.CASE_STATUS.value_set("awaiting_payment")])
        self._state.status = CaseStatus.AWAITING_PAYMENT
        self._state.candidate_doctor_count = len(candidates.doctor_ids)
        return CaseWorkflowResult(
            case_id=data.case_id, status="awaiting_payment", candidate_doctor_count=len(candidates.doctor_ids)
        )
