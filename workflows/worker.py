"""The case worker: `python -m workflows.worker`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import InternalAuthSettings
from workflows.case.activities import CaseActivities
from workflows.case.workflow import CaseWorkflow
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import connect

WORKER_ISSUER = "worker"


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
    dossier = open_channel(settings.dossier_target, tokens, timeout)
    matching = open_channel(settings.matching_target, tokens, timeout)
    activities = CaseActivities(dossier, matching, timeout)
    worker = Worker(
        client,
        task_queue=temporal.case_task_queue,
        workflows=[CaseWorkflow],
        activities=[activities.list_candidate_doctors, activities.report_case_status],
        graceful_shutdown_timeout=timedelta(seconds=settings.graceful_shutdown_seconds),
    )
    try:
        async with worker:
            yield worker
    finally:
        await dossier.close()
        await matching.close()


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
