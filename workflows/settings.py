from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.shared.settings import DEFAULT_VAR_DIR, ResidencyCheckedSettings


class TemporalSettings(ResidencyCheckedSettings):
    """Where the Temporal cluster is and how payloads are sealed; shared by the worker,
    the gateway and the codec server (they must all hold the same payload keys)."""

    model_config = SettingsConfigDict(env_prefix="TEMPORAL_", extra="ignore")

    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    case_task_queue: str = "cases"
    # Folder of AES-256 payload keys, one `<key id>.key` file each (32 bytes, base64).
    # Payloads are encrypted with the active key; any key of the folder decrypts, so a
    # rotation adds a key and switches `payload_key_id` without breaking old histories.
    payload_keys_dir: Path = DEFAULT_VAR_DIR / "keys" / "temporal-payload"
    payload_key_id: str = Field(default="payload-1", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # Development and tests create the active key when it is missing; production sets
    # this to false and provisions the key (a missing key then stops the process).
    payload_key_autocreate: bool = True


class WorkerSettings(ResidencyCheckedSettings):
    model_config = SettingsConfigDict(env_prefix="WORKER_", extra="ignore")

    identity_target: str = "127.0.0.1:50051"
    dossier_target: str = "127.0.0.1:50052"
    matching_target: str = "127.0.0.1:50053"
    billing_target: str = "127.0.0.1:50054"
    notifications_target: str = "127.0.0.1:50056"
    # gRPC deadline of activity calls; always shorter than the activity's start-to-close
    # (CasePolicy.activity_timeout_seconds, 30 s by default).
    service_call_timeout_seconds: float = Field(default=10.0, gt=0, le=25)
    graceful_shutdown_seconds: float = 10.0
    # How long a workflow task waits on this worker's sticky queue before any worker
    # may take it (short: a crashed worker must not hold its cases).
    sticky_queue_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Team mailbox where coordinator tasks (escalations) are sent.
    coordinator_email: str = "coordination@secondopinion.invalid"
    # Base of links put in emails (never any personal or health data in them).
    portal_base_url: str = "http://127.0.0.1:8000"
    log_level: str = "INFO"


class CodecServerSettings(BaseSettings):
    """The codec server that lets an authenticated coordinator read payloads in the UI."""

    model_config = SettingsConfigDict(env_prefix="CODEC_SERVER_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8234, ge=0, le=65535)
    # Bearer token(s) the callers present (`Authorization: Bearer ...`, or as the first
    # path segment for UIs that cannot send headers). Empty: read or create `token_file`.
    bearer_token: SecretStr = SecretStr("")
    token_file: Path = DEFAULT_VAR_DIR / "keys" / "codec-server.token"
    # Origins of the Temporal Web UI allowed to call the server from the browser (CORS).
    allowed_origins: list[str] = ["http://127.0.0.1:8233", "http://localhost:8233"]
    # Namespaces whose payloads it may decode (the UI sends `X-Namespace`).
    namespaces: list[str] = ["default"]
    # Maximum payloads per request (the UI batches a page of history at a time).
    max_payloads: int = Field(default=1000, ge=1, le=10000)
    log_level: str = "INFO"
