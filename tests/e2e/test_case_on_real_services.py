"""The case workflow drives a case end to end on the real services: identity (terms,
consents), dossier (case, forms, report), billing (order, coverage code, invoices under
the doctor's mandate, cancellation), matching (proposal, offer, the doctor's accept,
assignment) and notifications (emails delivered over SMTP), on the Temporal dev server.

What is asserted is what the services themselves hold, not what the workflow believes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2
from secondopinion.dossier.v1 import dossier_pb2
from secondopinion.matching.v1 import matching_pb2
from secondopinion.notifications.v1 import notifications_pb2
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError

from tests.e2e.conftest import Doctor, Person, World, eventually, queue_name, seeded_world, settle, view_when
from tests.support.stack import platform_stack
from workflows.case.models import (
    ApplyCoverageCode,
    CancelCase,
    CasePolicy,
    CaseStatus,
    CaseWorkflowInput,
    CheckoutChanged,
    Phase,
    SubmitReport,
)
from workflows.case.starter import start_case_workflow
from workflows.case.workflow import CaseWorkflow
from workflows.temporal_client import with_data_converter

N = notifications_pb2


async def expect_code(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert error.value.code() == code, error.value.details()


async def covered_case_in_review(
    world: World,
    client: Client,
    queue: str,
    patient: Person,
    *doctors: Doctor,
    policy: CasePolicy | None = None,
) -> tuple[str, WorkflowHandle[Any, Any], list[matching_pb2.AcceptOfferResponse]]:
    """Checkout, coverage, the platform's pick, the doctors' accepts: the case in review.
    One doctor per `doctors` is asked (several: a collegial opinion, CASE-13)."""
    code = await world.coverage_code()
    case = await world.create_case(patient, doctor_count=len(doctors))
    handle = await start_case_workflow(
        client,
        CaseWorkflowInput(
            case_id=case.case_id,
            therapeutic_area="oncology",
            doctor_choice_mode="platform_chosen",
            policy=policy or CasePolicy(),
        ),
        queue,
    )
    # Terms and consents are there, the forms are not: the checkout waits, nothing is ordered.
    await view_when(handle, lambda v: v.phase is Phase.CHECKOUT and v.status is CaseStatus.AWAITING_PAYMENT)
    await settle(handle)
    assert (await handle.query(CaseWorkflow.state)).phase is Phase.CHECKOUT
    billing = world.billing(world.worker)
    await expect_code(
        billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id)), grpc.StatusCode.NOT_FOUND
    )
    with pytest.raises(WorkflowUpdateFailedError):
        await handle.execute_update(CaseWorkflow.apply_coverage_code, ApplyCoverageCode(code=code))
    await world.submit_forms(patient, case.case_id)
    await handle.signal(CaseWorkflow.checkout_changed, CheckoutChanged(what="forms"))
    view = await view_when(handle, lambda v: v.phase is Phase.PAYMENT)
    # CASE-11: an order awaits payment; no doctor is asked before the coverage is validated.
    order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id))).order
    assert order.order_id == view.order_id and order.status == billing_pb2.ORDER_STATUS_AWAITING_PAYMENT
    offers = await world.matching(world.worker).ListOffers(
        matching_pb2.ListOffersRequest(case_id=case.case_id)
    )
    assert not offers.offers
    applied = await handle.execute_update(CaseWorkflow.apply_coverage_code, ApplyCoverageCode(code=code))
    assert applied.partner_id == world.partner_id and applied.order_id == order.order_id
    # The platform picks the doctors (CASE-01), one offer at a time; each accepts in matching.
    accepted = []
    waiting = {doctor.doctor_id: doctor for doctor in doctors}
    matching = world.matching(world.worker)

    async def next_offer() -> matching_pb2.Offer | None:
        pending = await matching.ListOffers(
            matching_pb2.ListOffersRequest(case_id=case.case_id, statuses=[matching_pb2.OFFER_STATUS_PENDING])
        )
        return next((o for o in pending.offers if o.doctor_id in waiting), None)

    while waiting:
        offer = await eventually(next_offer, "an offer to one of the doctors")
        accepted.append(await world.doctor_accepts(waiting.pop(offer.doctor_id), handle, case.case_id))
    await view_when(handle, lambda v: v.status is CaseStatus.IN_REVIEW and v.deadline_at is not None)
    return case.case_id, handle, accepted


@pytest.mark.temporal
@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-09")
@pytest.mark.req("CASE-11")
@pytest.mark.req("DOC-04")
async def test_a_covered_case_runs_from_sign_up_to_the_delivered_opinion_on_the_real_services(
    tmp_path: Path, backend: str, temporal_client: Client, smtp_catcher: Path
) -> None:
    queue = queue_name("e2e")
    async with (
        platform_stack(
            tmp_path, backend, temporal=temporal_client, task_queue=queue, with_gateway=False
        ) as stack,
        seeded_world(stack) as world,
    ):
        assert stack.temporal_settings is not None
        client = with_data_converter(temporal_client, stack.temporal_settings)
        doctor = await world.referent_doctor("Claire", "1000000001")
        patient = await world.patient_signs_up("lea")
        case_id, handle, (accepted,) = await covered_case_in_review(world, client, queue, patient, doctor)

        # The assignment gave the doctor the dossier (DOC-02); the deadline is recorded there.
        dossier = world.dossier(world.worker)
        in_review = (await dossier.GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))).case
        assert in_review.status == dossier_pb2.CASE_STATUS_IN_REVIEW and in_review.HasField("deadline_at")
        assert list(in_review.assigned_doctor_ids) == [doctor.doctor_id]

        # DOC-04: the report is written in the dossier, then submitted through the update;
        # nobody but the assigned doctor may submit it.
        report_id = await world.doctor_writes_report(doctor, case_id)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(
                CaseWorkflow.submit_report,
                SubmitReport(doctor_account_id=patient.account_id, report_id=report_id),
            )
        delivered = await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id=doctor.account_id, report_id=report_id)
        )
        assert delivered.report_id == report_id
        with pytest.raises(WorkflowUpdateFailedError):  # once
            await handle.execute_update(
                CaseWorkflow.submit_report,
                SubmitReport(doctor_account_id=doctor.account_id, report_id=report_id),
            )
        result = await asyncio.wait_for(handle.result(), timeout=60)
        assert result.status == "closed" and result.report_ids == [report_id]
        assert result.doctor_ids == [doctor.doctor_id]

        # Dossier: closed, the report sealed and readable by the patient, the access ended.
        case = (await dossier.GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))).case
        assert case.status == dossier_pb2.CASE_STATUS_CLOSED
        mine = world.dossier(patient.tokens())
        reports = (await mine.ListCaseReports(dossier_pb2.ListCaseReportsRequest(case_id=case_id))).reports
        assert [(r.report_id, r.status) for r in reports] == [(report_id, dossier_pb2.REPORT_STATUS_SEALED)]
        assert reports[0].author_doctor_id == doctor.doctor_id and reports[0].seal_sha256_hex
        access = (
            await dossier.ListCaseAssignments(dossier_pb2.ListCaseAssignmentsRequest(case_id=case_id))
        ).assignments
        assert [(a.assignment_id, a.end_reason) for a in access] == [
            (accepted.assignment.assignment_id, dossier_pb2.ASSIGNMENT_END_REASON_COMPLETED)
        ]
        await expect_code(
            world.dossier(doctor.tokens()).GetCase(dossier_pb2.GetCaseRequest(case_id=case_id)),
            grpc.StatusCode.NOT_FOUND,
        )

        # Matching: one offer, accepted; one assignment, released as completed.
        matching = world.matching(world.worker)
        offers = (await matching.ListOffers(matching_pb2.ListOffersRequest(case_id=case_id))).offers
        assert [(o.doctor_id, o.status) for o in offers] == [
            (doctor.doctor_id, matching_pb2.OFFER_STATUS_ACCEPTED)
        ]
        assignments = (
            await matching.ListAssignments(
                matching_pb2.ListAssignmentsRequest(case_id=case_id, include_released=True)
            )
        ).assignments
        assert [(a.assignment_id, a.doctor_id, a.release_reason) for a in assignments] == [
            (accepted.assignment.assignment_id, doctor.doctor_id, matching_pb2.RELEASE_REASON_COMPLETED)
        ]
        assert assignments[0].doctor_account_id == doctor.account_id

        # Billing: covered by the partner, invoiced to the partner under the doctor's mandate.
        billing = world.billing(world.worker)
        order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))).order
        assert order.status == billing_pb2.ORDER_STATUS_COVERED and order.partner_id == world.partner_id
        invoices = (
            await billing.ListInvoices(billing_pb2.ListInvoicesRequest(order_id=order.order_id))
        ).invoices
        by_issuer = {i.issuer_kind: i for i in invoices}
        assert len(invoices) == 2 and set(by_issuer) == {
            billing_pb2.ISSUER_KIND_DOCTOR_UNDER_MANDATE,
            billing_pb2.ISSUER_KIND_PLATFORM,
        }
        doctor_invoice = by_issuer[billing_pb2.ISSUER_KIND_DOCTOR_UNDER_MANDATE]
        assert doctor_invoice.issuer_doctor_id == doctor.doctor_id
        assert doctor_invoice.billing_mandate_id == doctor.mandate_id
        assert all(i.recipient_partner_id == world.partner_id for i in invoices)
        assert sum(i.total_amount_cents for i in invoices) == order.total_amount_cents

        # Notifications: each email once, delivered; no health data in what the patient got.
        async def report_email() -> list[notifications_pb2.OutboxMessage]:
            return await world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE)

        ready = await eventually(report_email, "the report-available email delivered")
        assert len(ready) == 1  # CASE-09
        assert case_id in ready[0].rendered_text and "chimiothérapie" not in ready[0].rendered_text
        keyed = await world.notification_for_key(
            "worker", f"case-{case_id}:email:report-available:{report_id}"
        )
        assert keyed == ready[0].notification_id
        status = await world.notifications(world.worker).GetNotificationStatus(
            N.GetNotificationStatusRequest(notification_id=keyed)
        )
        assert status.status == N.DELIVERY_STATUS_SENT
        assert status.template == N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE
        survey = await eventually(
            lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_SATISFACTION_SURVEY), "the survey"
        )
        offered = await world.delivered(doctor.email, N.NOTIFICATION_TEMPLATE_DOCTOR_NEW_OFFER)
        assert len(survey) == 1 and len(offered) == 1
        # A covered case: no payment summary, no invoice email to the patient (the partner pays).
        patient_templates = sorted(m.template for m in await world.outbox() if m.recipient == patient.email)
        assert patient_templates == sorted(
            [N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE, N.NOTIFICATION_TEMPLATE_SATISFACTION_SURVEY]
        )


@pytest.mark.temporal
@pytest.mark.req("CASE-11")
async def test_a_covered_case_cancelled_after_assignment_releases_the_doctor_and_cancels_the_order(
    tmp_path: Path, backend: str, temporal_client: Client, smtp_catcher: Path
) -> None:
    queue = queue_name("e2e-cancel")
    async with (
        platform_stack(
            tmp_path, backend, temporal=temporal_client, task_queue=queue, with_gateway=False
        ) as stack,
        seeded_world(stack) as world,
    ):
        assert stack.temporal_settings is not None
        client = with_data_converter(temporal_client, stack.temporal_settings)
        doctor = await world.referent_doctor("Karim", "1000000002")
        patient = await world.patient_signs_up("paul")
        case_id, handle, (accepted,) = await covered_case_in_review(world, client, queue, patient, doctor)

        answer = await handle.execute_update(CaseWorkflow.cancel_case, CancelCase(requested_by="patient"))
        assert answer.status is CaseStatus.CANCELLED and not answer.refund_expected  # nothing was charged
        result = await asyncio.wait_for(handle.result(), timeout=60)
        assert result.status == "cancelled" and result.cancel_reason == "patient_request"
        assert not result.report_ids

        # Matching: the assignment released as cancelled (the doctor's capacity is back).
        matching = world.matching(world.worker)
        assignments = (
            await matching.ListAssignments(
                matching_pb2.ListAssignmentsRequest(case_id=case_id, include_released=True)
            )
        ).assignments
        assert [(a.assignment_id, a.release_reason) for a in assignments] == [
            (accepted.assignment.assignment_id, matching_pb2.RELEASE_REASON_CANCELLED)
        ]
        doctor_now = (
            await matching.GetReferentDoctor(
                matching_pb2.GetReferentDoctorRequest(doctor_id=doctor.doctor_id)
            )
        ).doctor
        assert doctor_now.current_load == 0
        # Dossier: cancelled, the doctor's access ended.
        dossier = world.dossier(world.worker)
        case = (await dossier.GetCase(dossier_pb2.GetCaseRequest(case_id=case_id))).case
        assert case.status == dossier_pb2.CASE_STATUS_CANCELLED and not case.assigned_doctor_ids
        access = (
            await dossier.ListCaseAssignments(dossier_pb2.ListCaseAssignmentsRequest(case_id=case_id))
        ).assignments
        assert [a.end_reason for a in access] == [dossier_pb2.ASSIGNMENT_END_REASON_CASE_CANCELLED]
        await expect_code(
            world.dossier(doctor.tokens()).GetCase(dossier_pb2.GetCaseRequest(case_id=case_id)),
            grpc.StatusCode.NOT_FOUND,
        )
        # Billing: the covered order is cancelled, the partner is invoiced for nothing.
        billing = world.billing(world.worker)
        order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))).order
        assert order.status == billing_pb2.ORDER_STATUS_CANCELLED
        invoices = await billing.ListInvoices(billing_pb2.ListInvoicesRequest(order_id=order.order_id))
        assert not invoices.invoices
        # The patient is told, once; no report email.
        told = await eventually(
            lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_CASE_CANCELLED),
            "the cancellation email",
        )
        assert len(told) == 1
        keyed = await world.notification_for_key("worker", f"case-{case_id}:email:cancelled")
        assert keyed == told[0].notification_id
        assert not await world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE)


@pytest.mark.temporal
@pytest.mark.req("CASE-13")
@pytest.mark.req("CASE-09")
async def test_a_collegial_opinion_goes_to_two_doctors_each_invoiced_under_their_own_mandate(
    tmp_path: Path, temporal_client: Client, smtp_catcher: Path
) -> None:
    queue = queue_name("e2e-collegial")
    async with (
        platform_stack(
            tmp_path, "sqlite", temporal=temporal_client, task_queue=queue, with_gateway=False
        ) as stack,
        seeded_world(stack) as world,
    ):
        assert stack.temporal_settings is not None
        client = with_data_converter(temporal_client, stack.temporal_settings)
        claire = await world.referent_doctor("Claire", "1000000001")
        paul = await world.referent_doctor("Paul", "1000000004")
        patient = await world.patient_signs_up("ines")
        case_id, handle, accepted = await covered_case_in_review(world, client, queue, patient, claire, paul)
        assert len({a.assignment.doctor_id for a in accepted}) == 2

        first = await world.doctor_writes_report(claire, case_id)
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id=claire.account_id, report_id=first)
        )
        # One opinion in, one to come: the case stays open.
        view = await handle.query(CaseWorkflow.state)
        assert view.phase is Phase.REVIEW and [s.delivered for s in view.slots].count(True) == 1
        second = await world.doctor_writes_report(paul, case_id)
        await handle.execute_update(
            CaseWorkflow.submit_report, SubmitReport(doctor_account_id=paul.account_id, report_id=second)
        )
        result = await asyncio.wait_for(handle.result(), timeout=60)
        assert result.status == "closed" and sorted(result.report_ids) == sorted([first, second])

        reports = (
            await world.dossier(patient.tokens()).ListCaseReports(
                dossier_pb2.ListCaseReportsRequest(case_id=case_id)
            )
        ).reports
        assert {(r.author_doctor_id, r.status) for r in reports} == {
            (claire.doctor_id, dossier_pb2.REPORT_STATUS_SEALED),
            (paul.doctor_id, dossier_pb2.REPORT_STATUS_SEALED),
        }
        billing = world.billing(world.worker)
        order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case_id))).order
        assert order.doctor_count == 2 and order.status == billing_pb2.ORDER_STATUS_COVERED
        invoices = (
            await billing.ListInvoices(billing_pb2.ListInvoicesRequest(order_id=order.order_id))
        ).invoices
        under_mandate = {
            (i.issuer_doctor_id, i.billing_mandate_id)
            for i in invoices
            if i.issuer_kind == billing_pb2.ISSUER_KIND_DOCTOR_UNDER_MANDATE
        }
        assert under_mandate == {(claire.doctor_id, claire.mandate_id), (paul.doctor_id, paul.mandate_id)}
        assert len(invoices) == 3 and sum(i.total_amount_cents for i in invoices) == order.total_amount_cents
        assignments = (
            await world.matching(world.worker).ListAssignments(
                matching_pb2.ListAssignmentsRequest(case_id=case_id, include_released=True)
            )
        ).assignments
        assert sorted(a.release_reason for a in assignments) == [matching_pb2.RELEASE_REASON_COMPLETED] * 2
        # One report-available email per opinion, one survey.
        ready = await eventually(
            lambda: _at_least(world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE), 2),
            "both report emails",
        )
        assert len(ready) == 2
        survey = await eventually(
            lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_SATISFACTION_SURVEY), "the survey"
        )
        assert len(survey) == 1


async def _at_least(
    listing: Awaitable[list[notifications_pb2.OutboxMessage]], count: int
) -> list[notifications_pb2.OutboxMessage] | None:
    found = await listing
    return found if len(found) >= count else None
