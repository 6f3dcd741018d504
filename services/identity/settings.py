from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.shared.settings import ServiceSettings


class IdentitySettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="IDENTITY_", extra="ignore")

    port: int = 50051
    # Sessions end after this long without activity, and after the absolute limit anyway.
    session_idle_timeout_seconds: int = Field(default=30 * 60, ge=60)
    session_absolute_timeout_seconds: int = Field(default=12 * 3600, ge=300)
    # Argon2id parameters (OWASP: m=19 MiB, t=2, p=1 as the minimum).
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_kib: int = Field(default=19 * 1024, ge=19 * 1024)
    argon2_parallelism: int = Field(default=1, ge=1)
