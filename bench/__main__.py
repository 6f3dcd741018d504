"""`python -m bench [name ...]`: run the benchmarks (all by default)."""

from __future__ import annotations

import asyncio
import sys

from bench import (
    billing_invoices,
    case_throughput,
    dossier_transfer,
    gateway_overhead,
    gateway_pages,
    identity_login,
    matching_pick,
    notifications_delivery,
    notifications_send,
    retention_sweep,
)

BENCHMARKS = {
    "gateway_overhead": gateway_overhead.run,
    "gateway_pages": gateway_pages.run,
    "identity_login": identity_login.run,
    "matching_pick": matching_pick.run,
    "billing_invoices": billing_invoices.run,
    "notifications_delivery": notifications_delivery.run,
    "notifications_send": notifications_send.run,
    "case_throughput": case_throughput.run,
    "dossier_transfer": dossier_transfer.run,
    "retention_sweep": retention_sweep.run,
}


async def main(names: list[str]) -> None:
    for name in names or list(BENCHMARKS):
        print(f"\n== {name}")
        await BENCHMARKS[name]()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
