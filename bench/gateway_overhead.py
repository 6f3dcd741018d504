"""p50/p99 of a trivial authenticated RPC (GetAccount) through the gateway
(HTTP + session validation + the RPC) versus the same RPC called directly over gRPC.

Both run against the same in-process stack (SQLite, loopback), one request at a time,
so the ratio isolates what the gateway adds."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc

from bench.common import LatencyStats, measure, table, write_results
from services.shared.auth import Role
from services.shared.grpc_client import open_channel
from tests.support.stack import platform_stack

SAMPLES = 1000


async def run() -> list[LatencyStats]:
    with tempfile.TemporaryDirectory() as workdir:
        async with platform_stack(Path(workdir), "sqlite") as stack:
            async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
                account = await identity_pb2_grpc.IdentityServiceStub(channel).SignUp(
                    identity_pb2.SignUpRequest(
                        idempotency_key="bench-patient",
                        email="bench@example.org",
                        phone_number="+33612345678",
                        password="Bench-Mark-2026",
                        declared_age=40,
                    )
                )
            session = await stack.open_session(account.account_id)
            token, _ = stack.identity_tokens().mint(account.account_id, Role.PATIENT, "bench")
            request = identity_pb2.GetAccountRequest(account_id=account.account_id)
            async with open_channel(stack.target("identity"), lambda: token) as direct_channel:
                direct = identity_pb2_grpc.IdentityServiceStub(direct_channel)
                async with httpx.AsyncClient(
                    base_url=stack.gateway_url, headers={"Authorization": f"Bearer {session}"}
                ) as http:

                    async def via_gateway() -> None:
                        response = await http.get("/api/v1/me")
                        response.raise_for_status()

                    async def via_grpc() -> None:
                        await direct.GetAccount(request)

                    rows = [
                        await measure("GetAccount direct gRPC (baseline)", via_grpc, SAMPLES),
                        await measure("GET /api/v1/me through the gateway", via_gateway, SAMPLES),
                    ]
    ratio_p50 = round(rows[1].p50_ms / rows[0].p50_ms, 2)
    ratio_p99 = round(rows[1].p99_ms / rows[0].p99_ms, 2)
    path = write_results("gateway_overhead", rows, {"ratio_p50": ratio_p50, "ratio_p99": ratio_p99})
    print(table(rows))
    print(f"gateway / direct: p50 x{ratio_p50}, p99 x{ratio_p99}   ({path})")
    return rows
