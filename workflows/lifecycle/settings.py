from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from services.shared.settings import DEFAULT_VAR_DIR, ResidencyCheckedSettings


class LifecycleSettings(ResidencyCheckedSettings):
    """The lifecycle worker: its task queue, the services it calls, the DPO's mailbox."""

    model_config = SettingsConfigDict(env_prefix="LIFECYCLE_", extra="ignore")

    task_queue: str = "lifecycle"
    identity_target: str = "127.0.0.1:50051"
    dossier_target: str = "127.0.0.1:50052"
    matching_target: str = "127.0.0.1:50053"
    billing_target: str = "127.0.0.1:50054"
    notifications_target: str = "127.0.0.1:50056"
    service_call_timeout_seconds: float = Field(default=10.0, gt=0, le=25)
    graceful_shutdown_seconds: float = 10.0
    # Services besides identity that hold subject data, called in this order on archive,
    # restriction, purge and export (any of "dossier", "matching", "billing"; each does the
    # steps it implements, see activities.SERVICE_STEPS). The dossier goes first: it refuses
    # an erasure while a case is in progress, before anything else is touched. A listed
    # service that answers UNIMPLEMENTED is recorded as "holds nothing yet" in the report
    # (and logged), never silently skipped. Notifications is always called (addresses are
    # erased with PurgeRecipientData, it has no per-subject lifecycle RPCs).
    subject_services: list[str] = ["dossier", "matching", "billing"]
    # Where rights-request reminders go (DPO_RIGHTS_REQUEST_REMINDER).
    dpo_email: str = "dpo@secondopinion.invalid"
    portal_base_url: str = "http://127.0.0.1:8000"
    # Scratch space for the export archives answering access/portability requests (FHIR
    # bundle, readable summary, the files): each is written here, streamed to the dossier
    # as the person's document, then deleted (a 0700 folder on the worker's own disk).
    export_dir: Path = DEFAULT_VAR_DIR / "exports"
    # The daily sweep (Temporal Schedule): cron in UTC.
    sweep_cron: str = "0 3 * * *"
    sweep_schedule_id: str = "retention-sweep"
    log_level: str = "INFO"
