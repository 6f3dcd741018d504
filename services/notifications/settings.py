from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.shared.settings import DEFAULT_VAR_DIR, Environment, ServiceSettings

# Development-only secret: refused outside development and test (see `check_production`).
DEVELOPMENT_HASH_KEY = "development-only-recipient-hash-key"


class SmsTransport(StrEnum):
    # Messages are kept in the service database (ListOutbox, `python -m ...outbox`).
    DEVELOPMENT = "development"
    # JSON over HTTP(S) to an SMS gateway, API key in the Authorization header.
    HTTP = "http"


class EmailTransport(StrEnum):
    SMTP = "smtp"
    # Messages are kept in the service database, like development SMS.
    DEVELOPMENT = "development"


class SmtpSecurity(StrEnum):
    NONE = "none"  # loopback catcher only
    STARTTLS = "starttls"
    TLS = "tls"  # implicit TLS (port 465)


class NotificationsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    port: int = 50056
    # Links in messages must start with this (the patient-facing site behind the gateway).
    public_base_url: str = "http://127.0.0.1:8000"
    # Dates are shown in this time zone (France).
    display_time_zone: str = "Europe/Paris"

    # SMS
    sms_transport: SmsTransport = SmsTransport.DEVELOPMENT
    sms_gateway_url: str = ""
    sms_gateway_api_key: SecretStr = SecretStr("")
    sms_sender_id: str = "SecondOpin"
    sms_gateway_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    # Email (the dev stack's catcher listens on smtp_host:smtp_port: `python -m
    # services.notifications.dev_smtp`)
    email_transport: EmailTransport = EmailTransport.SMTP
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=0, le=65535)
    smtp_security: SmtpSecurity = SmtpSecurity.NONE
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_validate_certs: bool = True
    smtp_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    email_from: str = "Second Opinion <no-reply@secondopinion.localhost>"
    # Folder where the development SMTP catcher keeps every message it receives.
    dev_smtp_dir: Path = DEFAULT_VAR_DIR / "dev-mail"

    # Delivery loop
    delivery_concurrency: int = Field(default=8, ge=1, le=256)
    delivery_batch_size: int = Field(default=32, ge=1, le=1000)
    delivery_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # A claimed message not finished within this time is claimed again (crashed worker).
    delivery_lease_seconds: float = Field(default=120.0, gt=0)
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=5.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)

    # SendNotification by group commit: calls arriving together are decided and written in
    # one transaction (see domain/sending.py). false: one transaction per call, as before
    # (the escape hatch, and the bench's baseline).
    send_group_commit: bool = True
    # Most calls one transaction decides.
    send_batch_max: int = Field(default=256, ge=1, le=1000)

    # Rate limits (per recipient): one-time codes by SMS, then every other template.
    code_limit_count: int = Field(default=5, ge=1)
    code_limit_window_seconds: int = Field(default=600, ge=1)
    template_limit_count: int = Field(default=10, ge=1)
    template_limit_window_seconds: int = Field(default=3600, ge=1)
    # Staff mailboxes (coordinators, DPO, referent doctors) receive many more messages.
    staff_template_limit_count: int = Field(default=200, ge=1)
    # Any template, per recipient, by SMS (SMS cost money).
    sms_daily_limit_count: int = Field(default=20, ge=1)

    # Keyed hash of recipients (rate limits and erasure after the address is gone).
    recipient_hash_key: SecretStr = SecretStr(DEVELOPMENT_HASH_KEY)

    @property
    def is_development(self) -> bool:
        return self.environment in (Environment.DEVELOPMENT, Environment.TEST)

    @model_validator(mode="after")
    def check_production(self) -> NotificationsSettings:
        if self.environment is Environment.PRODUCTION:
            if self.recipient_hash_key.get_secret_value() in ("", DEVELOPMENT_HASH_KEY):
                raise ValueError("NOTIFICATIONS_RECIPIENT_HASH_KEY must be set in production")
            if self.sms_transport is not SmsTransport.HTTP or self.email_transport is not EmailTransport.SMTP:
                raise ValueError("production delivers SMS over HTTP and email over SMTP")
            if self.smtp_security is SmtpSecurity.NONE:
                raise ValueError("production SMTP needs TLS or STARTTLS")
            if not self.sms_gateway_url.startswith("https://"):
                raise ValueError("production SMS gateway must be reached over HTTPS")
        if self.sms_transport is SmsTransport.HTTP and not self.sms_gateway_url:
            raise ValueError("NOTIFICATIONS_SMS_GATEWAY_URL is required with the http SMS transport")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ValueError("retry_max_seconds must be at least retry_base_seconds")
        return self
