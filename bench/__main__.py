"""`python -m bench [name ...]`: run the benchmarks (all by default)."""

from __future__ import annotations

import asyncio
import sys

from bench import gateway_overhead

BENCHMARKS = {"gateway_overhead": gateway_overhead.run}


async def main(names: list[str]) -> None:
    for name in names or list(BENCHMARKS):
        print(f"\n== {name}")
        await BENCHMARKS[name]()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
