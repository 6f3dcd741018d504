from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from services.shared.settings import ServiceSettings


class NotificationsSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NOTIFICATIONS_", extra="ignore")

    port: int = 50056
