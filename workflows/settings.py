from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TemporalSettings(BaseSettings):
    """Where the Temporal cluster is; shared by the worker and the gateway."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    case_task_queue: str = "cases"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    identity_target: str = "127.0.0.1:50051"
    dossier_target: str = "127.0.0.1:50052"
    matching_target: str = "127.0.0.1:50053"
    billing_target: str = "127.0.0.1:50054"
    notifications_target: str = "127.0.0.1:50056"
    # gRPC deadline of activity calls; always shorter than the activity's start-to-close.
    service_call_timeout_seconds: float = Field(default=10.0, gt=0, le=60)
    graceful_shutdown_seconds: float = 10.0
    log_level: str = "INFO"
