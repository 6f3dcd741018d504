from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.shared.settings import Environment, ServiceSettings


class IdentitySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore")

    port: int = 50051
    # Sessions end after this long without activity, and after the absolute limit anyway.
    session_idle_timeout_seconds: int = Field(default=30 * 60, ge=60)
    session_absolute_timeout_seconds: int = Field(default=12 * 3600, ge=300)
    # Argon2id parameters (OWASP: m=19 MiB, t=2, p=1 as the minimum). Never lowered, even
    # in tests: tests stay fast by hashing rarely.
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_kib: int = Field(default=19 * 1024, ge=19 * 1024)
    argon2_parallelism: int = Field(default=1, ge=1)

    # Where SMS codes and emails go (NotificationsService).
    notifications_target: str = "127.0.0.1:50056"
    # Links in emails start with this (the gateway's public address).
    public_base_url: str = "http://127.0.0.1:8000"
    # Key of the HMAC that hashes one-time codes, recovery codes and reset tokens, and from
    # which the TOTP-secret encryption key is derived. Empty: derived from the identity
    # signing key (development and tests); required in production.
    code_secret: SecretStr = SecretStr("")

    # ACC-05: the SMS login code is valid 3 hours (the terms' figure).
    login_code_ttl_seconds: int = Field(default=3 * 3600, ge=60, le=3 * 3600)
    # Step-up and password-reset SMS codes.
    verification_code_ttl_seconds: int = Field(default=15 * 60, ge=60, le=3 * 3600)
    # ACC-07: locks after 5 failed codes and after 10 consecutive failed logins.
    max_failed_codes: int = Field(default=5, ge=1, le=5)
    max_failed_logins: int = Field(default=10, ge=1, le=10)
    # Resends of a login code: at least this long apart, at most this many codes per attempt.
    code_resend_interval_seconds: int = Field(default=60, ge=0)
    max_codes_per_attempt: int = Field(default=4, ge=1, le=10)
    # A login attempt (password checked, factors pending) lives this long.
    login_attempt_ttl_seconds: int = Field(default=3 * 3600, ge=60)
    # ACC-06: window a successful step-up opens on the session.
    step_up_window_seconds: int = Field(default=5 * 60, ge=30, le=3600)
    # Emailed reset links and provisional-credential links.
    reset_link_ttl_seconds: int = Field(default=3600, ge=300)
    provisional_link_ttl_seconds: int = Field(default=72 * 3600, ge=3600)
    # Pending TOTP enrolments.
    totp_enrolment_ttl_seconds: int = Field(default=15 * 60, ge=60)
    totp_issuer: str = "Second Opinion"
    recovery_code_count: int = Field(default=10, ge=5, le=20)
    # GDPR-09: an announced terms or privacy-policy version comes into force at least this
    # many days after it is published (PC §18, CGU §5: users are told before it applies).
    legal_text_notice_days: int = Field(default=30, ge=1, le=365)

    @model_validator(mode="after")
    def _production_needs_a_code_secret(self) -> IdentitySettings:
        secret = self.code_secret.get_secret_value()
        if self.environment is Environment.PRODUCTION and len(secret) < 32:
            raise ValueError("IDENTITY_CODE_SECRET (32+ characters) is required in production")
        return self
