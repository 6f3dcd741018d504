from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.shared.settings import ResidencyCheckedSettings


class GatewaySettings(ResidencyCheckedSettings):
    # SEC-06: in production, every service the gateway forwards to is hosted in France.
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000

    identity_target: str = "127.0.0.1:50051"
    dossier_target: str = "127.0.0.1:50052"
    matching_target: str = "127.0.0.1:50053"
    billing_target: str = "127.0.0.1:50054"
    notifications_target: str = "127.0.0.1:50056"
    # Deadline on every call to a service.
    service_call_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    session_cookie_name: str = "so_session"
    log_level: str = "INFO"
    # Signs CSRF tokens; empty means a random key per process (fine for one instance).
    secret_key: str = ""
    # Link to a case in the Temporal Web UI for coordinators.
    temporal_ui_url: str = "http://127.0.0.1:8233"
    # Largest upload accepted (the dossier's own limit is the same by default); enforced
    # while the body streams in, before it is parsed.
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    # Deadline on uploads and downloads streamed to and from the services.
    transfer_timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
