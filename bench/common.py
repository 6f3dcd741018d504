"""Timing helpers and the results table."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class LatencyStats:
    name: str
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float


async def measure(
    name: str, call: Callable[[], Awaitable[object]], samples: int, warmup: int = 50
) -> LatencyStats:
    for _ in range(warmup):
        await call()
    timings: list[float] = []
    for _ in range(samples):
        started = time.perf_counter()
        await call()
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return LatencyStats(
        name=name,
        samples=samples,
        p50_ms=round(timings[len(timings) // 2], 3),
        p99_ms=round(timings[min(len(timings) - 1, int(len(timings) * 0.99))], 3),
        mean_ms=round(statistics.fmean(timings), 3),
    )


def write_results(bench: str, rows: list[LatencyStats], extra: dict[str, object]) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{bench}.json"
    payload = {
        "bench": bench,
        "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
        "results": [asdict(row) for row in rows],
        **extra,
    }
    path.write_text(json.dumps(payload, indent=2))
    return path


def table(rows: list[LatencyStats]) -> str:
    header = f"{'measurement':58} {'n':>6} {'p50 ms':>9} {'p99 ms':>9} {'mean ms':>9}"
    lines = [header, "-" * len(header)]
    lines += [f"{r.name:58} {r.samples:>6} {r.p50_ms:>9.3f} {r.p99_ms:>9.3f} {r.mean_ms:>9.3f}" for r in rows]
    return "\n".join(lines)
