"""Choosing doctors (CASE-01, CASE-10, CASE-13): platform picks with reasons and a typed
"no one available", and expected delays for patient-chosen doctors. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from secondopinion.matching.v1 import matching_pb2 as pb

from services.shared.auth import Role
from tests.matching.conftest import Matching, expect_status

DAY = timedelta(days=1)
R = pb.SelectionReason


async def accept(
    matching: Matching, case_id: str, doctor: pb.ReferentDoctor, area: str = "cardiology"
) -> None:
    offer = await matching.offer(case_id, doctor.doctor_id, area)
    await matching.doctor(doctor.account_id).AcceptOffer(
        pb.AcceptOfferRequest(idempotency_key=f"accept:{offer.offer_id}", offer_id=offer.offer_id)
    )


async def away(matching: Matching, doctor: pb.ReferentDoctor, start: timedelta, end: timedelta) -> None:
    request = pb.RecordAbsenceRequest(
        idempotency_key=f"leave:{doctor.doctor_id}:{start}", doctor_id=doctor.doctor_id
    )
    request.starts_at.FromDatetime(matching.clock.now + start)
    request.ends_at.FromDatetime(matching.clock.now + end)
    await matching.admin.RecordAbsence(request)


def propose(area: str = "cardiology", **fields: Any) -> pb.ProposeAssignmentRequest:
    return pb.ProposeAssignmentRequest(case_id="case-x", therapeutic_area=area, **fields)


@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-10")
async def test_platform_pick_spreads_load_within_seven_days_and_says_why(matching: Matching) -> None:
    doctors = [await matching.register(i, ["cardiology"], capacity=4) for i in range(1, 5)]
    await matching.register(9, ["neurology"], capacity=4)
    # Loads: doctor 1 has 2 cases, doctor 2 one, doctors 3 and 4 none.
    await accept(matching, "c-1", doctors[0])
    await accept(matching, "c-2", doctors[0])
    await accept(matching, "c-3", doctors[1])
    worker = matching.worker
    response = await worker.ProposeAssignment(propose(alternate_count=3))
    assert response.WhichOneof("outcome") == "proposal"
    idle = sorted([doctors[2].doctor_id, doctors[3].doctor_id])
    order = [c.doctor_id for c in (*response.proposal.candidates, *response.proposal.alternates)]
    assert order == [*idle, doctors[1].doctor_id, doctors[0].doctor_id]  # least loaded first, id tie-break
    best = response.proposal.candidates[0]
    assert best.rank == 1 and best.current_load == 0 and best.max_concurrent_cases == 4
    assert list(best.reasons) == [
        R.SELECTION_REASON_COVERS_AREA,
        R.SELECTION_REASON_PROJECTED_WITHIN_TARGET,
        R.SELECTION_REASON_LOW_LOAD,
        R.SELECTION_REASON_TIE_BREAK,
    ]
    assert (
        best.projected_delivery_at.ToDatetime(tzinfo=matching.clock.now.tzinfo)
        == matching.clock.now + 3 * DAY
    )
    second = response.proposal.alternates[0]
    assert (
        R.SELECTION_REASON_TIE_BREAK not in second.reasons and R.SELECTION_REASON_LOW_LOAD in second.reasons
    )
    assert R.SELECTION_REASON_LOW_LOAD not in response.proposal.alternates[2].reasons
    # Deterministic: the same question gets the same answer.
    assert await worker.ProposeAssignment(propose(alternate_count=3)) == response
    # Pending offers count as load: offering the best doctor moves them down.
    await matching.offer("c-4", best.doctor_id)
    again = await worker.ProposeAssignment(propose())
    assert again.proposal.candidates[0].doctor_id == idle[1]
    # Excluded doctors are never picked.
    excluded = await worker.ProposeAssignment(propose(excluded_doctor_ids=idle))
    assert excluded.proposal.candidates[0].doctor_id == doctors[1].doctor_id


@pytest.mark.req("CASE-01")
async def test_preferences_for_sub_specialty_and_language_come_first(matching: Matching) -> None:
    await matching.register(1, ["oncology"], capacity=4)
    specialist = await matching.register(2, ["oncology"], capacity=4, sub_specialties=["thoracic"])
    speaker = await matching.register(3, ["oncology"], capacity=4, languages=["en"])
    await accept(matching, "c-1", specialist, "oncology")
    await accept(matching, "c-2", speaker, "oncology")
    worker = matching.worker
    by_sub = await worker.ProposeAssignment(propose("oncology", sub_specialty="thoracic"))
    chosen = by_sub.proposal.candidates[0]
    assert chosen.doctor_id == specialist.doctor_id
    assert R.SELECTION_REASON_COVERS_SUB_SPECIALTY in chosen.reasons
    assert R.SELECTION_REASON_LOW_LOAD not in chosen.reasons  # chosen for the expertise, not the load
    by_language = await worker.ProposeAssignment(propose("oncology", language="en"))
    assert by_language.proposal.candidates[0].doctor_id == speaker.doctor_id
    assert R.SELECTION_REASON_SPEAKS_LANGUAGE in by_language.proposal.candidates[0].reasons
    await expect_status(
        worker.ProposeAssignment(propose("oncology", sub_specialty="rhythmology")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


@pytest.mark.req("CASE-13")
async def test_collegial_requests_get_distinct_doctors(matching: Matching) -> None:
    doctors = [await matching.register(i, ["neurology"], capacity=2) for i in range(1, 4)]
    worker = matching.worker
    three = await worker.ProposeAssignment(propose("neurology", doctor_count=3))
    picked = [c.doctor_id for c in three.proposal.candidates]
    assert sorted(picked) == sorted(d.doctor_id for d in doctors)
    assert [c.rank for c in three.proposal.candidates] == [1, 2, 3]
    four = await worker.ProposeAssignment(propose("neurology", doctor_count=4))
    assert four.no_doctor_available.reason == pb.UNAVAILABILITY_REASON_NOT_ENOUGH_DOCTORS
    assert four.no_doctor_available.considered_count == 3
    await expect_status(
        worker.ProposeAssignment(propose("neurology", doctor_count=6)), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_status(worker.ProposeAssignment(propose("astrology")), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        matching.person("p", Role.PATIENT).ProposeAssignment(propose("neurology")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


@pytest.mark.req("CASE-10")
async def test_no_one_available_is_a_typed_answer(matching: Matching) -> None:
    worker = matching.worker

    async def outcome(**fields: Any) -> pb.NoDoctorAvailable:
        response = await worker.ProposeAssignment(propose(**fields))
        assert response.WhichOneof("outcome") == "no_doctor_available", response
        return response.no_doctor_available

    assert (await outcome()).reason == pb.UNAVAILABILITY_REASON_NO_DOCTOR_IN_AREA
    first = await matching.register(1, ["cardiology"], capacity=1)
    second = await matching.register(2, ["cardiology"], capacity=1)
    both = [first.doctor_id, second.doctor_id]
    tried = await outcome(excluded_doctor_ids=both)
    assert tried.reason == pb.UNAVAILABILITY_REASON_ALL_TRIED and tried.considered_count == 0
    # Both leave tomorrow for three weeks: nobody can deliver within 7 days.
    await away(matching, first, DAY, 22 * DAY)
    await away(matching, second, DAY, 22 * DAY)
    late = await outcome()
    assert late.reason == pb.UNAVAILABILITY_REASON_NONE_WITHIN_TARGET and late.considered_count == 2
    earliest = late.earliest_possible_delivery_at.ToDatetime(tzinfo=matching.clock.now.tzinfo)
    assert earliest == matching.clock.now + 24 * DAY  # one day of work, 21 days away, two more days
    # A longer target accepts them.
    longer = await worker.ProposeAssignment(propose(target_delay=timedelta(days=25)))
    assert len(longer.proposal.candidates) == 1
    matching.clock.advance(2 * DAY)
    assert (await outcome()).reason == pb.UNAVAILABILITY_REASON_ALL_ABSENT
    matching.clock.advance(21 * DAY)
    await accept(matching, "c-1", first)
    await accept(matching, "c-2", second)
    full = await outcome()
    assert full.reason == pb.UNAVAILABILITY_REASON_ALL_AT_CAPACITY and full.considered_count == 2
    assert (
        full.earliest_possible_delivery_at.ToDatetime(tzinfo=matching.clock.now.tzinfo) > matching.clock.now
    )


@pytest.mark.req("CASE-01")
@pytest.mark.req("CASE-10")
@pytest.mark.req("CASE-13")
async def test_patient_chosen_doctors_get_an_expected_delay(matching: Matching) -> None:
    fast = await matching.register(1, ["orthopaedics"], capacity=2)
    leaving = await matching.register(2, ["orthopaedics"], capacity=2)
    elsewhere = await matching.register(3, ["neurology"], capacity=2)
    on_leave = await matching.register(4, ["orthopaedics"], capacity=2)
    await away(matching, leaving, DAY, 11 * DAY)
    await away(matching, on_leave, timedelta(0), 5 * DAY)
    patient = matching.person("patient-1", Role.PATIENT)

    def quote(*doctor_ids: str, area: str = "orthopaedics") -> pb.QuoteExpectedDelayRequest:
        return pb.QuoteExpectedDelayRequest(therapeutic_area=area, doctor_ids=list(doctor_ids))

    one = await patient.QuoteExpectedDelay(quote(fast.doctor_id))
    assert one.quotes[0].expected_delay.ToTimedelta() == 3 * DAY and one.within_target
    both = await matching.worker.QuoteExpectedDelay(quote(fast.doctor_id, leaving.doctor_id))
    assert [q.doctor_id for q in both.quotes] == [fast.doctor_id, leaving.doctor_id]
    assert both.quotes[1].expected_delay.ToTimedelta() == 13 * DAY  # ten days away in the middle
    assert both.expected_delivery_at == both.quotes[1].expected_delivery_at
    assert not both.within_target  # longer than 7 days: the patient is told (CASE-10)
    # as_of: the workflow's time.
    later = quote(fast.doctor_id)
    later.as_of.FromDatetime(matching.clock.now + 30 * DAY)
    assert (await patient.QuoteExpectedDelay(later)).quotes[0].expected_delay.ToTimedelta() == 3 * DAY
    bad = [
        (quote(fast.doctor_id, fast.doctor_id), grpc.StatusCode.INVALID_ARGUMENT),
        (quote(), grpc.StatusCode.INVALID_ARGUMENT),
        (quote(fast.doctor_id, area="astrology"), grpc.StatusCode.INVALID_ARGUMENT),
        (quote(elsewhere.doctor_id), grpc.StatusCode.FAILED_PRECONDITION),
        (quote(on_leave.doctor_id), grpc.StatusCode.FAILED_PRECONDITION),
        (quote("missing"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in bad:
        await expect_status(patient.QuoteExpectedDelay(request), code)
    await matching.admin.SetReferentDoctorActive(
        pb.SetReferentDoctorActiveRequest(idempotency_key="off", doctor_id=fast.doctor_id, active=False)
    )
    await expect_status(
        patient.QuoteExpectedDelay(quote(fast.doctor_id)), grpc.StatusCode.FAILED_PRECONDITION
    )
