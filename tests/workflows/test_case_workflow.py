"""The case workflow on the real Temporal dev server, with per-workflow time skipping:
durable deadlines, reminders and escalations run through days of virtual time in
seconds. Activities are recording implementations under the real names (fakes.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from tests.workflows.conftest import Harness
from workflows.case.models import (
    ApplyCoverageCode,
    CancelCase,
    CaseStatus,
    CheckoutChanged,
    InformationProvided,
    InformationRequested,
    OfferAnswered,
    PaymentNotified,
    Phase,
    StartCardPayment,
    SubmitReport,
)
from workflows.case.workflow import CaseWorkflow


async def pay_by_card(h: Harness, handle: WorkflowHandle[Any, Any]) -> None:
    await h.until(handle, lambda v: v.phase is Phase.PAYMENT)
    form = await handle.execute_update(CaseWorkflow.start_card_payment, StartCardPayment(locale="fr"))
    assert form.form_action_url.startswith("https://")
    h.world.payment = "captured"  # the PSP notified billing, which verified and captured
    await handle.signal(
        CaseWorkflow.payment_notified, PaymentNotified(payment_attempt_id=form.payment_attempt_id)
    )


async def emailed(h: Harness, template: str, count: int = 1) -> list[dict[str, Any]]:
    """The emails of a template once `count` went out: the notify activity runs after the
    state change the view shows, so a test that saw the state waits for the email."""
    for _ in range(200):
        if len(h.rec.emails(template)) >= count:
            break
        await asyncio.sleep(0.05)
    return h.rec.emails(template)


async def accept(h: Harness, handle: WorkflowHandle[Any, Any], doctor_id: str) -> None:
    await h.until(handle, lambda v: v.pending_offer_doctor_id == doctor_id)
    offer = h.world.accept(doctor_id)
    await handle.signal(
        CaseWorkflow.offer_answered,
        OfferAnswered(
            offer_id=offer.offer_id,
            accepted=True,
            assignment_id=offer.assignment_id,
            doctor_account_id=h.world.doctors[doctor_id],
        ),
    )
    await h.until(handle, lambda v: any(s.doctor_id == doctor_id and s.deadline_at for s in v.slots))


async def submit(h: Harness, handle: WorkflowHandle[Any, Any], doctor_id: str, report_id: str) -> None:
    h.world.reports[report_id] = h.world.doctors[doctor_id]
    await handle.execute_update(
        CaseWorkflow.submit_report,
        SubmitReport(doctor_account_id=h.world.doctors[doctor_id], report_id=report_id),
    )


def templates(h: Harness) -> list[str]:
    return [e["template"] for e in h.rec.emails()]


@pytest.mark.temporal
@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-09")
@pytest.mark.req("CASE-11")
@pytest.mark.req("CASE-15")
@pytest.mark.req("CASE-16")
@pytest.mark.req("CNS-01")
@pytest.mark.req("NOT-02")
async def test_happy_path_platform_chosen(harness: Harness) -> None:
    h = harness
    h.world.terms_accepted = False  # a new terms version since the patient's last request
    handle = await h.start()
    await h.until(handle, lambda v: v.phase is Phase.CHECKOUT and v.status is CaseStatus.AWAITING_PAYMENT)
    await h.settle(handle)
    assert not h.rec.effects("create_order"), "no order before the latest terms are accepted (CNS-01)"
    h.world.terms_accepted = True
    await handle.signal(CaseWorkflow.checkout_changed, CheckoutChanged(what="terms"))
    await h.until(handle, lambda v: v.phase is Phase.PAYMENT)
    await h.settle(handle)
    # CASE-11: nothing starts before the payment is captured.
    assert not h.rec.effects("create_offer") and not h.rec.calls("propose_assignment")
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    view = await h.until(handle, lambda v: v.status is CaseStatus.IN_REVIEW)
    deadline = view.slots[0].deadline_at
    assert deadline is not None

    # Half time: the doctor is reminded; the deadline has not moved.
    await h.forward(handle, timedelta(days=3, hours=13))
    view = await h.until(handle, lambda v: any(r.startswith("f50") for r in v.slots[0].reminders_sent))
    assert view.slots[0].deadline_at == deadline and not view.escalated

    # Only the assigned doctor may submit (validator): refused before anything happens.
    h.world.reports["rep-x"] = "acct-doc-b"
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id="acct-doc-b", report_id="rep-x")
        )
    await submit(h, handle, "doc-a", "rep-1")
    with pytest.raises(WorkflowUpdateFailedError):  # only once
        await submit(h, handle, "doc-a", "rep-1")
    result = await handle.result()
    assert result.status == "closed" and result.report_ids == ["rep-1"] and result.doctor_ids == ["doc-a"]
    await h.record(handle, "v2_happy_path")

    assert h.rec.statuses() == [
        "awaiting_payment",
        "awaiting_assignment",
        "in_review",
        "report_delivered",
        "closed",
    ]
    sent = templates(h)
    assert sent.count("payment_summary") == 0  # billing sends it on capture (tests/billing, NOT-02)
    assert sent.count("report_available") == 1  # CASE-09
    assert sent.count("satisfaction_survey") == 1  # CASE-15
    assert sent.index("report_available") < sent.index("satisfaction_survey")
    assert sent.count("doctor_deadline_reminder") == 1
    report_email = h.rec.emails("report_available")[0]
    assert report_email["recipient"] == "account:acct-patient"
    # CASE-16: consented and not opposed -> shared once; invoices issued once.
    assert list(h.rec.effects("share_report")) == [f"{handle.id}:share:rep-1"]
    assert len(h.rec.effects("issue_invoices")) == 1
    assert list(h.rec.effects("create_order")) == [f"{handle.id}:order"]
    # Every side-effect key derives from the workflow id.
    for activity, key, _ in h.rec.calls():
        assert not key or key.startswith(handle.id), (activity, key)
    # Cancelling a delivered case is refused.
    with pytest.raises(Exception):  # noqa: B017 - the workflow is closed: update refused
        await handle.execute_update(CaseWorkflow.cancel_case, CancelCase(requested_by="patient"))

    description = await handle.describe()
    assert await description.static_summary() == "Opinion request · oncology · platform chosen"
    values = {pair.key.name: pair.value for pair in description.typed_search_attributes}
    assert values["CaseStatus"] == "closed" and values["TherapeuticArea"] == "oncology"
    assert values["DoctorRef"] == "doc-a" and values["Escalated"] is False


@pytest.mark.temporal
@pytest.mark.req("CNS-08")
@pytest.mark.req("CASE-16")
async def test_objection_stops_sharing_with_treating_physician(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    h.world.report_sharing_opposed = True  # the patient objected after submitting the case
    await submit(h, handle, "doc-a", "rep-1")
    result = await handle.result()
    assert result.status == "closed"
    assert not h.rec.effects("share_report")
    assert len(h.rec.emails("report_available")) == 1


@pytest.mark.temporal
@pytest.mark.req("CASE-10")
async def test_missed_deadline_escalates_and_reassigns(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    first = (await h.view(handle)).slots[0].deadline_at
    assert first is not None

    # Seven days of silence: three reminders, then the deadline.
    await h.forward(handle, timedelta(days=7, hours=1))
    view = await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-b")
    assert view.escalated
    reminders = [e for e in h.rec.emails("doctor_deadline_reminder")]
    assert len(reminders) == 3 and {e["recipient"] for e in reminders} == {"doctor:doc-a"}
    assert len(h.rec.emails("coordinator_escalation")) == 1  # the coordinator task
    assert "escalated" in h.rec.statuses()
    assert len(h.rec.effects("reassign_case")) == 1
    ended = list(h.rec.effects("end_case_assignment").values())
    assert ended == [{"reason": "reassigned"}]  # doc-a lost access to the dossier
    values = {p.key.name: p.value for p in (await handle.describe()).typed_search_attributes}
    assert values["Escalated"] is True

    await accept(h, handle, "doc-b")
    view = await h.view(handle)
    assert view.slots[0].doctor_id == "doc-b"
    assert view.slots[0].deadline_at is not None and view.slots[0].deadline_at > first
    # The patient is told the new date; the dossier records the reassignment (activities
    # that run after the new slot shows in the view: waited for).
    for _ in range(200):
        if h.rec.emails("case_deadline_extended") and len(h.rec.effects("set_case_deadline")) == 2:
            break
        await asyncio.sleep(0.05)
    told = h.rec.emails("case_deadline_extended")
    assert len(told) == 1 and told[0]["date"] == view.slots[0].deadline_at.isoformat()
    reasons = [d["reason"] for d in h.rec.effects("set_case_deadline").values()]
    assert reasons == ["review_started", "reassigned"]
    # The released doctor can no longer submit.
    h.world.reports["late"] = "acct-doc-a"
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id="acct-doc-a", report_id="late")
        )
    await submit(h, handle, "doc-b", "rep-b")
    result = await handle.result()
    assert result.status == "closed" and result.doctor_ids == ["doc-b"]
    await h.record(handle, "v2_missed_deadline_reassigned")
    values = {p.key.name: p.value for p in (await handle.describe()).typed_search_attributes}
    assert values["DoctorRef"] == "doc-b"


@pytest.mark.temporal
@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-10")
@pytest.mark.req("NOT-02")
async def test_patient_chosen_doctor_gets_the_announced_delay(harness: Harness) -> None:
    h = harness
    h.world.mode = "patient_chosen"
    h.world.chosen_doctor_ids = ["doc-c"]
    h.world.quoted_delay = timedelta(days=10)
    handle = await h.start()
    await pay_by_card(h, handle)
    view = await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-c")
    # The patient who picked the doctor is emailed the expected delay (CASE-10, NOT-02).
    delay = await emailed(h, "expected_delay")
    assert len(delay) == 1 and view.expected_delivery_at is not None
    assert delay[0]["date"] == view.expected_delivery_at.isoformat()
    assert delay[0]["recipient"] == "account:acct-patient"
    assert not h.rec.calls("propose_assignment")  # nobody else is picked for them
    await accept(h, handle, "doc-c")
    view = await h.view(handle)
    assert view.slots[0].deadline_at == view.expected_delivery_at  # the announced date, not 7 days

    # No reassignment behind the patient's back: at the deadline, an extension they are told about.
    await h.forward(handle, timedelta(days=10, hours=1))
    view = await h.until(handle, lambda v: v.slots[0].extensions == 1)
    assert not h.rec.effects("reassign_case")
    assert len(await emailed(h, "coordinator_escalation")) == 1
    extended = await emailed(h, "case_deadline_extended")
    assert len(extended) == 1 and extended[0]["date"] == view.slots[0].deadline_at.isoformat()  # type: ignore[union-attr]
    await submit(h, handle, "doc-c", "rep-c")
    assert (await handle.result()).status == "closed"


@pytest.mark.temporal
@pytest.mark.req("CASE-01")
async def test_decline_then_silence_then_accept(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-a")
    offer = h.world.decline("doc-a")
    await handle.signal(CaseWorkflow.offer_answered, OfferAnswered(offer_id=offer.offer_id, accepted=False))
    await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-b")
    # doc-b stays silent past the response time: the offer expires, the next doctor is asked.
    await h.forward(handle, timedelta(hours=25))
    await accept(h, handle, "doc-c")
    assert h.world.offers["offer-doc-b"].status == "expired"
    assert list(h.rec.effects("expire_offer")) == [f"{handle.id}:expire:offer-doc-b"]
    offers = [e["recipient"] for e in h.rec.emails("doctor_new_offer")]
    assert offers == ["doctor:doc-a", "doctor:doc-b", "doctor:doc-c"]
    await submit(h, handle, "doc-c", "rep-1")
    result = await handle.result()
    assert result.doctor_ids == ["doc-c"]
    assert len(h.rec.effects("record_assignment")) == 1


@pytest.mark.temporal
@pytest.mark.req("CASE-11")
async def test_payment_failure_never_starts_the_service(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await h.until(handle, lambda v: v.phase is Phase.PAYMENT)
    # A refused card, then an expired coverage code: still awaiting payment.
    await handle.execute_update(CaseWorkflow.start_card_payment, StartCardPayment())
    h.world.payment = "refused"
    await handle.signal(CaseWorkflow.payment_notified, PaymentNotified(payment_attempt_id="pay-1"))
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(CaseWorkflow.apply_coverage_code, ApplyCoverageCode(code="COVER-EXPIRED"))
    await handle.execute_update(CaseWorkflow.start_card_payment, StartCardPayment())  # a new attempt
    await h.settle(handle)
    view = await h.view(handle)
    assert view.phase is Phase.PAYMENT and view.status is CaseStatus.AWAITING_PAYMENT
    assert len(h.rec.effects("start_card_payment")) == 2  # two attempts, two keys
    # The checkout window closes: cancelled, nothing charged, so nothing refunded.
    await h.forward(handle, timedelta(days=15))
    result = await handle.result()
    assert result.status == "cancelled" and result.cancel_reason == "payment_not_received"
    assert not result.refunded and not h.rec.effects("refund")
    assert not h.rec.effects("create_offer") and not h.rec.calls("propose_assignment")
    assert "awaiting_assignment" not in h.rec.statuses()
    assert len(h.rec.emails("case_cancelled")) == 1
    assert not h.rec.emails("payment_summary")


@pytest.mark.temporal
@pytest.mark.req("CASE-11")
async def test_coverage_code_starts_the_service_without_card(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await h.until(handle, lambda v: v.phase is Phase.PAYMENT)
    applied = await handle.execute_update(
        CaseWorkflow.apply_coverage_code, ApplyCoverageCode(code="COVER-OK-1")
    )
    assert applied.partner_id == "partner-1"
    view = await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-a")
    assert view.funding.value == "coverage"
    assert not h.rec.emails("payment_summary") and not h.rec.effects("start_card_payment")


@pytest.mark.temporal
@pytest.mark.req("CASE-11")
async def test_cancellation_withdraws_the_offer_and_refunds(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await h.until(handle, lambda v: v.pending_offer_doctor_id == "doc-a")
    accepted = await handle.execute_update(CaseWorkflow.cancel_case, CancelCase(requested_by="patient"))
    assert accepted.refund_expected
    result = await handle.result()
    assert result.status == "cancelled" and result.cancel_reason == "patient_request" and result.refunded
    await h.record(handle, "v2_cancelled_with_refund")
    assert h.world.offers["offer-doc-a"].status == "withdrawn"
    assert list(h.rec.effects("refund")) == [f"{handle.id}:refund"]
    assert len(h.rec.emails("case_cancelled")) == 0  # billing emails the refunded amount itself
    assert h.rec.statuses()[-1] == "cancelled"
    # Compensations in reverse order of registration: offers, assignments, then the refund.
    order = [a for a, _, _ in h.rec.calls() if a in ("withdraw_offer", "refund_if_captured")]
    assert order == ["withdraw_offer", "refund_if_captured"]


@pytest.mark.temporal
@pytest.mark.req("CASE-11")
async def test_operator_cancel_during_review_releases_and_refunds(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    await handle.cancel()
    with pytest.raises(Exception):  # noqa: B017 - WorkflowFailureError(CancelledError)
        await handle.result()
    assert len(h.rec.effects("release_case_assignment")) == 1
    assert len(h.rec.effects("refund")) == 1
    assert len(h.rec.emails("case_cancelled")) == 0  # billing emails the refunded amount itself
    assert h.rec.statuses()[-1] == "cancelled"


@pytest.mark.temporal
@pytest.mark.req("CASE-06")
async def test_request_for_information_pauses_the_clock(harness: Harness) -> None:
    h = harness
    handle = await h.start()
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    deadline = (await h.view(handle)).slots[0].deadline_at
    assert deadline is not None

    await h.forward(handle, timedelta(days=2))
    await handle.signal(
        CaseWorkflow.information_requested,
        InformationRequested(request_id="req-1", doctor_account_id="acct-doc-a"),
    )
    view = await h.until(handle, lambda v: v.status is CaseStatus.AWAITING_INFORMATION)
    assert view.slots[0].paused and view.deadline_at is None
    # Three paused days: no half-time reminder, no escalation.
    await h.forward(handle, timedelta(days=3))
    await h.settle(handle)
    assert not h.rec.emails("doctor_deadline_reminder")
    await handle.signal(CaseWorkflow.information_provided, InformationProvided(request_id="req-1"))
    view = await h.until(handle, lambda v: v.status is CaseStatus.IN_REVIEW)
    moved_by = view.slots[0].deadline_at - deadline  # type: ignore[operator]
    assert abs(moved_by - timedelta(days=3)) < timedelta(seconds=30)  # by the time paused
    messages = [e["recipient"] for e in h.rec.emails("new_secure_message")]
    assert messages == ["account:acct-patient", "doctor:doc-a"]
    moved = [d for d in h.rec.effects("set_case_deadline").values() if d["reason"] == "information_requested"]
    assert len(moved) == 1

    # An unanswered request pauses at most 14 days, then the clock runs again.
    await handle.signal(
        CaseWorkflow.information_requested,
        InformationRequested(request_id="req-2", doctor_account_id="acct-doc-a"),
    )
    await h.until(handle, lambda v: v.slots[0].paused)
    await h.forward(handle, timedelta(days=14, hours=1))
    view = await h.until(handle, lambda v: not v.slots[0].paused)
    capped = view.slots[0].deadline_at - deadline - moved_by  # type: ignore[operator]
    assert capped == timedelta(days=14)
    assert not view.escalated
    await submit(h, handle, "doc-a", "rep-1")
    assert (await handle.result()).status == "closed"
    await h.record(handle, "v2_information_request")


@pytest.mark.temporal
@pytest.mark.req("CASE-13")
async def test_collegial_opinion_goes_to_two_doctors(harness: Harness) -> None:
    h = harness
    h.world.requested_doctor_count = 2
    handle = await h.start()
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    await accept(h, handle, "doc-b")
    await submit(h, handle, "doc-a", "rep-a")
    view = await h.view(handle)
    assert view.phase is Phase.REVIEW  # still waiting for the second opinion
    await submit(h, handle, "doc-b", "rep-b")
    result = await handle.result()
    assert sorted(result.report_ids) == ["rep-a", "rep-b"]
    assert len(h.rec.emails("report_available")) == 2
    assert list(h.rec.effects("issue_invoices").values()) == [{"doctors": ["doc-a", "doc-b"]}]


@pytest.mark.temporal
async def test_long_case_continues_as_new_and_keeps_its_state(harness: Harness) -> None:
    from workflows.case.models import CasePolicy

    h = harness
    handle = await h.start(policy=CasePolicy(continue_as_new_after_events=40))
    await pay_by_card(h, handle)
    await accept(h, handle, "doc-a")
    await h.forward(handle, timedelta(days=6, hours=1))
    view = await h.until(handle, lambda v: len(v.slots[0].reminders_sent) == 3)
    assert view.runs >= 2
    await submit(h, handle, "doc-a", "rep-1")
    result = await handle.result()
    assert result.status == "closed"
    await h.record(handle, "v2_continued_as_new_last_run")
    assert len(h.rec.effects("create_order")) == 1 and len(h.rec.emails("doctor_deadline_reminder")) == 3
