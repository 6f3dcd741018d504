"""Lifecycle workflows.

- `SubjectRetentionWorkflow` (id `retention-{subject_id}`): one per subject (account,
  prospect, rights request). Sleeps until the subject's clock runs out, re-reads the
  clock from identity when it wakes (an activity recorded anywhere moves it; no signal is
  needed, `record_activity` and `poke` only wake it sooner), archives, continues as new
  in the ARCHIVED stage with the archive time on its own clock, sleeps ten years, purges.
  A legal hold stops it: nothing is archived or purged while a hold is in force.
- `RightsRequestWorkflow` (id `rights-request-{request_id}`): the one-month deadline,
  extensions (the person told), reminders to the DPO, fulfilment and the answer (for access
  and portability: the export archive, stored in the dossier as the person's document,
  named by the answer); then it continues as new as the request's own retention workflow
  (5 years, then 10 archived).
  An erasure asked while a case of the person is in progress is answered at once,
  "refused for now" (REFUSED_CASE_IN_PROGRESS, status POSTPONED: the answer within the
  deadline, so the DPO's deadline reminders stop and the deadline is no longer
  extendable); the person is told; the workflow checks daily (or when signalled
  `changed`) and, once no case is in progress, erases and records the final answer.
- `RetentionSweepWorkflow`: run daily by a Temporal Schedule; purges what goes by age
  (logs, IP addresses, payment data, satisfaction answers) and makes sure every subject
  whose clock ran out has its retention workflow (the safety net for subjects whose
  workflow was never started), and every open rights request its deadline workflow
  (requests the DPO recorded from a letter or an email, or a referent doctor relayed).
- `LegalTextAnnouncementWorkflow` (id `announce-{text_id}`): GDPR-09, a new terms or
  privacy-policy version is emailed (TERMS_UPDATED, with the date it comes into force) to
  every account not closed, in the text's language, exactly once per version: page by
  page, continuing as new every few pages; each email's idempotency key is
  `{workflow id}:{account id}`, so a retried page or a re-run never sends twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from services.identity.domain.retention import PERIODS, Action, Category, add_months
    from workflows.lifecycle.models import (
        CASE_IN_PROGRESS,
        REQUEST_NOT_LOADED,
        ActivityInput,
        AgePurgeInput,
        AnnouncementInput,
        AnnouncementResult,
        AnnouncePageInput,
        AnnouncePageResult,
        AnswerCallInput,
        AnswerInput,
        CasesInProgress,
        DueSweepInput,
        DueSweepResult,
        ExportInput,
        ExportResult,
        ExtendCallInput,
        ExtendInput,
        FulfilResult,
        LegalTextFacts,
        NotifyInput,
        RecordActivityInput,
        RequestFacts,
        RetentionInput,
        RetentionResult,
        RetentionView,
        RightsRequestInput,
        RightsRequestView,
        RightsSweepInput,
        RightsSweepResult,
        StepInput,
        StepReport,
        SubjectIdInput,
        SubjectStatus,
        SweepInput,
        SweepResult,
        TextIdInput,
    )

# Shipped after RightsRequestWorkflow's first release: an erasure refused while a case is in
# progress is answered "refused for now", then carried out once the case ends.
PATCH_POSTPONED_ERASURE = "rights-request-erasure-postponed-while-case-in-progress"
# Shipped later: the access/portability export goes to the dossier as a document of the
# person (`lifecycle.export_to_dossier`) and the answer names it; runs that fulfilled before
# wrote it to the worker's disk only (`lifecycle.export_subject`) and answered without it.
PATCH_EXPORT_DOCUMENT = "rights-request-export-stored-in-dossier"
# Shipped later: a `changed` signal makes the deadline loop re-read the request from identity
# (an extension or an answer recorded directly there is seen at once, the person told once);
# before, the loop woke but kept the facts it had until the next reminder. A signal received
# while the loop was busy is no longer lost either.
PATCH_CHANGED_REREADS = "rights-request-changed-signal-rereads"
# Shipped later: the daily sweep also starts the workflow of every open rights request that
# has none (recorded by the DPO from a letter or an email, relayed by a referent doctor).
PATCH_SWEEP_RIGHTS_REQUESTS = "retention-sweep-starts-rights-request-workflows"

CALL = timedelta(seconds=30)
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=5))
LONG_CALL = timedelta(minutes=10)

ACTIVE_CATEGORY = {
    "ACCOUNT": Category.ACCOUNT_ACTIVE,
    "PROSPECT": Category.PROSPECT,
    "RIGHTS_REQUEST": Category.RIGHTS_REQUESTS_ACTIVE,
}
ARCHIVED_CATEGORY = {
    "ACCOUNT": Category.ACCOUNT_ARCHIVED,
    "RIGHTS_REQUEST": Category.RIGHTS_REQUESTS_ARCHIVED,
}


def retention_workflow_id(subject_id: str) -> str:
    return f"retention-{subject_id}"


def rights_request_workflow_id(request_id: str) -> str:
    return f"rights-request-{request_id}"


def announcement_workflow_id(text_id: str) -> str:
    return f"announce-{text_id}"


@workflow.defn
class SubjectRetentionWorkflow:
    def __init__(self) -> None:
        self._poked = False
        self._view: RetentionView | None = None
        self._subject_id = ""

    @workflow.run
    async def run(self, data: RetentionInput) -> RetentionResult:
        self._subject_id = data.subject_id
        self._view = RetentionView(subject_id=data.subject_id, stage=data.stage)
        while True:
            status = await workflow.execute_activity(
                "lifecycle.get_subject_status",
                SubjectIdInput(subject_id=data.subject_id),
                result_type=SubjectStatus,
                start_to_close_timeout=CALL,
                retry_policy=RETRY,
            )
            if not status.exists or status.stage == "PURGED":
                return RetentionResult(subject_id=data.subject_id, outcome="GONE")
            if status.kind == "PROSPECT" and status.converted:
                # The prospect became an account: the account's own clock takes over.
                return RetentionResult(subject_id=data.subject_id, outcome="CONVERTED")
            stage = data.stage if data.stage == "ARCHIVED" else status.stage
            if stage == "ARCHIVED":
                category = ARCHIVED_CATEGORY[status.kind]
                started = data.archived_at or status.archived_at or status.clock_started_at
            else:
                category = ACTIVE_CATEGORY[status.kind]
                started = status.clock_started_at
            if started is None:
                raise ApplicationError("the subject has no retention clock", non_retryable=True)
            due = add_months(started, PERIODS[category].months)
            now = workflow.now()
            self._view = RetentionView(
                subject_id=data.subject_id,
                stage=stage,
                category=category.value,
                due_at=due,
                held=status.legal_hold,
                now=now,
                archive_report=self._view.archive_report if self._view else None,
            )
            if now < due:
                await self._sleep(due - now)
                if workflow.info().is_continue_as_new_suggested():
                    await self._continue(data)
                continue
            if status.legal_hold:
                # Every clock stops while a hold is in force (re-read periodically, or at once when poked).
                await self._sleep(timedelta(days=data.policy.hold_recheck_days))
                continue
            if PERIODS[category].action is Action.ARCHIVE:
                report = await self._step(data.subject_id, status.kind, "ARCHIVE", "RETENTION_ELAPSED", due)
                self._view.archive_report = report
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(
                    RetentionInput(
                        subject_id=data.subject_id,
                        stage="ARCHIVED",
                        archived_at=workflow.now(),
                        policy=data.policy,
                    )
                )
            report = await self._step(data.subject_id, status.kind, "PURGE", "RETENTION_ELAPSED", due)
            await workflow.wait_condition(workflow.all_handlers_finished)
            return RetentionResult(subject_id=data.subject_id, outcome="PURGED", purge_report=report)

    async def _sleep(self, duration: timedelta) -> None:
        """Until the duration passes or a poke/update wakes it (no error either way)."""
        self._poked = False
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self._poked, timeout=duration)

    async def _continue(self, data: RetentionInput) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(data)

    async def _step(self, subject_id: str, kind: str, step: str, reason: str, due: datetime) -> StepReport:
        report: StepReport = await workflow.execute_activity(
            "lifecycle.run_step",
            StepInput(
                subject_id=subject_id,
                kind=kind,
                step=step,
                reason=reason,
                idempotency_key=f"retention:{subject_id}:{step}:{due.date().isoformat()}",
            ),
            result_type=StepReport,
            start_to_close_timeout=LONG_CALL,
            retry_policy=RETRY,
        )
        return report

    @workflow.signal
    def poke(self) -> None:
        """Something changed (hold placed or released, clock moved): re-read now."""
        self._poked = True

    @workflow.update
    async def record_activity(self, data: ActivityInput) -> datetime:
        """RET-02: an activity moves the clock; returns when it now runs out."""
        due: datetime = await workflow.execute_activity(
            "lifecycle.record_subject_activity",
            RecordActivityInput(
                subject_id=self._subject_id,
                occurred_at=data.occurred_at,
                idempotency_key=f"activity:{self._subject_id}:{data.occurred_at.isoformat()}",
            ),
            result_type=datetime,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        self._poked = True
        return due

    @record_activity.validator
    def _validate_activity(self, data: ActivityInput) -> None:
        if self._view is not None and self._view.stage != "ACTIVE":
            raise ValueError("the subject is archived: activity no longer moves its clock")

    @workflow.query
    def state(self) -> RetentionView:
        assert self._view is not None
        view = self._view.model_copy()
        view.now = workflow.now()
        return view


@workflow.defn
class RightsRequestWorkflow:
    def __init__(self) -> None:
        self._facts: RequestFacts | None = None
        self._changed = False
        # A `changed` signal not yet followed by a re-read (PATCH_CHANGED_REREADS).
        self._reread = False
        self._reminders: list[str] = []
        self._notices = 0
        self._notified_months = 0
        self._fulfilment: FulfilResult | None = None
        self._checks = 0
        self._attempts = 0
        self._erasure_failed = False

    @workflow.run
    async def run(self, data: RightsRequestInput) -> RightsRequestView:
        self._attempts = data.erasure_attempts
        self._facts = await self._read(data.request_id)
        while self._facts.status != "ANSWERED":
            if self._facts.status == "POSTPONED" and workflow.patched(PATCH_POSTPONED_ERASURE):
                await self._check_postponed(data)
                continue
            await self._send_due_notices(data)
            wake = self._next_wake(data)
            rereads = workflow.patched(PATCH_CHANGED_REREADS)
            # A signal that came while the loop was busy wakes it at once (patched runs).
            self._changed = rereads and self._reread
            if not self._changed:
                with contextlib.suppress(asyncio.TimeoutError):
                    await workflow.wait_condition(
                        lambda: self._changed, timeout=max(wake - workflow.now(), timedelta(seconds=1))
                    )
            # Woken by an update (which holds the fresh facts): no read. By the timer, or by
            # a `changed` signal (the request changed in identity): read it again.
            if not self._changed or (rereads and self._reread):
                self._facts = await self._read(data.request_id)
        await workflow.wait_condition(workflow.all_handlers_finished)
        # RET-06: the request record now follows its own retention (5 years, 10 archived).
        workflow.continue_as_new(
            RetentionInput(subject_id=data.request_id),
            workflow=SubjectRetentionWorkflow.run,
        )

    async def _read(self, request_id: str) -> RequestFacts:
        self._reread = False  # a signal from now on may come after this read: read again then
        facts: RequestFacts = await workflow.execute_activity(
            "lifecycle.get_rights_request",
            request_id,
            result_type=RequestFacts,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        return facts

    def _reminder_times(self, data: RightsRequestInput) -> list[tuple[str, datetime]]:
        assert self._facts is not None
        due = self._facts.due_at
        times = [
            (f"{due.date().isoformat()}:-{d}d", due - timedelta(days=d))
            for d in sorted(data.reminder_days, reverse=True)
        ]
        times.append((f"{due.date().isoformat()}:due", due))
        return times

    def _overdue_time(self, data: RightsRequestInput) -> tuple[str, datetime]:
        assert self._facts is not None
        due = self._facts.due_at
        elapsed = max(workflow.now() - due, timedelta(0))
        n = elapsed // timedelta(days=data.overdue_reminder_days)
        return (
            f"{due.date().isoformat()}:overdue:{n}",
            due + timedelta(days=data.overdue_reminder_days * n),
        )

    def _next_wake(self, data: RightsRequestInput) -> datetime:
        assert self._facts is not None
        now = workflow.now()
        pending = [t for label, t in self._reminder_times(data) if label not in self._reminders and t > now]
        if pending:
            return min(pending)
        due = self._facts.due_at
        period = timedelta(days=data.overdue_reminder_days)
        if now < due:
            return due
        return due + period * ((now - due) // period + 1)

    async def _send_due_notices(self, data: RightsRequestInput) -> None:
        assert self._facts is not None
        facts = self._facts
        await self._tell_extension(facts)
        now = workflow.now()
        for label, when in self._reminder_times(data):
            if label in self._reminders or when > now:
                continue
            if label.endswith(":due") or now - when < timedelta(days=1):
                await self._notify(facts, "DPO_REMINDER", facts.due_at, f"reminder:{label}")
            self._reminders.append(label)
        if now > facts.due_at:
            label, when = self._overdue_time(data)
            if label not in self._reminders and when <= now and not label.endswith(":overdue:0"):
                await self._notify(facts, "DPO_REMINDER", facts.due_at, f"reminder:{label}")
                self._reminders.append(label)

    async def _tell_extension(self, facts: RequestFacts) -> None:
        """The person is told of each new deadline (GDPR art. 12.3), once."""
        if facts.extension_months > self._notified_months:
            await self._notify(facts, "PERSON_EXTENDED", facts.due_at, f"extended:{facts.extension_months}")
            self._notified_months = facts.extension_months
            self._notices += 1

    async def _notify(self, facts: RequestFacts, kind: str, date: datetime, step: str) -> None:
        await workflow.execute_activity(
            "lifecycle.notify_rights_request",
            NotifyInput(
                request_id=facts.request_id,
                kind=kind,
                subject_id=facts.subject_id,
                date=date,
                idempotency_key=f"rights-request:{facts.request_id}:{step}",
            ),
            result_type=str,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )

    async def _check_postponed(self, data: RightsRequestInput) -> None:
        """A postponed erasure: wait a day (or a `changed` signal), then erase unless a case
        is still in progress. No deadline reminders: the person was answered in time."""
        self._changed = False
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(
                lambda: self._changed, timeout=timedelta(days=data.postponed_recheck_days)
            )
        self._facts = await self._read(data.request_id)
        if self._facts.status != "POSTPONED":
            return  # the DPO answered it meanwhile
        self._checks += 1
        try:
            result = await self._erase_unless_case_in_progress(self._facts)
        except ActivityError:
            # Refused for another reason (a service said no): the request must not be left
            # without its workflow. The DPO is told once; the next check tries again, and
            # the DPO may answer it (`answer`) meanwhile.
            if not self._erasure_failed:
                self._erasure_failed = True
                await self._notify(self._facts, "DPO_REMINDER", self._facts.due_at, "erasure-failed")
            return
        if result is not None:
            self._fulfilment = result
            await self._answer(result.outcome, "")
        elif workflow.info().is_continue_as_new_suggested():
            # A case can outlast many checks; the next run starts from the POSTPONED record.
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(data.model_copy(update={"erasure_attempts": self._attempts}))

    async def _erase_unless_case_in_progress(self, facts: RequestFacts) -> FulfilResult | None:
        """GDPR-03 within the law: the erasure, or None while a case is in progress (the
        dossier needs the file to give the opinion). Asked first (the subject's cases and
        their status), then the dossier's own refusal decides: it refuses before anything
        is touched; a restriction this attempt placed is lifted again so the case goes on."""
        busy: CasesInProgress = await workflow.execute_activity(
            "lifecycle.count_cases_in_progress",
            SubjectIdInput(subject_id=facts.subject_id),
            result_type=CasesInProgress,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        if busy.in_progress:
            return None
        before: SubjectStatus = await workflow.execute_activity(
            "lifecycle.get_subject_status",
            SubjectIdInput(subject_id=facts.subject_id),
            result_type=SubjectStatus,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        # Each attempt has its own keys: a restriction lifted after a refusal is placed again.
        suffix = f":{self._attempts}" if self._attempts else ""
        self._attempts += 1
        await self._run(facts, "RESTRICT", "ERASURE_REQUEST", suffix)
        try:
            report = await self._run(facts, "PURGE", "ERASURE_REQUEST", suffix)
        except ActivityError as error:
            cause = error.cause
            if not (isinstance(cause, ApplicationError) and cause.type == CASE_IN_PROGRESS):
                raise
            if not before.restricted:
                await self._run(facts, "LIFT_RESTRICTION", "ERASURE_REQUEST", suffix)
            return None
        outcome = "PARTIALLY_GRANTED_RESTRICTED" if report.retained else "GRANTED"
        return FulfilResult(kind=facts.kind, outcome=outcome, report=report)

    @workflow.update
    async def extend(self, data: ExtendInput) -> datetime:
        assert self._facts is not None
        self._facts = await workflow.execute_activity(
            "lifecycle.extend_rights_request",
            ExtendCallInput(
                request_id=self._facts.request_id,
                reason=data.reason,
                months=data.months,
                idempotency_key=f"extend:{self._facts.request_id}:{self._facts.extension_months}+{data.months}",
            ),
            result_type=RequestFacts,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        await self._tell_extension(self._facts)
        self._changed = True
        return self._facts.due_at

    def _require_loaded(self) -> RequestFacts:
        """Updates are refused, nothing done, until the run has read the request: the caller
        retries in a moment (the error's type says so: REQUEST_NOT_LOADED)."""
        if self._facts is None:
            raise ApplicationError(
                "the request is still being loaded by its workflow; retry in a moment",
                type=REQUEST_NOT_LOADED,
            )
        return self._facts

    @extend.validator
    def _validate_extend(self, data: ExtendInput) -> None:
        facts = self._require_loaded()
        if facts.status in {"ANSWERED", "POSTPONED"}:
            raise ValueError("the request is already answered")
        if data.months not in (1, 2) or facts.extension_months + data.months > 2:
            raise ValueError("the deadline can be extended by two months at most in total")
        if data.reason not in {"COMPLEXITY", "NUMBER_OF_REQUESTS"}:
            raise ValueError("reason must be COMPLEXITY or NUMBER_OF_REQUESTS")

    @workflow.update
    async def answer(self, data: AnswerInput) -> RightsRequestView:
        await self._answer(data.outcome, data.answer_document_id)
        return self.state()

    @answer.validator
    def _validate_answer(self, data: AnswerInput) -> None:
        if self._require_loaded().status == "ANSWERED":
            raise ValueError("the request is already answered")
        if data.outcome not in {
            "GRANTED",
            "PARTIALLY_GRANTED_RESTRICTED",
            "REFUSED",
            "IDENTITY_NOT_VERIFIED",
        }:
            raise ValueError("unknown outcome")

    async def _answer(self, outcome: str, document_id: str, step: str = "") -> None:
        assert self._facts is not None
        self._facts = await workflow.execute_activity(
            "lifecycle.answer_rights_request",
            AnswerCallInput(
                request_id=self._facts.request_id,
                outcome=outcome,
                answer_document_id=document_id,
                idempotency_key=f"answer:{self._facts.request_id}" + (f":{step}" if step else ""),
            ),
            result_type=RequestFacts,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        self._changed = True

    @workflow.update
    async def fulfil(self) -> FulfilResult:
        """Carries out an access, portability, erasure or restriction request and records
        the answer. Erasure keeps, restricted, what the law requires (invoices, evidence of
        consent) and the answer says so (PARTIALLY_GRANTED_RESTRICTED). An erasure while a
        case is in progress is answered REFUSED_CASE_IN_PROGRESS (the person told) and
        carried out by the workflow once the case has ended."""
        facts = self._facts
        assert facts is not None
        if facts.kind in {"ACCESS", "PORTABILITY"}:
            # The person downloads the archive from "Mes données" (the answer names it).
            stored = workflow.patched(PATCH_EXPORT_DOCUMENT)
            export = await workflow.execute_activity(
                "lifecycle.export_to_dossier" if stored else "lifecycle.export_subject",
                ExportInput(request_id=facts.request_id, subject_id=facts.subject_id),
                result_type=ExportResult,
                start_to_close_timeout=LONG_CALL,
                retry_policy=RETRY,
            )
            result = FulfilResult(kind=facts.kind, outcome="GRANTED", export=export)
        elif facts.kind == "ERASURE" and workflow.patched(PATCH_POSTPONED_ERASURE):
            erased = await self._erase_unless_case_in_progress(facts)
            if erased is None:
                postponed = FulfilResult(kind=facts.kind, outcome="REFUSED_CASE_IN_PROGRESS")
                self._fulfilment = postponed
                await self._answer(postponed.outcome, "", "postponed")
                assert self._facts is not None
                await self._notify(self._facts, "PERSON_POSTPONED", self._facts.due_at, "postponed")
                return postponed
            result = erased
        elif facts.kind == "ERASURE":
            # The legally kept part is restricted first, then everything else purged.
            await self._run(facts, "RESTRICT", "ERASURE_REQUEST")
            report = await self._run(facts, "PURGE", "ERASURE_REQUEST")
            outcome = "PARTIALLY_GRANTED_RESTRICTED" if report.retained else "GRANTED"
            result = FulfilResult(kind=facts.kind, outcome=outcome, report=report)
        else:
            report = await self._run(facts, "RESTRICT", "ERASURE_REQUEST")
            result = FulfilResult(kind=facts.kind, outcome="GRANTED", report=report)
        self._fulfilment = result
        await self._answer(result.outcome, result.export.document_id if result.export else "")
        return result

    @fulfil.validator
    def _validate_fulfil(self) -> None:
        facts = self._require_loaded()
        if facts.status == "ANSWERED":
            raise ValueError("the request is already answered")
        if facts.status == "POSTPONED":
            raise ValueError("the erasure waits for the case in progress to end; it is carried out then")
        if facts.kind not in {"ACCESS", "PORTABILITY", "ERASURE", "RESTRICTION"}:
            raise ValueError("this kind of request is handled by the DPO, then answered with `answer`")

    async def _run(self, facts: RequestFacts, step: str, reason: str, suffix: str = "") -> StepReport:
        report: StepReport = await workflow.execute_activity(
            "lifecycle.run_step",
            StepInput(
                subject_id=facts.subject_id,
                kind="ACCOUNT",
                step=step,
                reason=reason,
                rights_request_id=facts.request_id,
                idempotency_key=f"rights-request:{facts.request_id}:{step}{suffix}",
            ),
            result_type=StepReport,
            start_to_close_timeout=LONG_CALL,
            retry_policy=RETRY,
        )
        return report

    @workflow.signal
    def changed(self) -> None:
        """The request changed outside the workflow (extended or answered directly), or a
        postponed erasure should be checked now (the case ended): the request is read again
        from identity at once (runs from PATCH_CHANGED_REREADS on)."""
        self._changed = True
        self._reread = True

    @workflow.query
    def state(self) -> RightsRequestView:
        facts = self._require_loaded()
        return RightsRequestView(
            request_id=facts.request_id,
            status=facts.status,
            due_at=facts.due_at,
            extension_months=facts.extension_months,
            reminders_sent=list(self._reminders),
            extension_notices=self._notices,
            outcome=facts.outcome,
            fulfilment=self._fulfilment,
            now=workflow.now(),
            answered_at=facts.answered_at,
            postponed_checks=self._checks,
        )


@workflow.defn
class RetentionSweepWorkflow:
    @workflow.run
    async def run(self, data: SweepInput) -> SweepResult:
        as_of = data.as_of or workflow.now()
        age = await workflow.execute_activity(
            "lifecycle.purge_by_age",
            AgePurgeInput(as_of=as_of, idempotency_key=f"sweep:{as_of.date().isoformat()}"),
            result_type=StepReport,
            start_to_close_timeout=LONG_CALL,
            retry_policy=RETRY,
        )
        due: list[DueSweepResult] = []
        for category in data.categories:
            due.append(
                await workflow.execute_activity(
                    "lifecycle.start_due_workflows",
                    DueSweepInput(category=category, as_of=as_of),
                    result_type=DueSweepResult,
                    start_to_close_timeout=timedelta(hours=2),
                    heartbeat_timeout=timedelta(minutes=2),
                    retry_policy=RETRY,
                )
            )
        rights: RightsSweepResult | None = None
        if workflow.patched(PATCH_SWEEP_RIGHTS_REQUESTS):
            rights = await workflow.execute_activity(
                "lifecycle.start_rights_request_workflows",
                RightsSweepInput(as_of=as_of),
                result_type=RightsSweepResult,
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
            )
        return SweepResult(as_of=as_of, age_purges=age, due=due, rights_requests=rights)


@workflow.defn
class LegalTextAnnouncementWorkflow:
    """Started by whoever publishes a version with `announce` (see `start_announcement`)."""

    @workflow.run
    async def run(self, data: AnnouncementInput) -> AnnouncementResult:
        text = await workflow.execute_activity(
            "lifecycle.get_legal_text",
            TextIdInput(text_id=data.text_id),
            result_type=LegalTextFacts,
            start_to_close_timeout=CALL,
            retry_policy=RETRY,
        )
        token, sent, skipped = data.page_token, data.sent, data.skipped
        for _ in range(data.pages_per_run):
            page = await workflow.execute_activity(
                "lifecycle.announce_page",
                AnnouncePageInput(
                    workflow_id=workflow.info().workflow_id,
                    text_id=text.text_id,
                    locale=text.locale,
                    effective_at=text.effective_at,
                    page_token=token,
                    page_size=data.page_size,
                ),
                result_type=AnnouncePageResult,
                start_to_close_timeout=LONG_CALL,
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RETRY,
            )
            sent, skipped, token = sent + page.sent, skipped + page.skipped, page.next_page_token
            if not token:
                return AnnouncementResult(
                    text_id=text.text_id,
                    version=text.version,
                    effective_at=text.effective_at,
                    sent=sent,
                    skipped=skipped,
                )
        workflow.continue_as_new(
            data.model_copy(update={"page_token": token, "sent": sent, "skipped": skipped})
        )
