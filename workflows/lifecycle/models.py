"""Typed inputs and outputs of the lifecycle workflows and activities (ids, codes, dates
and counts only: no personal data enters Temporal's history)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

# ApplicationError type of the dossier's refusal to erase a file while a case is in progress.
CASE_IN_PROGRESS = "CaseInProgress"
# ApplicationError type of a rights-request update refused because the workflow has not read
# the request from identity yet (it just started): nothing was done, the caller retries.
REQUEST_NOT_LOADED = "RequestNotLoaded"
# Rights-request statuses whose deadline (or postponed erasure) still needs its workflow.
OPEN_RIGHTS_REQUEST_STATUSES = ("RECEIVED", "IN_PROGRESS", "EXTENDED", "POSTPONED")


class RetentionPolicy(BaseModel):
    # While a legal hold is in force, the workflow re-reads the subject this often (a
    # `poke` signal from the hold's release wakes it sooner).
    hold_recheck_days: int = Field(default=30, ge=1)


class RetentionInput(BaseModel):
    subject_id: str
    # The stage this run starts in; ARCHIVED runs carry the archive time of their own clock.
    stage: str = "ACTIVE"
    archived_at: datetime | None = None
    policy: RetentionPolicy = RetentionPolicy()


class SubjectIdInput(BaseModel):
    subject_id: str


class SubjectStatus(BaseModel):
    exists: bool
    kind: str = ""
    stage: str = ""
    clock_started_at: datetime | None = None
    archived_at: datetime | None = None
    legal_hold: bool = False
    restricted: bool = False
    converted: bool = False


class ActivityInput(BaseModel):
    occurred_at: datetime


class RecordActivityInput(BaseModel):
    subject_id: str
    occurred_at: datetime
    idempotency_key: str


class StepInput(BaseModel):
    subject_id: str
    kind: str
    # ARCHIVE / PURGE / RESTRICT / LIFT_RESTRICTION
    step: str
    reason: str
    idempotency_key: str
    rights_request_id: str = ""


class RetainedItem(BaseModel):
    service: str
    category: str
    count: int
    legal_basis: str
    retained_until: datetime | None = None


class StepReport(BaseModel):
    """What one archive, restriction or purge did in every service (counts only)."""

    subject_id: str
    step: str
    done_at: datetime | None = None
    items: dict[str, dict[str, int]] = {}
    retained: list[RetainedItem] = []
    keys_destroyed: list[str] = []
    # Services that answered UNIMPLEMENTED: they hold nothing for this step yet.
    not_implemented: list[str] = []


class RetentionView(BaseModel):
    subject_id: str
    stage: str
    category: str = ""
    due_at: datetime | None = None
    held: bool = False
    now: datetime | None = None
    archive_report: StepReport | None = None


class RetentionResult(BaseModel):
    subject_id: str
    outcome: str  # PURGED / GONE / CONVERTED
    purge_report: StepReport | None = None


class RightsRequestInput(BaseModel):
    request_id: str
    # Reminders to the DPO this many days before the deadline, then at the deadline.
    reminder_days: list[int] = [7, 1]
    # After the deadline passes unanswered, a reminder every this many days.
    overdue_reminder_days: int = Field(default=7, ge=1)
    # An erasure refused while a case is in progress: how often the workflow checks
    # whether the case ended (a `changed` signal checks at once).
    postponed_recheck_days: int = Field(default=1, ge=1)
    # Erasure attempts of the runs before this one (continue-as-new): each attempt's steps
    # have their own idempotency keys.
    erasure_attempts: int = Field(default=0, ge=0)


class RequestFacts(BaseModel):
    request_id: str
    subject_id: str
    kind: str
    status: str
    received_at: datetime
    due_at: datetime
    extension_months: int = 0
    outcome: str = ""
    answered_at: datetime | None = None


class ExtendInput(BaseModel):
    reason: str  # COMPLEXITY / NUMBER_OF_REQUESTS
    months: int


class ExtendCallInput(BaseModel):
    request_id: str
    reason: str
    months: int
    idempotency_key: str


class AnswerInput(BaseModel):
    outcome: str  # GRANTED / PARTIALLY_GRANTED_RESTRICTED / REFUSED / IDENTITY_NOT_VERIFIED
    answer_document_id: str = ""


class AnswerCallInput(BaseModel):
    request_id: str
    outcome: str
    answer_document_id: str
    idempotency_key: str


class NotifyInput(BaseModel):
    request_id: str
    # PERSON_EXTENDED / PERSON_POSTPONED / PERSON_ANSWERED / DPO_REMINDER
    kind: str
    subject_id: str
    date: datetime
    idempotency_key: str


class ExportInput(BaseModel):
    request_id: str
    subject_id: str


class ExportResult(BaseModel):
    """Where the export archive went; the content never enters the history.

    `object_key`: where the worker wrote it under its export folder (`lifecycle.export_to_dossier`
    deletes it once the dossier holds it). `document_id`: the dossier document the person
    downloads (an account-level rights-request answer of theirs); empty for runs answered
    before PATCH_EXPORT_DOCUMENT, whose archive stayed on the worker's disk."""

    object_key: str
    sha256_hex: str
    resource_count: int
    resource_types: dict[str, int] = {}
    not_implemented: list[str] = []
    size_bytes: int = 0
    document_id: str = ""


class CasesInProgress(BaseModel):
    """How many of a subject's cases are in progress (neither a draft nor closed or
    cancelled), as the dossier reports them; `unknown`: cases whose status could not be
    read (processing restricted): the dossier's own refusal of the erasure decides then."""

    in_progress: int = 0
    unknown: int = 0


class FulfilResult(BaseModel):
    kind: str
    outcome: str
    export: ExportResult | None = None
    report: StepReport | None = None


class RightsRequestView(BaseModel):
    request_id: str
    status: str
    due_at: datetime
    extension_months: int
    reminders_sent: list[str] = []
    extension_notices: int = 0
    outcome: str = ""
    fulfilment: FulfilResult | None = None
    now: datetime | None = None
    # When the person was answered (for a postponed erasure: when it was postponed).
    answered_at: datetime | None = None
    # A postponed erasure: how many times this run checked whether the case ended.
    postponed_checks: int = 0


class SweepInput(BaseModel):
    # The schedule's time; None: the workflow's own clock.
    as_of: datetime | None = None
    categories: list[str] = [
        "PROSPECT",
        "ACCOUNT_ACTIVE",
        "ACCOUNT_ARCHIVED",
        "RIGHTS_REQUESTS_ACTIVE",
        "RIGHTS_REQUESTS_ARCHIVED",
    ]


class AgePurgeInput(BaseModel):
    as_of: datetime
    idempotency_key: str


class DueSweepInput(BaseModel):
    category: str
    as_of: datetime


class DueSweepResult(BaseModel):
    category: str
    listed: int = 0
    # Retention workflows started or found running for the listed subjects.
    ensured: int = 0


class RightsSweepInput(BaseModel):
    as_of: datetime


class RightsSweepResult(BaseModel):
    """GDPR-07 / GDPR-08: every open rights request has its deadline workflow."""

    # Open requests identity listed.
    listed: int = 0
    # Workflows this sweep started (requests recorded outside the portal, or whose workflow
    # failed or was terminated while the request is still open).
    started: int = 0
    # Requests whose workflow was found running (or had completed): left alone.
    existing: int = 0


class SweepResult(BaseModel):
    as_of: datetime
    age_purges: StepReport
    due: list[DueSweepResult] = []
    # None for runs before PATCH_SWEEP_RIGHTS_REQUESTS.
    rights_requests: RightsSweepResult | None = None


class AnnouncementInput(BaseModel):
    """GDPR-09: tell every account (not closed) about a new legal-text version."""

    text_id: str
    # Where the fan-out stands when a run continues as new (empty: from the start).
    page_token: str = ""
    sent: int = 0
    skipped: int = 0
    page_size: int = Field(default=200, ge=1, le=500)
    # Pages per run before continuing as new (keeps the history small).
    pages_per_run: int = Field(default=25, ge=1)


class LegalTextFacts(BaseModel):
    text_id: str
    kind: str
    version: str
    locale: str
    effective_at: datetime


class AnnouncePageInput(BaseModel):
    workflow_id: str
    text_id: str
    locale: str
    effective_at: datetime
    page_token: str
    page_size: int


class AnnouncePageResult(BaseModel):
    sent: int
    skipped: int
    next_page_token: str


class AnnouncementResult(BaseModel):
    text_id: str
    version: str
    effective_at: datetime
    sent: int
    skipped: int


class TextIdInput(BaseModel):
    text_id: str
