"""What the identity rules need, built once by the app and passed to the domain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from services.identity.domain.notifier import Courier, Notifier
from services.identity.domain.passwords import PasswordHashing
from services.identity.domain.secrets import CodeKeys
from services.identity.settings import IdentitySettings


@dataclass(frozen=True, slots=True)
class Policy:
    login_code_ttl: timedelta
    verification_code_ttl: timedelta
    max_failed_codes: int
    max_failed_logins: int
    resend_interval: timedelta
    max_codes_per_attempt: int
    login_attempt_ttl: timedelta
    step_up_window: timedelta
    reset_link_ttl: timedelta
    provisional_link_ttl: timedelta
    totp_enrolment_ttl: timedelta
    idle_timeout: timedelta
    absolute_timeout: timedelta
    public_base_url: str
    totp_issuer: str
    recovery_code_count: int
    legal_text_notice: timedelta = timedelta(days=30)

    @classmethod
    def from_settings(cls, s: IdentitySettings) -> Policy:
        return cls(
            login_code_ttl=timedelta(seconds=s.login_code_ttl_seconds),
            verification_code_ttl=timedelta(seconds=s.verification_code_ttl_seconds),
            max_failed_codes=s.max_failed_codes,
            max_failed_logins=s.max_failed_logins,
            resend_interval=timedelta(seconds=s.code_resend_interval_seconds),
            max_codes_per_attempt=s.max_codes_per_attempt,
            login_attempt_ttl=timedelta(seconds=s.login_attempt_ttl_seconds),
            step_up_window=timedelta(seconds=s.step_up_window_seconds),
            reset_link_ttl=timedelta(seconds=s.reset_link_ttl_seconds),
            provisional_link_ttl=timedelta(seconds=s.provisional_link_ttl_seconds),
            totp_enrolment_ttl=timedelta(seconds=s.totp_enrolment_ttl_seconds),
            idle_timeout=timedelta(seconds=s.session_idle_timeout_seconds),
            absolute_timeout=timedelta(seconds=s.session_absolute_timeout_seconds),
            public_base_url=s.public_base_url.rstrip("/"),
            totp_issuer=s.totp_issuer,
            recovery_code_count=s.recovery_code_count,
            legal_text_notice=timedelta(days=s.legal_text_notice_days),
        )


@dataclass(frozen=True, slots=True)
class Deps:
    policy: Policy
    hashing: PasswordHashing
    keys: CodeKeys
    notifier: Notifier
    # Messages whose sending must not show in the answer (no account enumeration).
    courier: Courier
