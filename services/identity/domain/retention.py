"""The retention periods of the privacy policy (PC §7), as plain calendar arithmetic.

Shared by the identity service (which lists the subjects whose clock ran out) and the
lifecycle workflows (which sleep until a clock runs out): one table, one source.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Category(StrEnum):
    PROSPECT = "PROSPECT"
    ACCOUNT_ACTIVE = "ACCOUNT_ACTIVE"
    ACCOUNT_ARCHIVED = "ACCOUNT_ARCHIVED"
    SATISFACTION = "SATISFACTION"
    CONNECTION_LOGS = "CONNECTION_LOGS"
    PAYMENT_DATA = "PAYMENT_DATA"
    RIGHTS_REQUESTS_ACTIVE = "RIGHTS_REQUESTS_ACTIVE"
    RIGHTS_REQUESTS_ARCHIVED = "RIGHTS_REQUESTS_ARCHIVED"


class Action(StrEnum):
    ARCHIVE = "ARCHIVE"
    PURGE = "PURGE"


@dataclass(frozen=True, slots=True)
class Period:
    months: int
    action: Action
    requirement: str


# PC §7. Months, so that "13 months" and "5 years" are calendar periods, not day counts.
PERIODS: dict[Category, Period] = {
    Category.PROSPECT: Period(12, Action.PURGE, "RET-01"),
    Category.ACCOUNT_ACTIVE: Period(5 * 12, Action.ARCHIVE, "RET-02"),
    Category.ACCOUNT_ARCHIVED: Period(10 * 12, Action.PURGE, "RET-02"),
    Category.SATISFACTION: Period(3 * 12, Action.PURGE, "RET-03"),
    Category.CONNECTION_LOGS: Period(12, Action.PURGE, "RET-04"),
    Category.PAYMENT_DATA: Period(13, Action.PURGE, "RET-05"),
    Category.RIGHTS_REQUESTS_ACTIVE: Period(5 * 12, Action.ARCHIVE, "RET-06"),
    Category.RIGHTS_REQUESTS_ARCHIVED: Period(10 * 12, Action.PURGE, "RET-06"),
}

# A rights request is answered within one month, extendable by two more (GDPR art. 12.3).
RIGHTS_REQUEST_DEADLINE_MONTHS = 1
RIGHTS_REQUEST_MAX_EXTENSION_MONTHS = 2


def add_months(value: datetime, months: int) -> datetime:
    """Same day and time `months` later (or earlier); clamps to the month's last day."""
    total = value.year * 12 + (value.month - 1) + months
    year, month = divmod(total, 12)
    day = min(value.day, calendar.monthrange(year, month + 1)[1])
    return value.replace(year=year, month=month + 1, day=day)


def due_at(category: Category, clock_started_at: datetime) -> datetime:
    return add_months(clock_started_at, PERIODS[category].months)


def cutoff(category: Category, as_of: datetime) -> datetime:
    """Clocks started at or before this have run out at `as_of`.

    Not exactly `add_months(as_of, -n)` around month ends (a clock started on 31 March
    runs out on 30 September); the cut-off errs on the side of keeping a day longer only
    where `add_months` clamps, never of deleting early."""
    return add_months(as_of, -PERIODS[category].months)
