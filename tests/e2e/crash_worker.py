"""The real case worker (real activities, real service channels) in its own process, with
crash points where it kills itself with SIGKILL right after a side effect reached a
service and before the activity completes (the worst moment: the service did it,
Temporal does not know).

    python -m tests.e2e.crash_worker --address H:P --namespace N --queue Q \
        --payload-keys-dir D --auth-keys-dir A --markers M \
        --identity T --dossier T --matching T --billing T --notifications T \
        --crash-after create_order,notify:doctor_new_offer
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from temporalio import activity

from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import InternalAuthSettings
from workflows.case.activities import CaseActivities
from workflows.case.models import CreateOrderInput, NotifyInput, OrderRef, RecordAssignmentInput
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import connect
from workflows.worker import WORKER_ISSUER, build_worker

SERVICES = ("identity", "dossier", "matching", "billing", "notifications")


class CrashingActivities(CaseActivities):
    def __init__(self, crash_points: set[str], markers: Path, **channels: Any) -> None:
        super().__init__(**channels)
        self._crash_points = crash_points
        self._markers = markers

    def _maybe_crash(self, point: str) -> None:
        marker = self._markers / point.replace(":", "_")
        if point in self._crash_points and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    @activity.defn(name="create_order")
    async def create_order(self, data: CreateOrderInput) -> OrderRef:
        result = await super().create_order(data)
        self._maybe_crash("create_order")
        return result

    @activity.defn(name="record_assignment")
    async def record_assignment(self, data: RecordAssignmentInput) -> None:
        await super().record_assignment(data)
        self._maybe_crash("record_assignment")

    @activity.defn(name="notify")
    async def notify(self, data: NotifyInput) -> str:
        result = await super().notify(data)
        self._maybe_crash(f"notify:{data.template.value}")
        return result


async def main() -> None:
    parser = argparse.ArgumentParser()
    for option in (
        "--address",
        "--namespace",
        "--queue",
        "--payload-keys-dir",
        "--auth-keys-dir",
        "--markers",
    ):
        parser.add_argument(option, required=True)
    for service in SERVICES:
        parser.add_argument(f"--{service}", required=True)
    parser.add_argument("--crash-after", default="")
    parser.add_argument("--call-timeout", type=float, default=3.0)
    args = parser.parse_args()
    temporal = TemporalSettings(
        address=args.address,
        namespace=args.namespace,
        case_task_queue=args.queue,
        payload_keys_dir=Path(args.payload_keys_dir),
        payload_key_autocreate=False,
    )
    auth = InternalAuthSettings(keys_dir=Path(args.auth_keys_dir))
    tokens = ServiceTokenProvider(
        TokenSigner.from_keys_dir(auth.keys_dir, WORKER_ISSUER, auth.token_ttl_seconds)
    )
    async with AsyncExitStack() as exits:
        channels = {
            service: await exits.enter_async_context(
                open_channel(getattr(args, service), tokens, args.call_timeout)
            )
            for service in SERVICES
        }
        activities = CrashingActivities(
            set(filter(None, args.crash_after.split(","))),
            Path(args.markers),
            call_timeout=args.call_timeout,
            coordinator_email="coordination@secondopinion.example",
            portal_base_url=WorkerSettings().portal_base_url,
            **channels,
        )
        client = await connect(temporal)
        worker = build_worker(
            client, temporal, WorkerSettings(sticky_queue_timeout_seconds=1), activities.all()
        )
        print("worker ready", flush=True)
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
