"""The templates a caller may name, the channels each supports and the variables each shows.

This table is the whole vocabulary of outgoing messages: no template can show anything but
the typed variables listed here (SEC-08: no health data in email or SMS).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum


class Template(StrEnum):
    LOGIN_CODE = "login_code"
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a template name, not a secret
    ACCOUNT_LOCKED = "account_locked"
    BREACH_NOTICE = "breach_notice"
    REPORT_AVAILABLE = "report_available"
    EXPECTED_DELAY = "expected_delay"
    PAYMENT_SUMMARY = "payment_summary"
    INVOICE_AVAILABLE = "invoice_available"
    DOCTOR_DEADLINE_REMINDER = "doctor_deadline_reminder"
    COORDINATOR_ESCALATION = "coordinator_escalation"
    TERMS_UPDATED = "terms_updated"
    REFERRAL_INVITATION = "referral_invitation"
    SATISFACTION_SURVEY = "satisfaction_survey"
    VERIFICATION_CODE = "verification_code"
    EMAIL_VERIFICATION_CODE = "email_verification_code"
    PROVISIONAL_CREDENTIALS = "provisional_credentials"
    ACCOUNT_DETAILS_CHANGED = "account_details_changed"
    NEW_SECURE_MESSAGE = "new_secure_message"
    DOCTOR_NEW_OFFER = "doctor_new_offer"
    CASE_DEADLINE_EXTENDED = "case_deadline_extended"
    CASE_CANCELLED = "case_cancelled"
    RIGHTS_REQUEST_EXTENDED = "rights_request_extended"
    DPO_RIGHTS_REQUEST_REMINDER = "dpo_rights_request_reminder"
    SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT = "sign_up_attempt_on_existing_account"
    RIGHTS_REQUEST_POSTPONED = "rights_request_postponed"
    DUPLICATE_PAYMENT_REFUNDED = "duplicate_payment_refunded"


class Channel(StrEnum):
    SMS = "sms"
    EMAIL = "email"


class DeliveryStatus(StrEnum):
    QUEUED = "queued"
    SENT = "sent"
    FAILED = "failed"
    BOUNCED = "bounced"


FINAL_STATUSES = frozenset({DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.BOUNCED})


class Variable(StrEnum):
    """Fields of TemplateVariables (amount_cents and currency travel together as `amount`)."""

    FIRST_NAME = "first_name"
    LINK = "link"
    DATE = "date"
    AMOUNT = "amount"
    INVOICE_NUMBER = "invoice_number"
    ONE_TIME_CODE = "one_time_code"


class RateClass(Enum):
    CODE = "code"  # one-time codes: a handful per 10 minutes
    PERSONAL = "personal"  # a person's account and case messages
    STAFF = "staff"  # staff mailboxes that legitimately receive many messages


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    template: Template
    channels: frozenset[Channel]
    # Variables the template shows; every one is required except first_name (greeting).
    variables: frozenset[Variable]
    rate_class: RateClass


def _spec(
    template: Template, channels: set[Channel], variables: set[Variable], rate: RateClass = RateClass.PERSONAL
) -> TemplateSpec:
    return TemplateSpec(template, frozenset(channels), frozenset(variables), rate)


SMS, EMAIL = {Channel.SMS}, {Channel.EMAIL}
V = Variable
T = Template

SPECS: dict[Template, TemplateSpec] = {
    spec.template: spec
    for spec in (
        _spec(T.LOGIN_CODE, SMS, {V.ONE_TIME_CODE, V.DATE}, RateClass.CODE),
        _spec(T.VERIFICATION_CODE, SMS, {V.ONE_TIME_CODE, V.DATE}, RateClass.CODE),
        # The code confirming a new email address, sent to that address (ACC-06).
        _spec(T.EMAIL_VERIFICATION_CODE, EMAIL, {V.ONE_TIME_CODE, V.DATE}, RateClass.CODE),
        _spec(T.PASSWORD_RESET, EMAIL, {V.FIRST_NAME, V.LINK, V.DATE}),
        _spec(T.ACCOUNT_LOCKED, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.BREACH_NOTICE, EMAIL, {V.FIRST_NAME, V.LINK, V.DATE}),
        _spec(T.REPORT_AVAILABLE, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.EXPECTED_DELAY, EMAIL, {V.FIRST_NAME, V.LINK, V.DATE}),
        _spec(T.PAYMENT_SUMMARY, EMAIL, {V.FIRST_NAME, V.AMOUNT, V.DATE, V.LINK}),
        _spec(T.INVOICE_AVAILABLE, EMAIL, {V.FIRST_NAME, V.INVOICE_NUMBER, V.AMOUNT, V.LINK}),
        _spec(T.DOCTOR_DEADLINE_REMINDER, EMAIL, {V.FIRST_NAME, V.DATE, V.LINK}, RateClass.STAFF),
        _spec(T.COORDINATOR_ESCALATION, EMAIL, {V.LINK}, RateClass.STAFF),
        _spec(T.TERMS_UPDATED, EMAIL, {V.FIRST_NAME, V.DATE, V.LINK}),
        _spec(T.REFERRAL_INVITATION, SMS | EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.SATISFACTION_SURVEY, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.PROVISIONAL_CREDENTIALS, EMAIL, {V.FIRST_NAME, V.LINK, V.DATE}),
        _spec(T.ACCOUNT_DETAILS_CHANGED, EMAIL, {V.FIRST_NAME, V.DATE}),
        _spec(T.NEW_SECURE_MESSAGE, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.DOCTOR_NEW_OFFER, EMAIL, {V.FIRST_NAME, V.DATE, V.LINK}, RateClass.STAFF),
        _spec(T.CASE_DEADLINE_EXTENDED, EMAIL, {V.FIRST_NAME, V.DATE, V.LINK}),
        _spec(T.CASE_CANCELLED, EMAIL, {V.FIRST_NAME, V.AMOUNT, V.LINK}),
        _spec(T.RIGHTS_REQUEST_EXTENDED, EMAIL, {V.FIRST_NAME, V.DATE, V.LINK}),
        _spec(T.DPO_RIGHTS_REQUEST_REMINDER, EMAIL, {V.DATE, V.LINK}, RateClass.STAFF),
        # No date: identity sends at most one a day per account (its key is the day).
        _spec(T.SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.RIGHTS_REQUEST_POSTPONED, EMAIL, {V.FIRST_NAME, V.LINK}),
        _spec(T.DUPLICATE_PAYMENT_REFUNDED, EMAIL, {V.FIRST_NAME, V.AMOUNT, V.DATE, V.LINK}),
    )
}

LOCALES = ("fr", "en")
DEFAULT_LOCALE = "fr"


def spec_for(template: Template) -> TemplateSpec:
    return SPECS[template]


def normalise_locale(locale: str) -> str:
    """BCP 47 tag -> "fr" or "en"; anything else falls back to French."""
    language = locale.strip().replace("_", "-").split("-", 1)[0].lower()
    return language if language in LOCALES else DEFAULT_LOCALE
