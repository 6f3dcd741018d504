"""Expected delivery of a case offered to a doctor now (CASE-10): plain arithmetic, no I/O.

The model, stated so that a coordinator can redo it by hand:

* `T` is the doctor's median acceptance-to-delivery time over the last 90 days, or
  `DEFAULT_TURNAROUND` (3 days) without history.
* Load is the doctor's open assignments plus the offers waiting for their answer. The
  case needs `T x (1 + LOAD_WEIGHT x load / capacity)` of working time: a doctor at full
  load is half as fast again as an idle one.
* At or above capacity the case first waits for a slot: one frees every `T / capacity`,
  so `(load - capacity + 1) x T / capacity` more.
* The doctor does not work while away: the clock stops during every absence.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from fractions import Fraction

DEFAULT_TURNAROUND = timedelta(days=3)
TARGET_DELAY = timedelta(days=7)
LOAD_WEIGHT = Fraction(1, 2)
TURNAROUND_WINDOW = timedelta(days=90)


@dataclass(frozen=True, slots=True)
class Workload:
    load: int
    capacity: int
    median_turnaround: timedelta | None

    @property
    def turnaround(self) -> timedelta:
        return self.median_turnaround if self.median_turnaround is not None else DEFAULT_TURNAROUND

    @property
    def relative_load(self) -> Fraction:
        return Fraction(self.load, self.capacity)


def working_time_needed(workload: Workload) -> timedelta:
    turnaround = workload.turnaround
    share = Fraction(min(workload.load, workload.capacity), workload.capacity)
    work = turnaround * float(1 + LOAD_WEIGHT * share)
    waiting_slots = workload.load - workload.capacity + 1
    if waiting_slots > 0:
        work += turnaround * waiting_slots / workload.capacity
    return work


def merge(intervals: Iterable[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def away_at(absences: Iterable[tuple[datetime, datetime]], moment: datetime) -> bool:
    return any(start <= moment < end for start, end in absences)


def add_working_time(
    now: datetime, work: timedelta, absences: Iterable[tuple[datetime, datetime]]
) -> datetime:
    """`now + work`, the clock stopped during the absences."""
    moment, remaining = now, work
    for start, end in merge(absences):
        if end <= moment:
            continue
        if start > moment:
            if moment + remaining <= start:
                return moment + remaining
            remaining -= start - moment
        moment = end
    return moment + remaining


def projected_delivery(
    now: datetime, workload: Workload, absences: Iterable[tuple[datetime, datetime]]
) -> datetime:
    return add_working_time(now, working_time_needed(workload), absences)


def median_turnaround(durations: Sequence[timedelta]) -> timedelta | None:
    if not durations:
        return None
    return timedelta(seconds=round(statistics.median(d.total_seconds() for d in durations)))


def percentile(durations: Sequence[timedelta], fraction: float) -> timedelta | None:
    """Nearest-rank percentile."""
    if not durations:
        return None
    ordered = sorted(durations)
    rank = max(1, -(-int(fraction * 100 * len(ordered)) // 100))
    return ordered[min(rank, len(ordered)) - 1]
