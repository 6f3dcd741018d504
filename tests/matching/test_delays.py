"""The expected-delay arithmetic (CASE-10), without a database: time is passed in."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.matching.domain.delays import (
    Workload,
    add_working_time,
    median_turnaround,
    percentile,
    projected_delivery,
)
from tests.matching.conftest import START

DAY = timedelta(days=1)


@pytest.mark.req("CASE-10")
def test_delay_grows_with_load_and_waits_for_a_slot_at_capacity() -> None:
    idle = Workload(load=0, capacity=4, median_turnaround=None)
    assert projected_delivery(START, idle, []) == START + 3 * DAY  # planning default without history
    half = Workload(load=2, capacity=4, median_turnaround=None)
    assert projected_delivery(START, half, []) == START + 3.75 * DAY  # 3 x (1 + 0.5 x 2/4)
    full = Workload(load=4, capacity=4, median_turnaround=None)
    # 4.5 days of work, after a slot frees (3 days / 4 slots).
    assert projected_delivery(START, full, []) == START + 5.25 * DAY
    measured = Workload(load=0, capacity=4, median_turnaround=timedelta(hours=36))
    assert projected_delivery(START, measured, []) == START + 1.5 * DAY


@pytest.mark.req("CASE-10")
def test_the_clock_stops_while_the_doctor_is_away() -> None:
    idle = Workload(load=0, capacity=2, median_turnaround=None)
    leave = (START + DAY, START + 11 * DAY)
    assert projected_delivery(START, idle, [leave]) == START + 13 * DAY
    # Away now: work starts at the return. Overlapping and past absences are merged or ignored.
    away_now = (START - DAY, START + 2 * DAY)
    overlapping = (START + DAY, START + 4 * DAY)
    past = (START - 10 * DAY, START - 5 * DAY)
    assert add_working_time(START, 3 * DAY, [overlapping, away_now, past]) == START + 7 * DAY
    # An absence after delivery changes nothing.
    assert projected_delivery(START, idle, [(START + 5 * DAY, START + 6 * DAY)]) == START + 3 * DAY


def test_turnaround_statistics() -> None:
    durations = [timedelta(hours=h) for h in (10, 30, 20, 50, 40, 60, 70, 80, 90, 100)]
    assert median_turnaround(durations) == timedelta(hours=55)
    assert percentile(durations, 0.9) == timedelta(hours=90)
    assert median_turnaround([]) is None
    assert percentile([], 0.9) is None
