"""Orders and card payment through the sandbox PSP, end to end (the adapter's real code)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb
from sqlalchemy import text

from services.billing.psp.keys import generate_rsa_key
from services.billing.psp.sandbox import ABANDON_CARD, REFUSED_CARD, SUCCESS_CARD
from services.shared.auth import Role
from services.shared.db import create_engine
from tests.billing.conftest import Env, eventually, expect_status, new_order, now, pay_in_sandbox, ts


def notification(raw: str, kind: Any = pb.PSP_MESSAGE_KIND_NOTIFICATION) -> pb.HandlePspNotificationRequest:
    return pb.HandlePspNotificationRequest(
        idempotency_key=hashlib.sha256(raw.encode()).hexdigest(), kind=kind, raw_payload=raw
    )


def signed(env: Env, data: str, key: object | None = None) -> str:
    private = key or env.sandbox.private_key
    signature = private.sign(data.encode(), padding.PKCS1v15(), hashes.SHA1())  # type: ignore[attr-defined]
    return f"{data}&Sign={quote(base64.b64encode(signature).decode(), safe='')}"


@pytest.mark.req("BIL-03")
@pytest.mark.req("BIL-09")
async def test_the_price_comes_from_the_catalog_in_force_and_is_fixed_on_the_order(env: Env) -> None:
    billing = env.billing()
    price = (
        await billing.GetPrice(
            pb.GetPriceRequest(
                purpose=pb.CASE_PURPOSE_SECOND_OPINION, therapeutic_area="oncology", doctor_count=2
            )
        )
    ).price
    assert price.currency == "EUR"
    assert price.total_amount_cents == 2 * 30000 + 6000
    platform = next(line for line in price.lines if line.kind == pb.LINE_KIND_PLATFORM_FEE)
    assert platform.vat_amount_cents == 1000  # 20 % included in 60.00 EUR
    order = await new_order(env, doctors=2, area="oncology")
    assert order.total_amount_cents == price.total_amount_cents
    assert order.status == pb.ORDER_STATUS_AWAITING_PAYMENT
    # A new catalog in force later changes nothing on the order already placed.
    version = f"v-{uuid.uuid4().hex[:6]}"
    entries = [
        pb.PriceEntry(
            purpose=purpose,
            doctor_fee_amount_cents=35000,
            platform_fee_amount_cents=7000,
            currency="EUR",
            platform_fee_vat_rate_basis_points=2000,
        )
        for purpose in (pb.CASE_PURPOSE_SECOND_OPINION, pb.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM)
    ]
    published = await billing.PublishPriceCatalog(
        pb.PublishPriceCatalogRequest(
            idempotency_key=f"catalog-{version}",
            catalog_version=version,
            effective_at=ts(now() + timedelta(days=30)),
            entries=entries,
        )
    )
    assert published.catalog.catalog_version == version
    again = await billing.GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    assert again.order.total_amount_cents == order.total_amount_cents
    assert (await billing.GetPriceCatalog(pb.GetPriceCatalogRequest())).catalog.catalog_version != version
    # Bad input: retroactive prices, a foreign currency, no default entry.
    await expect_status(
        billing.PublishPriceCatalog(
            pb.PublishPriceCatalogRequest(
                idempotency_key="c-past",
                catalog_version="past",
                effective_at=ts(now() - timedelta(days=1)),
                entries=entries,
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    usd = [pb.PriceEntry(purpose=e.purpose, doctor_fee_amount_cents=1, currency="USD") for e in entries]
    await expect_status(
        billing.PublishPriceCatalog(
            pb.PublishPriceCatalogRequest(idempotency_key="c-usd", catalog_version="usd", entries=usd)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # A patient cannot order for someone else, nor read another payer's order.
    patient = str(uuid.uuid4())
    await expect_status(
        env.billing(env.person(patient, Role.PATIENT)).CreateOrder(
            pb.CreateOrderRequest(
                idempotency_key="o-x",
                case_id=str(uuid.uuid4()),
                payer_account_id=str(uuid.uuid4()),
                purpose=pb.CASE_PURPOSE_SECOND_OPINION,
                doctor_count=1,
            )
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    await expect_status(
        env.billing(env.person(patient, Role.PATIENT)).GetOrder(pb.GetOrderRequest(order_id=order.order_id)),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
@pytest.mark.req("BIL-07")
@pytest.mark.req("CASE-11")
async def test_card_payment_through_the_sandbox_captures_once_and_sends_the_summary(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    payer = await env.sign_up()
    order = await new_order(env, payer=payer)
    attempt_id, browser = await pay_in_sandbox(
        env, order, "1111 2222 3333 4444", key=f"pay-{order.order_id}-1"
    )
    assert browser.status_code == 303 and "/psp/return/accepted?" in browser.headers["location"]
    # The server-to-server notification was forwarded by the gateway stand-in and captured.
    assert env.relay.results and env.relay.results[-1].captured_now
    status = await env.billing().GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id))
    assert status.payment_attempt.payment_attempt_id == attempt_id
    assert status.payment_attempt.status == pb.PAYMENT_STATUS_CAPTURED
    assert status.order_status == pb.ORDER_STATUS_PAID  # CASE-11: the case may start
    # The browser return (another signed payload) and replays capture nothing more.
    raw_return = browser.headers["location"].split("?", 1)[1]
    back = await env.billing(env.tokens("gateway")).HandlePspNotification(
        notification(raw_return, pb.PSP_MESSAGE_KIND_RETURN)
    )
    assert not back.captured_now and back.order.status == pb.ORDER_STATUS_PAID
    replay = await env.billing(env.tokens("gateway")).HandlePspNotification(
        notification(raw_return, pb.PSP_MESSAGE_KIND_RETURN)
    )
    assert not replay.captured_now
    # No second attempt on a paid order.
    await expect_status(
        env.billing(env.tokens("gateway")).StartCardPayment(
            pb.StartCardPaymentRequest(idempotency_key=f"pay-{order.order_id}-2", order_id=order.order_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    # BIL-07: one summary email, to the payer's address from identity, amounts only.
    await eventually(
        lambda: any(
            m.template == npb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY
            and m.variables.amount_cents == order.total_amount_cents
            for m in env.recorder.sent
        )
    )
    summary = env.recorder.last(npb.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY)
    assert summary.email.startswith("patient-") and summary.variables.currency == "EUR"
    assert summary.variables.link.startswith("https://app.deuxiemeavis.test/")
    assert env.recorder.callers[-1] == "billing"
    # BIL-06: no card data anywhere: not in the database, not in the logs.
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as connection:
            for table in (
                "payment_attempts",
                "psp_notifications",
                "orders",
                "idempotency_records",
                "email_outbox",
            ):
                dump = str((await connection.execute(text(f"SELECT * FROM {table}"))).fetchall())
                assert SUCCESS_CARD not in dump, table
                assert SUCCESS_CARD[:6] not in dump.replace(order.order_id, ""), table  # not even the BIN
    finally:
        await engine.dispose()
    # The whole number, or its first six digits, never reaches a log line.
    assert SUCCESS_CARD not in caplog.text and SUCCESS_CARD[:6] not in caplog.text


@pytest.mark.req("BIL-02")
async def test_refused_and_abandoned_payments_leave_the_order_awaiting_payment(env: Env) -> None:
    order = await new_order(env)
    refused_id, refused = await pay_in_sandbox(env, order, REFUSED_CARD)
    assert "/psp/return/refused?" in refused.headers["location"]
    abandoned_id, abandoned = await pay_in_sandbox(env, order, ABANDON_CARD)
    assert "/psp/return/cancelled?" in abandoned.headers["location"]
    billing = env.billing()
    first = await billing.GetPaymentStatus(pb.GetPaymentStatusRequest(payment_attempt_id=refused_id))
    assert first.payment_attempt.status == pb.PAYMENT_STATUS_REFUSED
    assert first.payment_attempt.psp_error_code == "00105"
    second = await billing.GetPaymentStatus(pb.GetPaymentStatusRequest(payment_attempt_id=abandoned_id))
    assert second.payment_attempt.status == pb.PAYMENT_STATUS_ABANDONED
    assert second.order_status == pb.ORDER_STATUS_AWAITING_PAYMENT
    # The user tries again and pays.
    _, paid = await pay_in_sandbox(env, order, SUCCESS_CARD)
    assert "/psp/return/accepted?" in paid.headers["location"]
    assert (
        await billing.GetOrder(pb.GetOrderRequest(order_id=order.order_id))
    ).order.status == pb.ORDER_STATUS_PAID


@pytest.mark.req("BIL-06")
async def test_forged_tampered_or_mismatching_notifications_capture_nothing(env: Env) -> None:
    order = await new_order(env)
    started = await env.billing(env.tokens("gateway")).StartCardPayment(
        pb.StartCardPaymentRequest(idempotency_key=f"pay-{uuid.uuid4()}", order_id=order.order_id)
    )
    fields = {f.name: f.value for f in started.form_fields}
    assert fields["PBX_TOTAL"] == str(order.total_amount_cents) and fields["PBX_DEVISE"] == "978"
    assert len(fields["PBX_HMAC"]) == 128  # HMAC-SHA512, hex
    reference = fields["PBX_CMD"]
    gateway = env.billing(env.tokens("gateway"))
    good = f"Mt={order.total_amount_cents}&Ref={reference}&Auto=123456&Erreur=00000&Trans=99000001"
    # Signed by someone else's key.
    await expect_status(
        gateway.HandlePspNotification(notification(signed(env, good, generate_rsa_key()))),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    # The PSP's signature, but the amount changed afterwards.
    tampered = signed(env, good).replace(f"Mt={order.total_amount_cents}", "Mt=1")
    await expect_status(
        gateway.HandlePspNotification(notification(tampered)), grpc.StatusCode.INVALID_ARGUMENT
    )
    # Properly signed, but an amount that is not the order's.
    wrong_amount = signed(
        env, good.replace(f"Mt={order.total_amount_cents}", f"Mt={order.total_amount_cents - 100}")
    )
    assert "amount" in await expect_status(
        gateway.HandlePspNotification(notification(wrong_amount)), grpc.StatusCode.INVALID_ARGUMENT
    )
    # Properly signed, unknown reference.
    unknown = signed(env, good.replace(reference, "SOXXXXXXXXXXXX-1"))
    await expect_status(
        gateway.HandlePspNotification(notification(unknown)), grpc.StatusCode.INVALID_ARGUMENT
    )
    # A key that is not the payload's hash; a caller that is not the gateway.
    request = notification(signed(env, good))
    request.idempotency_key = "whatever"
    await expect_status(gateway.HandlePspNotification(request), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_status(
        env.billing(env.tokens("worker")).HandlePspNotification(notification(signed(env, good))),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    status = await env.billing().GetPaymentStatus(pb.GetPaymentStatusRequest(order_id=order.order_id))
    assert status.payment_attempt.status == pb.PAYMENT_STATUS_PENDING
    assert status.order_status == pb.ORDER_STATUS_AWAITING_PAYMENT
    # The genuine message still captures.
    captured = await gateway.HandlePspNotification(notification(signed(env, good)))
    assert captured.captured_now and captured.order.status == pb.ORDER_STATUS_PAID


@pytest.mark.req("BIL-06")
async def test_concurrent_duplicate_notifications_capture_exactly_once(env: Env) -> None:
    order = await new_order(env)
    started = await env.billing(env.tokens("gateway")).StartCardPayment(
        pb.StartCardPaymentRequest(idempotency_key=f"pay-{uuid.uuid4()}", order_id=order.order_id)
    )
    reference = {f.name: f.value for f in started.form_fields}["PBX_CMD"]
    data = f"Mt={order.total_amount_cents}&Ref={reference}&Auto=654321&Erreur=00000&Trans=99000777"
    ipn = signed(env, data)
    browser_return = signed(
        env, data
    )  # same variables, another signature run: another payload? (PKCS1v15 is deterministic)
    gateway = env.billing(env.tokens("gateway"))
    calls = [gateway.HandlePspNotification(notification(ipn)) for _ in range(20)]
    calls += [
        gateway.HandlePspNotification(notification(browser_return + "", pb.PSP_MESSAGE_KIND_RETURN))
        for _ in range(5)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    answers = [r for r in results if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    # A loser of a race may be told to retry (ABORTED); never an error that hides a capture.
    assert all(
        isinstance(f, grpc.aio.AioRpcError)
        and f.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION)
        for f in failures
    ), failures
    assert sum(1 for a in answers if a.captured_now) == 1
    engine = create_engine(env.database_url)
    try:
        async with engine.connect() as connection:
            captured = (
                await connection.execute(
                    text("SELECT count(*) FROM payment_attempts WHERE order_id = :o AND status = 'captured'"),
                    {"o": order.order_id},
                )
            ).scalar_one()
            emails = (
                await connection.execute(
                    text("SELECT count(*) FROM email_outbox WHERE idempotency_key = :k"),
                    {"k": f"payment-summary:{started.payment_attempt_id}"},
                )
            ).scalar_one()
    finally:
        await engine.dispose()
    assert captured == 1 and emails == 1
