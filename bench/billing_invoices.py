"""Billing under concurrency on PostgreSQL, through the real gRPC server:

1. invoices issued per second with gap-free numbering, 8 concurrent writers (IssueInvoices:
   one doctor invoice + the platform's invoice per order, both series shared by every
   writer; the number and the row in a short transaction, the PDF rendered and archived
   after commit by the service's renderer), against a baseline of plain INSERTs of the
   same invoice rows without numbering, rendering or archiving; and how long until every
   issued invoice's PDF is archived (documents archived per second, from the first issue);
2. 50 concurrent duplicate PSP notifications for one order: exactly one capture, and the
   time it took, against 50 concurrent notifications for 50 different orders.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy import text

from bench.common import LatencyStats, table, write_results
from services.billing.app import running
from services.billing.psp.keys import generate_rsa_key, public_pem
from services.billing.settings import BillingSettings
from services.shared.auth import ServiceTokenProvider, TokenSigner, generate_keypair
from services.shared.db import create_engine, upgrade_to_head_async
from services.shared.grpc_client import open_channel
from services.shared.migrate import migrations_dir
from services.shared.protoconv import to_timestamp
from services.shared.settings import Environment, InternalAuthSettings
from tests.support.databases import fresh_postgres_database

WRITERS = 8
ORDERS = 120
DUPLICATES = 50


def stats(name: str, timings: list[float]) -> LatencyStats:
    timings = sorted(timings)
    return LatencyStats(
        name=name,
        samples=len(timings),
        p50_ms=round(timings[len(timings) // 2], 3),
        p99_ms=round(timings[min(len(timings) - 1, int(len(timings) * 0.99))], 3),
        mean_ms=round(statistics.fmean(timings), 3),
    )


def sign(key: object, data: str) -> str:
    signature = key.sign(data.encode(), padding.PKCS1v15(), hashes.SHA1())  # type: ignore[attr-defined]
    return f"{data}&Sign={quote(base64.b64encode(signature).decode(), safe='')}"


def notification(raw: str) -> pb.HandlePspNotificationRequest:
    return pb.HandlePspNotificationRequest(
        idempotency_key=hashlib.sha256(raw.encode()).hexdigest(),
        kind=pb.PSP_MESSAGE_KIND_NOTIFICATION,
        raw_payload=raw,
    )


async def run() -> list[LatencyStats]:
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        for issuer in ("worker", "gateway", "ops", "billing"):
            generate_keypair(workdir / "keys", issuer)
        auth = InternalAuthSettings(keys_dir=workdir / "keys")
        psp_key = generate_rsa_key()
        (workdir / "psp.pub.pem").write_bytes(public_pem(psp_key))
        async with fresh_postgres_database("billing_bench") as url:
            await upgrade_to_head_async(url, migrations_dir("billing"))
            settings = BillingSettings(
                environment=Environment.TEST,
                port=0,
                database_url=url,
                psp_hmac_key_hex=secrets.token_hex(64),
                psp_public_key_path=workdir / "psp.pub.pem",
                coverage_code_secret_hex=secrets.token_hex(32),
                archive_dir=workdir / "archive",
                notifications_target="127.0.0.1:1",
                identity_target="127.0.0.1:1",
                outbox_poll_seconds=3600,
            )
            async with running(settings, auth) as server:
                tokens = {
                    i: ServiceTokenProvider(TokenSigner.from_keys_dir(auth.keys_dir, i))
                    for i in ("worker", "gateway", "ops")
                }
                channels = {i: open_channel(server.target, tokens[i], 30.0) for i in tokens}
                try:
                    rows, extra = await _bench(
                        url,
                        {i: cast(Any, pb_grpc.BillingServiceStub(c)) for i, c in channels.items()},
                        psp_key,
                    )
                finally:
                    for channel in channels.values():
                        await channel.close()
    path = write_results("billing_invoices", rows, extra)
    print(table(rows))
    for key, value in extra.items():
        print(f"{key}: {value}")
    print(f"({path})")
    return rows


async def _paid_orders(stubs: dict[str, Any], psp_key: object, count: int) -> list[pb.Order]:
    orders = []
    for _ in range(count):
        case_id = str(uuid.uuid4())
        order = (
            await stubs["worker"].CreateOrder(
                pb.CreateOrderRequest(
                    idempotency_key=f"o-{case_id}",
                    case_id=case_id,
                    payer_account_id=str(uuid.uuid4()),
                    purpose=pb.CASE_PURPOSE_SECOND_OPINION,
                    doctor_count=1,
                )
            )
        ).order
        orders.append(order)
    return orders


async def _start(stubs: dict[str, Any], order: pb.Order) -> str:
    started = await stubs["gateway"].StartCardPayment(
        pb.StartCardPaymentRequest(idempotency_key=f"p-{order.order_id}", order_id=order.order_id)
    )
    return str({f.name: f.value for f in started.form_fields}["PBX_CMD"])


def _ipn(psp_key: object, order: pb.Order, reference: str, transaction: int) -> str:
    return sign(
        psp_key, f"Mt={order.total_amount_cents}&Ref={reference}&Auto=123456&Erreur=00000&Trans={transaction}"
    )


async def _bench(
    url: str, stubs: dict[str, Any], psp_key: object
) -> tuple[list[LatencyStats], dict[str, object]]:
    now = datetime.now(UTC)
    mandate = (
        await stubs["ops"].RecordBillingMandate(
            pb.RecordBillingMandateRequest(
                idempotency_key="bench-mandate",
                doctor_id=str(uuid.uuid4()),
                doctor_account_id=str(uuid.uuid4()),
                doctor_legal_name="Dr Bench",
                covers_billing=True,
                covers_collection=True,
                starts_at=to_timestamp(now - timedelta(days=1)),
                mandate_text_version="1",
                mandate_text_sha256_hex=hashlib.sha256(b"m").hexdigest(),
                signed_document_id=str(uuid.uuid4()),
                accepted_at=to_timestamp(now - timedelta(days=1)),
            )
        )
    ).mandate
    # Paid orders to invoice.
    orders = await _paid_orders(stubs, psp_key, ORDERS)
    for n, order in enumerate(orders):
        reference = await _start(stubs, order)
        await stubs["gateway"].HandlePspNotification(
            notification(_ipn(psp_key, order, reference, 70_000_000 + n))
        )
    # 1. Invoices, 8 writers.
    queue: asyncio.Queue[pb.Order] = asyncio.Queue()
    for order in orders:
        queue.put_nowait(order)
    timings: list[float] = []

    async def writer() -> None:
        while not queue.empty():
            order = queue.get_nowait()
            started = time.perf_counter()
            await stubs["worker"].IssueInvoices(
                pb.IssueInvoicesRequest(
                    idempotency_key=f"i-{order.order_id}",
                    order_id=order.order_id,
                    doctor_ids=[mandate.doctor_id],
                )
            )
            timings.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    elapsed = time.perf_counter() - started
    invoices_per_second = round(2 * ORDERS / elapsed, 1)
    engine = create_engine(url, pool_size=WRITERS)
    try:
        while True:  # the renderer archives every PDF after the numbering commits
            async with engine.connect() as connection:
                left = await connection.scalar(
                    text("SELECT count(*) FROM invoices WHERE archived_at IS NULL")
                )
            if not left:
                break
            await asyncio.sleep(0.05)
        archived_elapsed = time.perf_counter() - started
        async with engine.connect() as connection:
            series = (
                await connection.execute(
                    text(
                        "SELECT series, count(*), min(sequence), max(sequence) FROM invoices GROUP BY series"
                    )
                )
            ).fetchall()
        gap_free = all(count == top and low == 1 for _, count, low, top in series)
        # Baseline: the same rows as plain INSERTs, no counter, no rendering, no archive.
        base_timings: list[float] = []
        base_queue = list(range(2 * ORDERS))

        async def base_writer() -> None:
            while base_queue:
                n = base_queue.pop()
                began = time.perf_counter()
                async with engine.begin() as connection:
                    await connection.execute(
                        text(
                            "INSERT INTO invoices (invoice_id, invoice_number, series, sequence, kind, "
                            "issuer_kind, issuer_doctor_id, billing_mandate_id, recipient_kind, "
                            "recipient_account_id, recipient_partner_id, order_id, case_id, lines, "
                            "total_amount_cents, currency, format, archive_key, sha256_hex, archive_locked, "
                            "issued_at, corrects_invoice_id, archived_at) "
                            "VALUES (:id, :num, 'BASE', :n, 'invoice', "
                            "'platform', '', '', 'user', '', '', :order, '', '[]', 1, "
                            "'EUR', 'pdf', '', '', false, now(), '', now())"
                        ),
                        {
                            "id": str(uuid.uuid4()),
                            "num": f"BASE-{n}",
                            "n": n,
                            "order": orders[n % ORDERS].order_id,
                        },
                    )
                base_timings.append((time.perf_counter() - began) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(base_writer() for _ in range(WRITERS)))
        base_elapsed = time.perf_counter() - began
    finally:
        await engine.dispose()
    baseline_per_second = round(2 * ORDERS / base_elapsed, 1)
    # 2. 50 duplicate notifications for one order, and 50 notifications for 50 orders.
    (one,) = await _paid_orders(stubs, psp_key, 1)
    ipn = _ipn(psp_key, one, await _start(stubs, one), 80_000_000)
    began = time.perf_counter()
    answers = await asyncio.gather(
        *(stubs["gateway"].HandlePspNotification(notification(ipn)) for _ in range(DUPLICATES)),
        return_exceptions=True,
    )
    duplicate_ms = (time.perf_counter() - began) * 1000
    captures = sum(1 for a in answers if isinstance(a, pb.HandlePspNotificationResponse) and a.captured_now)
    refused = sum(1 for a in answers if isinstance(a, BaseException))
    distinct_orders = await _paid_orders(stubs, psp_key, DUPLICATES)
    payloads = [
        _ipn(psp_key, o, await _start(stubs, o), 81_000_000 + n) for n, o in enumerate(distinct_orders)
    ]
    began = time.perf_counter()
    distinct = await asyncio.gather(
        *(stubs["gateway"].HandlePspNotification(notification(p)) for p in payloads)
    )
    distinct_ms = (time.perf_counter() - began) * 1000
    rows = [
        stats(f"IssueInvoices (2 invoices), {WRITERS} writers", timings),
        stats(f"baseline: plain INSERT of one invoice row, {WRITERS} writers", base_timings),
    ]
    extra: dict[str, object] = {
        "invoices_per_second": invoices_per_second,
        "all_pdfs_archived_after_s": round(archived_elapsed, 2),
        "pdfs_archived_per_second": round(2 * ORDERS / archived_elapsed, 1),
        "baseline_inserts_per_second": baseline_per_second,
        "gap_free": gap_free,
        "series": [list(map(str, row)) for row in series],
        "duplicate_notifications": DUPLICATES,
        "duplicate_captures": captures,
        "duplicate_errors": refused,
        "duplicate_total_ms": round(duplicate_ms, 1),
        "distinct_notifications_total_ms": round(distinct_ms, 1),
        "distinct_captures": sum(1 for d in distinct if d.captured_now),
    }
    return rows, extra


if __name__ == "__main__":
    asyncio.run(run())
