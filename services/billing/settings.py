from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.shared.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="ignore")

    port: int = 50054
    # The partner API (insurer integrations) listens on its own port (issue 7).
    partner_api_port: int = 50055
