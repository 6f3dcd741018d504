"""A case worker in its own process, for the exactly-once test: recording activities
(fakes.py) writing to a shared SQLite recorder, and crash points where the process
kills itself with SIGKILL right after a side effect and before the activity completes
(the worst moment: the effect happened, Temporal does not know).

    python -m tests.workflows.crash_worker --address H:P --queue Q --recorder R.db \
        --keys-dir D --key-id K --markers DIR --crash-after create_offer,notify:doctor_new_offer
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from temporalio import activity

from tests.workflows.fakes import FakeServices, Recorder, World
from workflows.case.models import CreateOfferInput, NotifyInput, OfferRef
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import connect
from workflows.worker import build_worker


class CrashingServices(FakeServices):
    def __init__(self, world: World, recorder: Recorder, crash_points: set[str], markers: Path) -> None:
        super().__init__(world, recorder)
        self._crash_points = crash_points
        self._markers = markers

    def _maybe_crash(self, point: str) -> None:
        marker = self._markers / point.replace(":", "_")
        if point in self._crash_points and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    @activity.defn(name="notify")
    async def notify(self, data: NotifyInput) -> str:
        result = await super().notify(data)
        self._maybe_crash(f"notify:{data.template.value}")
        return result

    @activity.defn(name="create_offer")
    async def create_offer(self, data: CreateOfferInput) -> OfferRef:
        result = await super().create_offer(data)
        self._maybe_crash("create_offer")
        return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    for option in ("--address", "--queue", "--recorder", "--keys-dir", "--key-id", "--markers"):
        parser.add_argument(option, required=True)
    parser.add_argument("--crash-after", default="")
    args = parser.parse_args()
    settings = TemporalSettings(
        address=args.address,
        case_task_queue=args.queue,
        payload_keys_dir=Path(args.keys_dir),
        payload_key_id=args.key_id,
        payload_key_autocreate=False,
    )
    world = World(payment="captured", reports={"rep-1": "acct-doc-a"})
    services = CrashingServices(
        world,
        Recorder(Path(args.recorder)),
        set(filter(None, args.crash_after.split(","))),
        Path(args.markers),
    )
    client = await connect(settings)
    worker = build_worker(client, settings, WorkerSettings(sticky_queue_timeout_seconds=1), services.all())
    print("worker ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
