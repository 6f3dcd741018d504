from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.shared.settings import DEFAULT_VAR_DIR, ServiceSettings


class DossierSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DOSSIER_", extra="ignore")

    port: int = 50052

    # --- Access rules ---------------------------------------------------------------
    # Staff habilitations (health data SEC-05, personal assistant CASE-14) come from the
    # callers' identity tokens (identity's GrantHabilitation), not from settings.
    # Internal services that act as the platform (role `service`): the case worker.
    platform_services: list[str] = Field(default_factory=lambda: ["worker"])

    # --- Documents ----------------------------------------------------------------
    # Largest document accepted, checked while streaming (before parsing).
    max_document_bytes: int = Field(default=200 * 1024 * 1024, gt=0)
    # Largest rights-request answer (GDPR-01, GDPR-05: the export zip the lifecycle worker
    # stores for the person), checked while streaming; it holds every file of the person,
    # so it is never below max_document_bytes.
    max_rights_answer_bytes: int = Field(default=2 * 1024 * 1024 * 1024, gt=0)
    # Embedded default store: a local folder. Set s3_endpoint to use an S3-compatible store.
    objects_dir: Path = DEFAULT_VAR_DIR / "dossier-objects"
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "dossier-documents"
    s3_secure: bool = True
    s3_region: str | None = None
    # Plaintext is spooled here (0600 files, removed at once) while a PDF or DICOM is checked.
    scratch_dir: Path = DEFAULT_VAR_DIR / "dossier-scratch"
    # Master keys: files `<key_id>.v<version>.key` (32 random bytes, base64) in this folder;
    # the highest version of `active_master_key_id` wraps new data keys. A development or
    # test environment creates a first key when the folder is empty; production refuses.
    master_keys_dir: Path = DEFAULT_VAR_DIR / "keys" / "dossier-master"
    active_master_key_id: str = "dossier"
    # Plaintext chunk size of the encrypted object format.
    encryption_chunk_bytes: int = Field(default=1024 * 1024, ge=4096, le=16 * 1024 * 1024)

    # --- Malware scan -----------------------------------------------------------------
    # clamd's unix socket (Debian: /var/run/clamav/clamd.ctl) or "host:port"; when it
    # cannot be reached, documents stay quarantined and are re-scanned later.
    clamd_address: str = "/var/run/clamav/clamd.ctl"
    clamd_timeout_seconds: float = Field(default=60.0, gt=0)
    # How often quarantined documents are re-scanned (0 disables the background task).
    rescan_interval_seconds: float = Field(default=30.0, ge=0)

    # --- Lifecycle (issue 10) ------------------------------------------------------------
    # The access log outlives a purge as evidence (SEC-02); how long a purge report says
    # it is kept.
    access_log_evidence_retention_days: int = Field(default=10 * 365, gt=0)

    # --- Limits -----------------------------------------------------------------------
    max_text_chars: int = Field(default=20_000, gt=0)
    max_form_answers_bytes: int = Field(default=256 * 1024, gt=0)

    @model_validator(mode="after")
    def _answer_limit_covers_a_document(self) -> DossierSettings:
        if self.max_rights_answer_bytes < self.max_document_bytes:
            raise ValueError(
                "DOSSIER_MAX_RIGHTS_ANSWER_BYTES must be at least DOSSIER_MAX_DOCUMENT_BYTES"
                " (an answer holds the person's documents)"
            )
        return self
