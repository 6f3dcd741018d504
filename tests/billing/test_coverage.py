"""Coverage codes: a partner's code makes the case payable by the partner (BIL-01, CASE-11)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2 as pb

from services.shared.auth import Role
from tests.billing.conftest import Env, expect_status, new_order, now, partner_with_agreement, ts


async def issue(
    env: Env, partner_id: str, agreement_id: str, count: int = 1, max_uses: int = 0, **kw: object
) -> list[pb.CoverageCode]:
    usage = pb.COVERAGE_CODE_USAGE_COUNTED if max_uses else pb.COVERAGE_CODE_USAGE_SINGLE_USE
    response = await env.billing().IssueCoverageCodes(
        pb.IssueCoverageCodesRequest(
            idempotency_key=str(kw.get("key") or f"codes-{uuid.uuid4()}"),
            partner_id=partner_id,
            agreement_id=agreement_id,
            count=count,
            usage=usage,
            max_uses=max_uses,
            expires_at=ts(kw.get("expires_at") or now() + timedelta(days=30)),  # type: ignore[arg-type]
        )
    )
    return list(response.codes)


async def validate(env: Env, order: pb.Order, code: str) -> pb.Order:
    response = await env.billing(env.tokens("gateway")).ValidateCoverageCode(
        pb.ValidateCoverageCodeRequest(
            idempotency_key=f"v-{order.order_id}-{uuid.uuid4()}", order_id=order.order_id, code=code
        )
    )
    covered: pb.Order = response.order
    return covered


@pytest.mark.req("BIL-01")
@pytest.mark.req("CASE-11")
async def test_a_valid_code_covers_the_order_and_bad_codes_get_clear_statuses(env: Env) -> None:
    partner_id, agreement_id = await partner_with_agreement(env, areas=["cardiology"], quota=3)
    expiry = now() + timedelta(days=30)
    (single,) = await issue(env, partner_id, agreement_id, key=f"batch-{partner_id}", expires_at=expiry)
    # A retried issue returns the same codes (only their hash is stored).
    (again,) = await issue(env, partner_id, agreement_id, key=f"batch-{partner_id}", expires_at=expiry)
    assert (again.code_id, again.code) == (single.code_id, single.code)
    assert single.code and len(single.code) == 14 and single.issuer == pb.COVERAGE_CODE_ISSUER_PLATFORM
    order = await new_order(env)
    covered = await validate(env, order, single.code.lower().replace("-", " "))
    assert covered.status == pb.ORDER_STATUS_COVERED  # CASE-11: starts without card payment
    assert covered.funding_source == pb.FUNDING_SOURCE_PARTNER_COVERAGE
    assert covered.partner_id == partner_id and covered.coverage_code_id == single.code_id
    await expect_status(
        env.billing(env.tokens("gateway")).StartCardPayment(
            pb.StartCardPaymentRequest(idempotency_key=f"p-{uuid.uuid4()}", order_id=order.order_id)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    listed = await env.billing().ListCoverageCodes(pb.ListCoverageCodesRequest(partner_id=partner_id))
    assert [c.status for c in listed.codes] == [pb.COVERAGE_CODE_STATUS_USED_UP]
    assert all(not c.code for c in listed.codes)
    # Used up.
    assert "used up" in await expect_status(
        validate(env, await new_order(env), single.code), grpc.StatusCode.FAILED_PRECONDITION
    )
    # Revoked.
    (revoked,) = await issue(env, partner_id, agreement_id)
    await env.billing().RevokeCoverageCode(
        pb.RevokeCoverageCodeRequest(idempotency_key=f"r-{revoked.code_id}", code_id=revoked.code_id)
    )
    assert "revoked" in await expect_status(
        validate(env, await new_order(env), revoked.code), grpc.StatusCode.FAILED_PRECONDITION
    )
    # Expired.
    (expiring,) = await issue(env, partner_id, agreement_id, expires_at=now() + timedelta(seconds=1))
    await asyncio.sleep(1.1)
    assert "expired" in await expect_status(
        validate(env, await new_order(env), expiring.code), grpc.StatusCode.FAILED_PRECONDITION
    )
    # Foreign: the agreement does not cover this therapeutic area.
    (other,) = await issue(env, partner_id, agreement_id)
    assert "does not cover" in await expect_status(
        validate(env, await new_order(env, area="oncology"), other.code), grpc.StatusCode.FAILED_PRECONDITION
    )
    # Unknown code; another payer's order.
    await expect_status(validate(env, await new_order(env), "ZZZZ-ZZZZ-ZZZZ"), grpc.StatusCode.NOT_FOUND)
    stranger = env.person(str(uuid.uuid4()), Role.PATIENT)
    await expect_status(
        env.billing(stranger).ValidateCoverageCode(
            pb.ValidateCoverageCodeRequest(
                idempotency_key="x", order_id=(await new_order(env)).order_id, code=other.code
            )
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    # Nothing was half-written: the refused code is still unused and usable.
    good = await validate(env, await new_order(env), other.code)
    assert good.status == pb.ORDER_STATUS_COVERED
    agreements = await env.billing().ListPartnerAgreements(
        pb.ListPartnerAgreementsRequest(partner_id=partner_id)
    )
    assert agreements.agreements[0].used_count == 2


@pytest.mark.req("BIL-01")
async def test_counted_codes_and_quota_hold_under_concurrent_validations(env: Env) -> None:
    partner_id, agreement_id = await partner_with_agreement(env, quota=4)
    (counted,) = await issue(env, partner_id, agreement_id, max_uses=3)
    orders = [await new_order(env) for _ in range(6)]
    results = await asyncio.gather(
        *(validate(env, order, counted.code) for order in orders), return_exceptions=True
    )
    covered = [r for r in results if isinstance(r, pb.Order)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(covered) == 3 and len(refused) == 3
    assert all(r.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED) for r in refused)
    check = await env.billing().ListCoverageCodes(pb.ListCoverageCodesRequest(partner_id=partner_id))
    assert check.codes[0].use_count == 3 and check.codes[0].status == pb.COVERAGE_CODE_STATUS_USED_UP
    # Quota 4: one more single-use code works, the next one hits the quota.
    first, second = await issue(env, partner_id, agreement_id, count=2)
    await validate(env, await new_order(env), first.code)
    assert "quota" in await expect_status(
        validate(env, await new_order(env), second.code), grpc.StatusCode.FAILED_PRECONDITION
    )
    again = await env.billing().ListCoverageCodes(
        pb.ListCoverageCodesRequest(partner_id=partner_id, status=pb.COVERAGE_CODE_STATUS_ACTIVE)
    )
    assert [c.code_id for c in again.codes] == [second.code_id]  # rolled back: still unused
