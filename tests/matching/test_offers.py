"""Offers, assignments, reassignment and turnaround history (CASE-01, CASE-10, CASE-13):
accept/decline by the doctor only, capacity never exceeded, concurrent accepts settled by
the database. SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import grpc
import pytest
from secondopinion.matching.v1 import matching_pb2 as pb
from sqlalchemy import func, select

from services.matching.models import Assignment, CaseSlots, ReferentDoctor
from services.shared.auth import Role
from tests.matching.conftest import Matching, expect_status

DAY = timedelta(days=1)


def accept_request(offer: pb.Offer, key: str = "") -> pb.AcceptOfferRequest:
    return pb.AcceptOfferRequest(idempotency_key=key or f"accept:{offer.offer_id}", offer_id=offer.offer_id)


@pytest.mark.req("CASE-01")
async def test_offer_lifecycle_and_who_may_answer(matching: Matching) -> None:
    first = await matching.register(1, ["cardiology"], capacity=3)
    second = await matching.register(2, ["cardiology"], capacity=3)
    neurologist = await matching.register(3, ["neurology"], capacity=3)
    worker = matching.worker
    doctor = matching.doctor(first.account_id)
    offer = await matching.offer("case-1", first.doctor_id)
    assert offer.status == pb.OFFER_STATUS_PENDING and offer.therapeutic_area == "cardiology"
    assert not offer.HasField("closed_at")
    pending = await doctor.ListOffers(pb.ListOffersRequest(statuses=[pb.OFFER_STATUS_PENDING]))
    assert [o.offer_id for o in pending.offers] == [offer.offer_id]
    # Only the doctor offered the case answers; others do not even learn the offer exists.
    await expect_status(
        matching.doctor(second.account_id).AcceptOffer(accept_request(offer)), grpc.StatusCode.NOT_FOUND
    )
    await expect_status(
        matching.doctor(second.account_id).GetOffer(pb.GetOfferRequest(offer_id=offer.offer_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        matching.doctor(second.account_id).ListOffers(pb.ListOffersRequest(doctor_id=first.doctor_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    await expect_status(
        matching.person("p", Role.PATIENT).AcceptOffer(accept_request(offer)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(worker.AcceptOffer(accept_request(offer)), grpc.StatusCode.PERMISSION_DENIED)
    accepted = await doctor.AcceptOffer(accept_request(offer))
    assert accepted.offer.status == pb.OFFER_STATUS_ACCEPTED
    assignment = accepted.assignment
    assert assignment.case_id == "case-1" and assignment.doctor_account_id == first.account_id
    assert assignment.deadline_at == offer.review_deadline_at
    assert (await doctor.AcceptOffer(accept_request(offer))).assignment == assignment  # retried: same answer
    await expect_status(
        doctor.AcceptOffer(accept_request(offer, "other-key")), grpc.StatusCode.FAILED_PRECONDITION
    )
    got = await doctor.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=first.doctor_id))
    assert got.doctor.current_load == 1

    # Bad offers: same doctor again, outside the area, on leave, unknown, not the worker.
    assert (await matching.offer("case-1", first.doctor_id)).offer_id == offer.offer_id  # retried: replayed
    again = pb.CreateOfferRequest(
        idempotency_key="again", case_id="case-1", doctor_id=first.doctor_id, therapeutic_area="cardiology"
    )
    again.respond_by.FromDatetime(matching.clock.now + DAY)
    again.review_deadline_at.FromDatetime(matching.clock.now + 7 * DAY)
    await expect_status(worker.CreateOffer(again), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_status(matching.offer("case-2", neurologist.doctor_id), grpc.StatusCode.FAILED_PRECONDITION)
    await expect_status(matching.offer("case-2", "missing"), grpc.StatusCode.NOT_FOUND)
    await expect_status(
        matching.offer("case-2", first.doctor_id, "astrology"), grpc.StatusCode.INVALID_ARGUMENT
    )
    late = pb.CreateOfferRequest()
    late.CopyFrom(again)
    late.idempotency_key, late.case_id = "late", "case-3"
    late.respond_by.FromDatetime(matching.clock.now - DAY)
    await expect_status(worker.CreateOffer(late), grpc.StatusCode.INVALID_ARGUMENT)
    leave = pb.RecordAbsenceRequest(idempotency_key="leave", doctor_id=second.doctor_id)
    leave.starts_at.FromDatetime(matching.clock.now - DAY)
    leave.ends_at.FromDatetime(matching.clock.now + DAY)
    await matching.admin.RecordAbsence(leave)
    await expect_status(matching.offer("case-2", second.doctor_id), grpc.StatusCode.FAILED_PRECONDITION)
    as_admin = pb.CreateOfferRequest()
    as_admin.CopyFrom(again)
    as_admin.idempotency_key = "admin"
    await expect_status(matching.admin.CreateOffer(as_admin), grpc.StatusCode.PERMISSION_DENIED)

    # Decline, expire, withdraw: each only from pending.
    declined_offer = await matching.offer("case-4", first.doctor_id)
    declined = await doctor.DeclineOffer(
        pb.DeclineOfferRequest(
            idempotency_key="d-1",
            offer_id=declined_offer.offer_id,
            reason=pb.DECLINE_REASON_CONFLICT_OF_INTEREST,
        )
    )
    assert declined.offer.status == pb.OFFER_STATUS_DECLINED
    assert declined.offer.decline_reason == pb.DECLINE_REASON_CONFLICT_OF_INTEREST
    await expect_status(
        worker.ExpireOffer(pb.ExpireOfferRequest(idempotency_key="e-1", offer_id=declined_offer.offer_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    silent = await matching.offer("case-5", first.doctor_id, respond_within=timedelta(hours=2))
    matching.clock.advance(timedelta(hours=3))
    await expect_status(doctor.AcceptOffer(accept_request(silent)), grpc.StatusCode.FAILED_PRECONDITION)
    expired = await worker.ExpireOffer(pb.ExpireOfferRequest(idempotency_key="e-2", offer_id=silent.offer_id))
    assert expired.offer.status == pb.OFFER_STATUS_EXPIRED
    assert expired.offer.closed_at.ToDatetime(tzinfo=matching.clock.now.tzinfo) == matching.clock.now
    withdrawn_offer = await matching.offer("case-6", first.doctor_id)
    withdrawn = await worker.WithdrawOffer(
        pb.WithdrawOfferRequest(idempotency_key="w-1", offer_id=withdrawn_offer.offer_id)
    )
    assert withdrawn.offer.status == pb.OFFER_STATUS_WITHDRAWN
    await expect_status(
        doctor.AcceptOffer(accept_request(withdrawn_offer)), grpc.StatusCode.FAILED_PRECONDITION
    )
    by_case = await worker.ListOffers(pb.ListOffersRequest(case_id="case-1"))
    assert [o.offer_id for o in by_case.offers] == [offer.offer_id]
    newest_first = await doctor.ListOffers(pb.ListOffersRequest(page_size=2))
    rest = await doctor.ListOffers(pb.ListOffersRequest(page_size=2, page_token=newest_first.next_page_token))
    pages = [*newest_first.offers, *rest.offers]
    assert pages[0].case_id == "case-6" and not rest.next_page_token
    assert sorted(o.case_id for o in pages) == ["case-1", "case-4", "case-5", "case-6"]
    stamps = [(o.created_at.ToDatetime(), o.offer_id) for o in pages]
    assert stamps == sorted(stamps, reverse=True)
    refreshed = await doctor.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=first.doctor_id))
    assert refreshed.doctor.current_load == 1


@pytest.mark.req("CASE-01")
async def test_a_doctor_never_exceeds_capacity(matching: Matching) -> None:
    doctor = await matching.register(1, ["cardiology"], capacity=1)
    as_doctor = matching.doctor(doctor.account_id)
    first = await matching.offer("case-1", doctor.doctor_id)
    second = await matching.offer("case-2", doctor.doctor_id)
    assignment = (await as_doctor.AcceptOffer(accept_request(first))).assignment
    details = await expect_status(
        as_doctor.AcceptOffer(accept_request(second)), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert "capacity" in details
    await expect_status(matching.offer("case-3", doctor.doctor_id), grpc.StatusCode.FAILED_PRECONDITION)
    released = await matching.worker.ReleaseAssignment(
        pb.ReleaseAssignmentRequest(
            idempotency_key="r-1", assignment_id=assignment.assignment_id, reason=pb.RELEASE_REASON_CANCELLED
        )
    )
    assert released.assignment.release_reason == pb.RELEASE_REASON_CANCELLED
    # The refused accept left the offer pending: it can be accepted now that a slot is free.
    assert (
        await as_doctor.AcceptOffer(accept_request(second, "retry"))
    ).offer.status == pb.OFFER_STATUS_ACCEPTED


async def _outcomes(calls: list[Any]) -> tuple[int, list[grpc.StatusCode]]:
    results = await asyncio.gather(*calls, return_exceptions=True)
    losses = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, grpc.aio.AioRpcError)]
    assert not others, others
    return len(results) - len(losses), losses


@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-13")
async def test_concurrent_accepts_never_both_win(matching: Matching, sessions: Any) -> None:
    """Many accepts at once: one per offer, `capacity` per doctor, `doctors_needed` per case."""
    busy = await matching.register(1, ["cardiology"], capacity=2)
    others = [await matching.register(i, ["cardiology"], capacity=5) for i in range(2, 7)]
    loser_codes = {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED}

    # Without doctors_needed a case takes several doctors (up to the platform maximum).
    both = [await matching.offer("two-doctors", d.doctor_id) for d in others[3:]]
    for doctor, offer in zip(others[3:], both, strict=True):
        await matching.doctor(doctor.account_id).AcceptOffer(accept_request(offer))
    await expect_status(
        matching.offer("two-doctors", others[2].doctor_id, doctors_needed=1),
        grpc.StatusCode.FAILED_PRECONDITION,
    )

    # The same offer accepted from several devices at once (different keys).
    offer = await matching.offer("same-offer", others[0].doctor_id)
    stub = matching.doctor(others[0].account_id)
    wins, losses = await _outcomes([stub.AcceptOffer(accept_request(offer, f"k-{i}")) for i in range(8)])
    assert wins == 1 and set(losses) <= loser_codes

    # Eight cases offered to a doctor who takes two: exactly two accepts win.
    offers = [await matching.offer(f"case-{i}", busy.doctor_id) for i in range(8)]
    stub = matching.doctor(busy.account_id)
    wins, losses = await _outcomes([stub.AcceptOffer(accept_request(o)) for o in offers])
    assert wins == 2 and set(losses) <= loser_codes

    # One case offered to five doctors at once, needing two of them: two win.
    broadcast = [await matching.offer("collegial", d.doctor_id, doctors_needed=2) for d in others]
    wins, losses = await _outcomes(
        [
            matching.doctor(d.account_id).AcceptOffer(accept_request(o))
            for d, o in zip(others, broadcast, strict=True)
        ]
    )
    assert wins == 2 and set(losses) <= loser_codes

    async with sessions() as session:
        counts = dict(
            (
                await session.execute(
                    select(Assignment.doctor_id, func.count())
                    .where(Assignment.released_at.is_(None))
                    .group_by(Assignment.doctor_id)
                )
            ).all()
        )
        for doctor in await session.scalars(select(ReferentDoctor)):
            assert doctor.current_load == counts.get(doctor.doctor_id, 0) <= doctor.max_concurrent_cases
        assert counts[busy.doctor_id] == 2
        slots = await session.get(CaseSlots, "collegial")
        assert slots is not None and slots.assigned_count == 2
        collegial = await session.scalar(
            select(func.count()).select_from(Assignment).where(Assignment.case_id == "collegial")
        )
        assert collegial == 2


@pytest.mark.req("CASE-10")
async def test_reassignment_excludes_every_doctor_already_tried(matching: Matching) -> None:
    a, b, c = [await matching.register(i, ["oncology"], capacity=3) for i in range(1, 4)]
    worker = matching.worker
    offer_b = await matching.offer("case-1", b.doctor_id, "oncology", doctors_needed=1)
    await matching.doctor(b.account_id).DeclineOffer(
        pb.DeclineOfferRequest(idempotency_key="d", offer_id=offer_b.offer_id)
    )
    offer_a = await matching.offer("case-1", a.doctor_id, "oncology")
    assignment = (await matching.doctor(a.account_id).AcceptOffer(accept_request(offer_a))).assignment
    # The case has its doctor: a further offer is refused.
    await expect_status(
        matching.offer("case-1", c.doctor_id, "oncology"), grpc.StatusCode.FAILED_PRECONDITION
    )
    matching.clock.advance(5 * DAY)

    def reassign(key: str, **fields: Any) -> pb.ReassignCaseRequest:
        values: dict[str, Any] = {
            "idempotency_key": key,
            "case_id": "case-1",
            "assignment_id": assignment.assignment_id,
            "reason": pb.REASSIGNMENT_REASON_DEADLINE_AT_RISK,
            "therapeutic_area": "oncology",
        }
        values.update(fields)
        return pb.ReassignCaseRequest(**values)

    await expect_status(worker.ReassignCase(reassign("r-0", reason=0)), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(worker.ReassignCase(reassign("r-0b", case_id="case-2")), grpc.StatusCode.NOT_FOUND)
    await expect_status(matching.admin.ReassignCase(reassign("r-0c")), grpc.StatusCode.PERMISSION_DENIED)
    response = await worker.ReassignCase(reassign("r-1"))
    assert response.released_assignment.release_reason == pb.RELEASE_REASON_REASSIGNED
    assert [x.doctor_id for x in response.proposal.candidates] == [c.doctor_id]
    assert await worker.ReassignCase(reassign("r-1")) == response  # retried step: same answer
    load = await worker.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=a.doctor_id))
    assert load.doctor.current_load == 0
    # Nothing active to release, C named as tried by the workflow: everyone was tried.
    none = await worker.ReassignCase(reassign("r-2", assignment_id="", tried_doctor_ids=[c.doctor_id]))
    assert not none.HasField("released_assignment")
    assert none.no_doctor_available.reason == pb.UNAVAILABILITY_REASON_ALL_TRIED
    # The assignment was already released: nothing more to release, a replacement is proposed.
    after = await worker.ReassignCase(reassign("r-3"))
    assert not after.HasField("released_assignment")
    assert [x.doctor_id for x in after.proposal.candidates] == [c.doctor_id]
    stats = await worker.GetDoctorTurnaroundStats(pb.GetDoctorTurnaroundStatsRequest(doctor_id=a.doctor_id))
    assert stats.reassigned_count == 1 and stats.completed_count == 0
    declines = await worker.GetDoctorTurnaroundStats(
        pb.GetDoctorTurnaroundStatsRequest(doctor_id=b.doctor_id)
    )
    assert declines.declined_offer_count == 1


@pytest.mark.req("CASE-10")
async def test_completed_assignments_feed_the_turnaround_history(matching: Matching) -> None:
    doctor = await matching.register(1, ["cardiology"], capacity=3)
    other = await matching.register(2, ["cardiology"], capacity=3)
    worker = matching.worker
    as_doctor = matching.doctor(doctor.account_id)
    durations = [DAY, 2 * DAY, 9 * DAY]  # the last one misses its 7-day deadline
    for index, duration in enumerate(durations):
        offer = await matching.offer(f"case-{index}", doctor.doctor_id)
        assignment = (await as_doctor.AcceptOffer(accept_request(offer))).assignment
        matching.clock.advance(duration)
        await worker.ReleaseAssignment(
            pb.ReleaseAssignmentRequest(
                idempotency_key=f"done-{index}",
                assignment_id=assignment.assignment_id,
                reason=pb.RELEASE_REASON_COMPLETED,
            )
        )
    await expect_status(
        worker.ReleaseAssignment(
            pb.ReleaseAssignmentRequest(
                idempotency_key="again",
                assignment_id=assignment.assignment_id,
                reason=pb.RELEASE_REASON_COMPLETED,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    await expect_status(
        worker.ReleaseAssignment(
            pb.ReleaseAssignmentRequest(idempotency_key="x", assignment_id=assignment.assignment_id)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    stats = await as_doctor.GetDoctorTurnaroundStats(
        pb.GetDoctorTurnaroundStatsRequest(doctor_id=doctor.doctor_id)
    )
    assert stats.completed_count == 3 and stats.on_time_count == 2
    assert stats.median_turnaround.ToTimedelta() == 2 * DAY
    assert stats.p90_turnaround.ToTimedelta() == 9 * DAY
    await expect_status(
        matching.doctor(other.account_id).GetDoctorTurnaroundStats(
            pb.GetDoctorTurnaroundStatsRequest(doctor_id=doctor.doctor_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    registry = await worker.GetReferentDoctor(pb.GetReferentDoctorRequest(doctor_id=doctor.doctor_id))
    assert registry.doctor.median_turnaround.ToTimedelta() == 2 * DAY and registry.doctor.current_load == 0
    # The measured history now drives the expected delay (2 days instead of the 3-day default).
    quote = await worker.QuoteExpectedDelay(
        pb.QuoteExpectedDelayRequest(
            therapeutic_area="cardiology", doctor_ids=[doctor.doctor_id, other.doctor_id]
        )
    )
    assert [q.expected_delay.ToTimedelta() for q in quote.quotes] == [2 * DAY, 3 * DAY]
    pick = await worker.ProposeAssignment(
        pb.ProposeAssignmentRequest(case_id="n", therapeutic_area="cardiology")
    )
    assert pick.proposal.candidates[0].doctor_id == doctor.doctor_id
    assert pb.SELECTION_REASON_FAST_TURNAROUND in pick.proposal.candidates[0].reasons
    history = await as_doctor.ListAssignments(pb.ListAssignmentsRequest(include_released=True))
    assert [a.case_id for a in history.assignments] == ["case-0", "case-1", "case-2"]
    assert not (await as_doctor.ListAssignments(pb.ListAssignmentsRequest())).assignments
    by_case = await worker.ListAssignments(pb.ListAssignmentsRequest(case_id="case-1", include_released=True))
    assert [a.doctor_id for a in by_case.assignments] == [doctor.doctor_id]
    # Outside the 90-day window the history no longer counts.
    old = pb.GetDoctorTurnaroundStatsRequest(doctor_id=doctor.doctor_id)
    old.period_end.FromDatetime(matching.clock.now + 200 * DAY)
    assert (await worker.GetDoctorTurnaroundStats(old)).completed_count == 0
