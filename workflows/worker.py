"""The case worker: `python -m workflows.worker`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import InternalAuthSettings
from workflows.case.activities import CaseActivities
from workflows.case.workflow import CaseWorkflow
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import connect, with_data_converter

WORKER_ISSUER = "worker"


def build_worker(
    client: Client,
    temporal: TemporalSettings,
    settings: WorkerSettings,
    activities: Sequence[Callable[..., Awaitable[Any]]],
) -> Worker:
    """The case worker around any activity implementations (the real ones below; tests
    register recording implementations under the same names). The client is re-made
    with the platform's data converter, so payloads are always sealed by the codec."""
    return Worker(
        with_data_converter(client, temporal),
        task_queue=temporal.case_task_queue,
        workflows=[CaseWorkflow],
        activities=list(activities),
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_queue_timeout_seconds),
    )


@asynccontextmanager
async def case_worker(
    client: Client,
    temporal: TemporalSettings,
    settings: WorkerSettings,
    auth: InternalAuthSettings,
) -> AsyncIterator[Worker]:
    """A running worker for the case task queue, with its service channels."""
    tokens = ServiceTokenProvider(
        TokenSigner.from_keys_dir(auth.keys_dir, WORKER_ISSUER, auth.token_ttl_seconds)
    )
    timeout = settings.service_call_timeout_seconds
    async with AsyncExitStack() as channels:
        targets = {
            "identity": settings.identity_target,
            "dossier": settings.dossier_target,
            "matching": settings.matching_target,
            "billing": settings.billing_target,
            "notifications": settings.notifications_target,
        }
        opened = {
            name: await channels.enter_async_context(open_channel(target, tokens, timeout))
            for name, target in targets.items()
        }
        activities = CaseActivities(
            identity=opened["identity"],
            dossier=opened["dossier"],
            matching=opened["matching"],
            billing=opened["billing"],
            notifications=opened["notifications"],
            call_timeout=timeout,
            coordinator_email=settings.coordinator_email,
            portal_base_url=settings.portal_base_url,
        )
        worker = build_worker(client, temporal, settings, activities.all())
        async with worker:
            yield worker


@asynccontextmanager
async def worker_resources() -> AsyncIterator[Worker]:
    temporal = TemporalSettings()
    client = await connect(temporal)
    async with case_worker(client, temporal, WorkerSettings(), InternalAuthSettings()) as worker:
        yield worker


def main() -> None:
    from services.shared.grpc_server import run_until_signal
    from services.shared.logging import configure_logging
    from services.shared.telemetry import configure_tracing

    configure_logging("worker", WorkerSettings().log_level)
    configure_tracing("worker")
    asyncio.run(run_until_signal(worker_resources()))


if __name__ == "__main__":
    main()
