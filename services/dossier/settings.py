from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.shared.settings import ServiceSettings


class DossierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DOSSIER_", extra="ignore")

    port: int = 50052
