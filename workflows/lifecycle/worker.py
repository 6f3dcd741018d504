"""The lifecycle worker: `python -m workflows.lifecycle` (own task queue, `lifecycle`)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.worker import Worker

from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import InternalAuthSettings
from workflows.lifecycle.activities import LifecycleActivities
from workflows.lifecycle.models import AnnouncementInput, AnnouncementResult, SweepInput
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.workflows import (
    LegalTextAnnouncementWorkflow,
    RetentionSweepWorkflow,
    RightsRequestWorkflow,
    SubjectRetentionWorkflow,
    announcement_workflow_id,
)
from workflows.settings import TemporalSettings
from workflows.temporal_client import with_data_converter

# The lifecycle worker calls the services as the platform's worker identity.
WORKER_ISSUER = "worker"
WORKFLOWS = [
    SubjectRetentionWorkflow,
    RightsRequestWorkflow,
    RetentionSweepWorkflow,
    LegalTextAnnouncementWorkflow,
]


def build_lifecycle_worker(
    client: Client,
    temporal: TemporalSettings,
    settings: LifecycleSettings,
    activities: Sequence[Callable[..., Awaitable[Any]]],
) -> Worker:
    return Worker(
        with_data_converter(client, temporal),
        task_queue=settings.task_queue,
        workflows=WORKFLOWS,
        activities=list(activities),
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )


@asynccontextmanager
async def lifecycle_activities(
    client: Client | None, settings: LifecycleSettings, auth: InternalAuthSettings
) -> AsyncIterator[LifecycleActivities]:
    tokens = ServiceTokenProvider(
        TokenSigner.from_keys_dir(auth.keys_dir, WORKER_ISSUER, auth.token_ttl_seconds)
    )
    timeout = settings.service_call_timeout_seconds
    targets = {
        "dossier": settings.dossier_target,
        "matching": settings.matching_target,
        "billing": settings.billing_target,
    }
    async with AsyncExitStack() as channels:
        identity = await channels.enter_async_context(open_channel(settings.identity_target, tokens, timeout))
        notifications = await channels.enter_async_context(
            open_channel(settings.notifications_target, tokens, timeout)
        )
        billing = await channels.enter_async_context(open_channel(settings.billing_target, tokens, timeout))
        services = {
            name: await channels.enter_async_context(open_channel(targets[name], tokens, timeout))
            for name in settings.subject_services
        }
        yield LifecycleActivities(
            identity=identity,
            notifications=notifications,
            services=services,
            billing=billing,
            client=client,
            retention_task_queue=settings.task_queue,
            dpo_email=settings.dpo_email,
            portal_base_url=settings.portal_base_url,
            export_dir=settings.export_dir,
        )


@asynccontextmanager
async def lifecycle_worker(
    client: Client,
    settings: LifecycleSettings,
    auth: InternalAuthSettings,
    temporal: TemporalSettings | None = None,
) -> AsyncIterator[Worker]:
    """A running lifecycle worker with its service channels."""
    temporal = temporal or TemporalSettings()
    sealed = with_data_converter(client, temporal)
    async with lifecycle_activities(sealed, settings, auth) as activities:
        worker = build_lifecycle_worker(client, temporal, settings, activities.all())
        async with worker:
            yield worker


async def ensure_sweep_schedule(client: Client, settings: LifecycleSettings) -> None:
    """The daily retention sweep as a Temporal Schedule (created once; left as is after)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            RetentionSweepWorkflow.run,
            SweepInput(),
            id=f"{settings.sweep_schedule_id}-run",
            task_queue=settings.task_queue,
        ),
        spec=ScheduleSpec(cron_expressions=[settings.sweep_cron]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(settings.sweep_schedule_id, schedule)


async def start_announcement(
    client: Client, settings: LifecycleSettings, text_id: str
) -> WorkflowHandle[Any, AnnouncementResult]:
    """GDPR-09: after `PublishLegalText(announce=true)`, the publisher starts the fan-out.
    Starting it again for the same version while it runs returns the running one; once it
    has finished, a new run sends nothing twice (same idempotency keys)."""
    return await client.start_workflow(
        LegalTextAnnouncementWorkflow.run,
        AnnouncementInput(text_id=text_id),
        id=announcement_workflow_id(text_id),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
