"""Recording activity implementations under the real activity names (standard Temporal
testing): the workflow logic runs for real, the services are a small in-memory world
that behaves like their contracts (ids, idempotency by key, refusals as non-retryable
errors). Every side effect is recorded by idempotency key, like the services' run_once.

The recorder can live in a SQLite file so a worker in another process (killed and
restarted in the exactly-once test) writes to the same record.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

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
    RecordAssignmentInput,
    RefundInput,
    RefundOutcome,
    ReportCaseStatusInput,
    SetDeadlineInput,
    ShareOutcome,
    ShareReportInput,
    StartCardPaymentInput,
    ValidateCoverageInput,
)


class Recorder:
    """Side effects by idempotency key: `calls` counts every attempt, `effects` what a
    service deduplicating by key would have done (first call per key)."""

    def __init__(self, path: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path) if path else ":memory:", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls (seq INTEGER PRIMARY KEY AUTOINCREMENT, activity TEXT, "
            "key TEXT, detail TEXT)"
        )
        self._db.commit()

    def record(self, activity_name: str, key: str, **detail: Any) -> bool:
        """Records a call; True when the key is new (the effect happens)."""
        with self._lock:
            seen = self._db.execute(
                "SELECT 1 FROM calls WHERE activity = ? AND key = ? LIMIT 1", (activity_name, key)
            ).fetchone()
            self._db.execute(
                "INSERT INTO calls (activity, key, detail) VALUES (?, ?, ?)",
                (activity_name, key, json.dumps(detail, default=str)),
            )
            self._db.commit()
            return seen is None

    def calls(self, activity_name: str | None = None) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT activity, key, detail FROM calls ORDER BY seq").fetchall()
        return [(a, k, json.loads(d)) for a, k, d in rows if activity_name in (None, a)]

    def effects(self, activity_name: str) -> dict[str, dict[str, Any]]:
        """First call per idempotency key."""
        seen: dict[str, dict[str, Any]] = {}
        for _, key, detail in self.calls(activity_name):
            seen.setdefault(key, detail)
        return seen

    def emails(self, template: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.effects("notify").values() if template in (None, d["template"])]

    def statuses(self) -> list[str]:
        return [d["status"] for d in self.effects("report_case_status").values()]


@dataclass
class Offer:
    offer_id: str
    doctor_id: str
    status: str = "pending"
    assignment_id: str = ""


@dataclass
class World:
    """What the services hold, as far as the workflow can see."""

    area: str = "oncology"
    filer_account_id: str = "acct-patient"
    doctors: dict[str, str] = field(
        default_factory=lambda: {"doc-a": "acct-doc-a", "doc-b": "acct-doc-b", "doc-c": "acct-doc-c"}
    )
    mode: str = "platform_chosen"
    chosen_doctor_ids: list[str] = field(default_factory=list)
    requested_doctor_count: int = 1
    forms_complete: bool = True
    terms_accepted: bool = True
    health_data_consent: bool = True
    report_sharing_consented: bool = True
    report_sharing_opposed: bool = False
    treating_physician_contact: bool = True
    valid_coverage_codes: set[str] = field(default_factory=lambda: {"COVER-OK-1"})
    payment: str = "none"  # none | pending | captured | refused | refunded
    amount_cents: int = 9000
    quoted_delay: timedelta = timedelta(days=10)
    proposals: list[list[str]] = field(default_factory=list)  # successive answers (else: all doctors)
    reassign_candidates: list[str] | None = None  # None: every untried doctor
    offers: dict[str, Offer] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)  # report id -> author account id
    # Optional hook: called at the start of an activity, by name (crash simulations).
    before: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)

    def pending_offer(self, doctor_id: str) -> Offer:
        return next(o for o in self.offers.values() if o.doctor_id == doctor_id and o.status == "pending")

    def accept(self, doctor_id: str) -> Offer:
        """What matching's AcceptOffer does (the gateway then signals the workflow)."""
        offer = self.pending_offer(doctor_id)
        offer.status = "accepted"
        offer.assignment_id = f"asg-{offer.offer_id}"
        return offer

    def decline(self, doctor_id: str) -> Offer:
        offer = self.pending_offer(doctor_id)
        offer.status = "declined"
        return offer


def _refuse(message: str, kind: str = "FAILED_PRECONDITION") -> ApplicationError:
    return ApplicationError(message, type=f"grpc.{kind}", non_retryable=True)


class FakeServices:
    """The activities, recorded; names match workflows.case.activities.CaseActivities."""

    def __init__(self, world: World, recorder: Recorder) -> None:
        self.world = world
        self.rec = recorder

    def all(self) -> list[Callable[..., Awaitable[Any]]]:
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

    async def _hook(self) -> None:
        hook = self.world.before.get(activity.info().activity_type)
        if hook is not None:
            await hook()

    @activity.defn
    async def load_case(self, data: LoadCaseInput) -> CaseFacts:
        await self._hook()
        w = self.world
        return CaseFacts(
            filer_account_id=w.filer_account_id,
            beneficiary_id="",
            therapeutic_area=w.area,
            purpose="second_opinion",
            doctor_choice_mode=w.mode,
            chosen_doctor_ids=w.chosen_doctor_ids,
            requested_doctor_count=w.requested_doctor_count,
            forms_complete=w.forms_complete,
        )

    @activity.defn
    async def list_candidate_doctors(self, data: ListCandidatesInput) -> ListCandidatesResult:
        return ListCandidatesResult(
            doctor_ids=list(self.world.doctors) if data.therapeutic_area == self.world.area else []
        )

    @activity.defn
    async def report_case_status(self, data: ReportCaseStatusInput) -> None:
        self.rec.record("report_case_status", data.idempotency_key, status=data.status)

    @activity.defn
    async def check_consents(self, data: ConsentCheckInput) -> ConsentCheck:
        w = self.world
        self.rec.record("check_consents", "", account_id=data.account_id)
        return ConsentCheck(
            terms_accepted=w.terms_accepted,
            health_data_consent=w.health_data_consent,
            notice_accepted=True,
            report_sharing_consented=w.report_sharing_consented,
            report_sharing_opposed=w.report_sharing_opposed,
        )

    @activity.defn
    async def create_order(self, data: CreateOrderInput) -> OrderRef:
        await self._hook()
        self.rec.record("create_order", data.idempotency_key, doctor_count=data.doctor_count)
        return OrderRef(
            order_id="order-1", amount_cents=self.world.amount_cents * data.doctor_count, currency="EUR"
        )

    @activity.defn
    async def validate_coverage_code(self, data: ValidateCoverageInput) -> CoverageApplied:
        self.rec.record("validate_coverage_code", data.idempotency_key, code=data.code)
        if data.code not in self.world.valid_coverage_codes:
            raise _refuse("coverage code expired")
        self.world.payment = "covered"
        return CoverageApplied(order_id=data.order_id, partner_id="partner-1")

    @activity.defn
    async def start_card_payment(self, data: StartCardPaymentInput) -> HostedPaymentForm:
        self.rec.record("start_card_payment", data.idempotency_key, order_id=data.order_id)
        if self.world.payment == "none":
            self.world.payment = "pending"
        return HostedPaymentForm(
            payment_attempt_id=f"pay-{data.idempotency_key[-1]}",
            form_action_url="https://psp.example/pay",
            form_fields={"order": data.order_id, "signature": "sig"},
            expires_at=None,
        )

    @activity.defn
    async def get_payment_status(self, data: PaymentStatusInput) -> PaymentState:
        status = self.world.payment
        return PaymentState(
            captured=status == "captured", refused=status == "refused", covered=status == "covered"
        )

    @activity.defn
    async def refund_if_captured(self, data: RefundInput) -> RefundOutcome:
        self.rec.record(
            "refund_if_captured", data.idempotency_key, order_id=data.order_id, was=self.world.payment
        )
        if self.world.payment == "refunded":
            return RefundOutcome(refunded=True, refund_id="refund-1")
        if self.world.payment != "captured":
            return RefundOutcome(refunded=False)
        self.rec.record(
            "refund", data.idempotency_key, order_id=data.order_id, amount=self.world.amount_cents
        )
        self.world.payment = "refunded"
        return RefundOutcome(refunded=True, refund_id="refund-1")

    @activity.defn
    async def propose_assignment(self, data: ProposeInput) -> ProposalResult:
        self.rec.record("propose_assignment", "", excluded=data.excluded_doctor_ids)
        if self.world.proposals:
            ids = self.world.proposals.pop(0)
        else:
            ids = [d for d in self.world.doctors if d not in data.excluded_doctor_ids]
        return ProposalResult(doctor_ids=ids, unavailable_reason="" if ids else "all_at_capacity")

    @activity.defn
    async def quote_expected_delay(self, data: QuoteInput) -> DelayQuote:
        self.rec.record("quote_expected_delay", "", doctors=data.doctor_ids)
        unknown = [d for d in data.doctor_ids if d not in self.world.doctors]
        if unknown:
            raise _refuse("a chosen doctor does not cover the area")
        at = data.as_of + self.world.quoted_delay
        return DelayQuote(
            expected_delivery_at=at, per_doctor=dict.fromkeys(data.doctor_ids, at), within_target=False
        )

    @activity.defn
    async def create_offer(self, data: CreateOfferInput) -> OfferRef:
        await self._hook()
        new = self.rec.record(
            "create_offer", data.idempotency_key, doctor_id=data.doctor_id, respond_by=data.respond_by
        )
        offer_id = f"offer-{data.doctor_id}"
        if new or offer_id not in self.world.offers:
            self.world.offers[offer_id] = Offer(offer_id=offer_id, doctor_id=data.doctor_id)
        return OfferRef(offer_id=offer_id)

    @activity.defn
    async def expire_offer(self, data: ExpireOfferInput) -> OfferOutcome:
        self.rec.record("expire_offer", data.idempotency_key, offer_id=data.offer_id)
        offer = self.world.offers[data.offer_id]
        if offer.status == "pending":
            offer.status = "expired"
        return OfferOutcome(
            status=offer.status,
            assignment_id=offer.assignment_id,
            doctor_account_id=self.world.doctors[offer.doctor_id] if offer.assignment_id else "",
        )

    @activity.defn
    async def withdraw_open_offers(self, data: CaseOnlyInput) -> int:
        withdrawn = 0
        for offer in self.world.offers.values():
            if offer.status == "pending":
                offer.status = "withdrawn"
                self.rec.record("withdraw_offer", f"{data.idempotency_key_prefix}:{offer.offer_id}")
                withdrawn += 1
        return withdrawn

    @activity.defn
    async def record_assignment(self, data: RecordAssignmentInput) -> None:
        await self._hook()
        self.rec.record("record_assignment", data.idempotency_key, doctor_id=data.doctor_id)

    @activity.defn
    async def set_case_deadline(self, data: SetDeadlineInput) -> None:
        self.rec.record(
            "set_case_deadline", data.idempotency_key, deadline_at=data.deadline_at, reason=data.reason
        )

    @activity.defn
    async def reassign_case(self, data: ReassignInput) -> ReassignOutcome:
        self.rec.record("reassign_case", data.idempotency_key, assignment_id=data.assignment_id)
        candidates = self.world.reassign_candidates
        if candidates is None:
            candidates = [d for d in self.world.doctors if d not in data.tried_doctor_ids]
        return ReassignOutcome(released=bool(candidates), doctor_ids=candidates)

    @activity.defn
    async def release_assignment(self, data: EndAssignmentInput) -> None:
        self.rec.record("release_assignment", data.idempotency_key, reason=data.reason)

    @activity.defn
    async def end_case_assignment(self, data: EndAssignmentInput) -> None:
        self.rec.record("end_case_assignment", data.idempotency_key, reason=data.reason)

    @activity.defn
    async def release_case_assignments(self, data: CaseOnlyInput) -> int:
        released = 0
        for offer in self.world.offers.values():
            if offer.status == "accepted":
                self.rec.record(
                    "release_case_assignment", f"{data.idempotency_key_prefix}:{offer.assignment_id}"
                )
                released += 1
        return released

    @activity.defn
    async def deliver_report(self, data: DeliverReportInput) -> DeliveredReport:
        if self.world.reports.get(data.report_id) != data.author_account_id:
            raise _refuse("the report is not a draft of this case by the assigned doctor")
        self.rec.record("deliver_report", data.idempotency_key, report_id=data.report_id)
        return DeliveredReport(report_id=data.report_id, sealed_at=None)

    @activity.defn
    async def share_report_with_treating_physician(self, data: ShareReportInput) -> ShareOutcome:
        if not self.world.treating_physician_contact:
            return ShareOutcome(shared=False, missing_contact=True)
        self.rec.record("share_report", data.idempotency_key, report_id=data.report_id)
        return ShareOutcome(shared=True)

    @activity.defn
    async def issue_invoices(self, data: IssueInvoicesInput) -> None:
        self.rec.record("issue_invoices", data.idempotency_key, doctors=data.doctor_ids)

    @activity.defn
    async def notify(self, data: NotifyInput) -> str:
        await self._hook()
        self.rec.record(
            "notify",
            data.idempotency_key,
            template=data.template.value,
            recipient=f"{data.recipient.kind.value}:{data.recipient.id}",
            date=data.date.isoformat() if isinstance(data.date, datetime) else None,
        )
        return f"n-{data.idempotency_key}"
