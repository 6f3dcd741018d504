from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.shared.settings import DEFAULT_VAR_DIR, Environment, ServiceSettings

PARTNER_TLS_FIELDS = ("partner_tls_cert_path", "partner_tls_key_path", "partner_tls_client_ca_path")


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    port: int = 50054
    # The partner API (insurer integrations) listens on its own port (issue 7).
    partner_api_port: int = Field(default=50055, ge=0, le=65535)
    # Off: only BillingService runs (e.g. a deployment with no partner integration yet).
    partner_api_enabled: bool = True
    # Mutual TLS on the partner API: the server's certificate chain and private key (PEM),
    # and the CA bundle (PEM) that signs the partners' client certificates. All three or
    # none; without them the port is plaintext, which production refuses.
    partner_tls_cert_path: Path | None = None
    partner_tls_key_path: Path | None = None
    partner_tls_client_ca_path: Path | None = None

    # Where the payment summary and "invoice available" emails go (NotificationsService),
    # and where the recipient's address is read (IdentityService); billing stores none.
    notifications_target: str = "127.0.0.1:50056"
    identity_target: str = "127.0.0.1:50051"
    # Links in emails start with this (the gateway's public address).
    public_base_url: str = "http://127.0.0.1:8000"
    # Seconds between two passes of the email outbox when nothing wakes it up.
    outbox_poll_seconds: float = Field(default=5.0, gt=0)

    # Hosted-payment PSP (Paybox System protocol). The defaults point at the local sandbox
    # (`python -m services.billing.psp.sandbox`), whose HMAC key and RSA public key live in
    # the keys folder; production sets the PSP's URL, merchant ids, HMAC key and public key.
    psp_payment_url: str = "http://127.0.0.1:50057/cgi/MYchoix_pagepaiement.cgi"
    psp_site: str = "1999888"
    psp_rang: str = "32"
    psp_identifiant: str = "107904482"
    # HMAC-SHA512 key of the merchant, hexadecimal. Empty: the sandbox key file below.
    psp_hmac_key_hex: SecretStr = SecretStr("")
    psp_hmac_key_path: Path = DEFAULT_VAR_DIR / "keys" / "psp-sandbox.hmac"
    # The PSP's RSA public key (PEM) verifying its returns and notifications.
    psp_public_key_path: Path = DEFAULT_VAR_DIR / "keys" / "psp-sandbox.pub.pem"
    # Digest of the PSP's RSA signature ("sha1" is what Paybox uses).
    psp_signature_digest: str = Field(default="sha1", pattern="^(sha1|sha256|sha512)$")
    # Where the PSP sends the browser back and its server-to-server notification (gateway).
    psp_return_base_url: str = "http://127.0.0.1:8000/api/payments/psp"
    # Paybox Direct endpoint for server-to-server refunds (TYPE 00014), HMAC-signed with
    # the same key. Empty: /PPPS.php beside psp_payment_url (the sandbox serves it).
    psp_direct_url: str = ""
    # Port of the local sandbox PSP (`python -m services.billing.psp.sandbox`, dev stack).
    psp_sandbox_port: int = Field(default=50057, ge=0, le=65535)
    # A payment attempt without an answer is abandoned after this long.
    payment_attempt_ttl_seconds: int = Field(default=20 * 60, ge=60)
    # Seconds between two sweeps marking expired attempts abandoned and refunding duplicate
    # payments (0 disables the sweep).
    payment_sweep_interval_seconds: float = Field(default=60.0, ge=0)

    # Secret from which coverage codes are derived (so a retried issue returns the same
    # codes while only their hash is stored). Empty: a file in the keys folder.
    coverage_code_secret_hex: SecretStr = SecretStr("")
    coverage_code_secret_path: Path = DEFAULT_VAR_DIR / "keys" / "billing-coverage-codes.secret"

    # Archived invoices: a local folder by default, S3 (Object Lock) when an endpoint is set.
    archive_dir: Path = DEFAULT_VAR_DIR / "billing-archive"
    s3_endpoint: str = ""
    s3_access_key: SecretStr = SecretStr("")
    s3_secret_key: SecretStr = SecretStr("")
    s3_bucket: str = "billing-archive"
    s3_secure: bool = True
    s3_region: str | None = None
    s3_object_lock: bool = True
    # Invoices are accounting records: 10 years (Code de commerce L123-22).
    invoice_retention_days: int = Field(default=3653, ge=1)
    # Invoices are rendered and archived right after they are numbered; this pass (also at
    # start) renders any left behind, e.g. by a process that died meanwhile (0 disables it:
    # documents are then rendered only when first downloaded).
    invoice_render_interval_seconds: float = Field(default=30.0, ge=0)

    # The platform as invoice issuer (its own invoices, and the mandatary on doctors').
    platform_legal_name: str = "CARIANS SAS"
    platform_vat_number: str = "FR00000000000"
    platform_siren: str = "000000000"
    platform_address: str = "Paris, France"

    # Partners see satisfaction figures only from this many answers up (CASE-15).
    satisfaction_minimum_answers: int = Field(default=5, ge=3)

    @model_validator(mode="after")
    def _production_secrets(self) -> BillingSettings:
        if self.environment is Environment.PRODUCTION and (
            not self.psp_hmac_key_hex.get_secret_value()
            or not self.coverage_code_secret_hex.get_secret_value()
        ):
            raise ValueError("production needs BILLING_PSP_HMAC_KEY_HEX and BILLING_COVERAGE_CODE_SECRET_HEX")
        return self

    @property
    def partner_mtls(self) -> bool:
        """Whether the partner API is served over mutual TLS."""
        return not self._partner_tls_missing()

    def _partner_tls_missing(self) -> list[str]:
        return [f"BILLING_{name.upper()}" for name in PARTNER_TLS_FIELDS if getattr(self, name) is None]

    def check_partner_api_transport(self) -> None:
        """Partial mTLS settings are refused anywhere; plaintext is refused in production."""
        missing = self._partner_tls_missing()
        if missing and len(missing) < len(PARTNER_TLS_FIELDS):
            raise ValueError(f"partner API mutual TLS is half configured: also set {', '.join(missing)}")
        if missing and self.partner_api_enabled and self.environment is Environment.PRODUCTION:
            raise ValueError(
                "production serves the partner API only over mutual TLS: set "
                f"{', '.join(missing)} (or BILLING_PARTNER_API_ENABLED=false)"
            )

    @field_validator(*PARTNER_TLS_FIELDS, mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _partner_api_mtls(self) -> BillingSettings:
        self.check_partner_api_transport()
        return self
