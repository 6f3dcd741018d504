"""Validation and display of template variables.

Every value that can reach a message is checked here against a narrow format (a name is
letters, a code is six digits, a link points into the platform with an id-only charset),
then formatted for the recipient's language. Only the variables a template declares are
validated and passed on; the others are dropped (the contract says they are ignored).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from services.notifications.domain.catalog import TemplateSpec, Variable
from services.shared.errors import InvalidArgument

MAX_FIRST_NAME = 50
MAX_LINK = 512
MAX_AMOUNT_CENTS = 100_000_000  # one million euros: far above any price of the platform
NAME_PUNCTUATION = frozenset(" -'.\u2019")
# Ids, tokens and paths only: no percent-encoding, so no free text can hide in a link.
LINK_CHARSET = re.compile(r"[A-Za-z0-9._~/?=&#:-]+")
CODE = re.compile(r"[0-9]{6}")
INVOICE_NUMBER = re.compile(r"[A-Z0-9]{1,10}(?:-[A-Z0-9]{1,12}){0,4}")
CURRENCY = re.compile(r"[A-Z]{3}")

MONTHS = {
    "fr": (
        "janvier", "février", "mars", "avril", "mai", "juin",
        "juillet", "août", "septembre", "octobre", "novembre", "décembre",
    ),
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class RawVariables:
    """TemplateVariables as the caller sent them (date None when unset)."""

    first_name: str = ""
    link: str = ""
    date: datetime | None = None
    amount_cents: int = 0
    currency: str = ""
    invoice_number: str = ""
    one_time_code: str = ""


def _first_name(value: str) -> str:
    name = unicodedata.normalize("NFC", value).strip()
    if len(name) > MAX_FIRST_NAME or not all(ch.isalpha() or ch in NAME_PUNCTUATION for ch in name):
        raise InvalidArgument(
            f"variables.first_name: letters, spaces, hyphens, apostrophes and periods only, "
            f"{MAX_FIRST_NAME} characters at most"
        )
    return name


def _link(value: str, public_base_url: str) -> str:
    if not value:
        raise InvalidArgument("variables.link is required by this template")
    base = urlsplit(public_base_url)
    parsed = urlsplit(value)
    base_path = base.path.rstrip("/")
    if (
        len(value) > MAX_LINK
        or not LINK_CHARSET.fullmatch(value)
        or (parsed.scheme, parsed.netloc) != (base.scheme, base.netloc)
        or not (parsed.path == base_path or parsed.path.startswith(base_path + "/"))
    ):
        raise InvalidArgument(
            "variables.link must point into the platform (start with the public base URL) and hold "
            f"only ids: letters, digits and - . _ ~ / ? = & # ({MAX_LINK} characters at most)"
        )
    return value


def _date(value: datetime | None) -> datetime:
    if value is None:
        raise InvalidArgument("variables.date is required by this template")
    if not 2000 <= value.year <= 2100:
        raise InvalidArgument("variables.date is out of range")
    return value


def _amount(cents: int, currency: str) -> tuple[int, str]:
    if not 0 <= cents <= MAX_AMOUNT_CENTS:
        raise InvalidArgument(f"variables.amount_cents must be between 0 and {MAX_AMOUNT_CENTS}")
    if not CURRENCY.fullmatch(currency):
        raise InvalidArgument("variables.currency must be an ISO 4217 code such as EUR")
    return cents, currency


def format_date(value: datetime, locale: str, time_zone: str) -> str:
    local = value.astimezone(ZoneInfo(time_zone))
    month = MONTHS[locale][local.month - 1]
    if locale == "fr":
        return f"{local.day} {month} {local.year} à {local:%H:%M} (heure de Paris)"
    return f"{local.day} {month} {local.year} at {local:%H:%M} (Paris time)"


def format_amount(cents: int, currency: str, locale: str) -> str:
    units, rest = divmod(cents, 100)
    if locale == "fr":
        number = f"{units:,}".replace(",", "\u202f") + f",{rest:02d}"
        return f"{number}\u00a0{'€' if currency == 'EUR' else currency}"
    number = f"{units:,}.{rest:02d}"
    return f"€{number}" if currency == "EUR" else f"{currency}\u00a0{number}"


def template_context(
    spec: TemplateSpec, raw: RawVariables, locale: str, *, public_base_url: str, time_zone: str
) -> dict[str, str]:
    """The validated, formatted values of the variables the template declares, and only those."""
    context: dict[str, str] = {}
    for variable in sorted(spec.variables):
        if variable is Variable.FIRST_NAME:
            context["first_name"] = _first_name(raw.first_name)
        elif variable is Variable.LINK:
            context["link"] = _link(raw.link, public_base_url)
        elif variable is Variable.DATE:
            context["date"] = format_date(_date(raw.date), locale, time_zone)
        elif variable is Variable.AMOUNT:
            context["amount"] = format_amount(*_amount(raw.amount_cents, raw.currency), locale)
        elif variable is Variable.INVOICE_NUMBER:
            if not INVOICE_NUMBER.fullmatch(raw.invoice_number):
                raise InvalidArgument("variables.invoice_number must look like P-2025-000123")
            context["invoice_number"] = raw.invoice_number
        elif variable is Variable.ONE_TIME_CODE:
            if not CODE.fullmatch(raw.one_time_code):
                raise InvalidArgument("variables.one_time_code must be exactly 6 digits")
            context["one_time_code"] = raw.one_time_code
    return context


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
