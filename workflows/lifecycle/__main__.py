"""`python -m workflows.lifecycle`: the lifecycle worker and its daily sweep schedule."""

from __future__ import annotations

import asyncio
import signal

from services.shared.logging import configure_logging
from services.shared.settings import InternalAuthSettings
from workflows.lifecycle.settings import LifecycleSettings
from workflows.lifecycle.worker import ensure_sweep_schedule, lifecycle_worker
from workflows.settings import TemporalSettings
from workflows.temporal_client import connect


async def main() -> None:
    settings = LifecycleSettings()
    temporal = TemporalSettings()
    configure_logging("lifecycle-worker", settings.log_level)
    client = await connect(temporal)
    await ensure_sweep_schedule(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with lifecycle_worker(client, settings, InternalAuthSettings(), temporal):
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
