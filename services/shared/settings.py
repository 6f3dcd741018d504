"""Typed settings shared by every service; each service subclasses with its own env prefix."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.residency import enforce_residency

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VAR_DIR = REPO_ROOT / "var"


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class TraceExporter(StrEnum):
    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


class TelemetrySettings(BaseSettings):
    """Where traces go. Shared prefix so one variable switches the whole platform."""

    model_config = SettingsConfigDict(env_prefix="SO_OTEL_", extra="ignore")

    exporter: TraceExporter = TraceExporter.NONE
    # OTLP/gRPC collector endpoint, used when exporter is "otlp".
    otlp_endpoint: str = "http://127.0.0.1:4317"


class InternalAuthSettings(BaseSettings):
    """Keys for the signed internal identity tokens every call carries."""

    model_config = SettingsConfigDict(env_prefix="SO_AUTH_", extra="ignore")

    # Folder holding `<issuer>.pub.pem` for every trusted issuer and `<issuer>.key.pem`
    # for the issuers this process signs as.
    keys_dir: Path = DEFAULT_VAR_DIR / "keys"
    # Lifetime of a minted token: short, so a leaked token is soon worthless.
    token_ttl_seconds: int = Field(default=300, ge=10, le=3600)


class ResidencyCheckedSettings(BaseSettings):
    """Base of the settings of every process that sends data somewhere (services, gateway,
    workers): in production it refuses to start with an address outside the certified host."""

    model_config = SettingsConfigDict(extra="ignore")

    environment: Environment = Environment.DEVELOPMENT

    @model_validator(mode="after")
    def _data_stays_with_the_certified_host(self) -> Self:
        """SEC-06: a production process refuses to start with an address outside it."""
        enforce_residency(self, production=self.environment is Environment.PRODUCTION)
        return self


class ServiceSettings(ResidencyCheckedSettings):
    """Base of every gRPC service's settings. Subclasses set `env_prefix`."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # SQLite file by default (embedded), PostgreSQL by URL: postgresql+asyncpg://...
    database_url: str = ""
    log_level: str = "INFO"
    # Seconds granted to in-flight RPCs when the process is asked to stop.
    shutdown_grace_seconds: float = 5.0
    # Deadline put on every outgoing call that does not set its own.
    outgoing_call_timeout_seconds: float = Field(default=5.0, gt=0, le=120)

    def effective_database_url(self, service_name: str) -> str:
        if self.database_url:
            return self.database_url
        DEFAULT_VAR_DIR.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{DEFAULT_VAR_DIR / (service_name + '.db')}"
