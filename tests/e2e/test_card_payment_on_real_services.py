"""A card-paid case on the real services, through the PSP sandbox (Paybox protocol): the
hosted payment page, the PSP's signed server-to-server notification reaching billing
through the gateway (which wakes the case workflow), then a cancellation in review whose
refund goes back to the PSP as a Paybox Direct refund, exactly once.

What is asserted is what the services and the PSP hold, not what the workflow believes."""

from __future__ import annotations

import asyncio
import html
import re
from pathlib import Path

import httpx
import pytest
from secondopinion.billing.v1 import billing_pb2
from secondopinion.notifications.v1 import notifications_pb2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from temporalio.client import Client

from services.billing.psp.keys import generate_rsa_key, load_or_create_secret, public_pem
from services.billing.psp.sandbox import SUCCESS_CARD, SandboxState, create_sandbox_app
from tests.e2e.conftest import eventually, queue_name, seeded_world, settle, view_when
from tests.support.stack import platform_stack, serve_app
from workflows.case.models import (
    CancelCase,
    CaseStatus,
    CaseWorkflowInput,
    CheckoutChanged,
    HostedPaymentForm,
    Phase,
    StartCardPayment,
)
from workflows.case.starter import start_case_workflow
from workflows.case.workflow import CaseWorkflow
from workflows.temporal_client import with_data_converter

N = notifications_pb2


def forwarding_proxy(target: dict[str, str]) -> Starlette:
    """Billing must know where the PSP notifies before the gateway (started last, on port
    0) has an address: the PSP notifies this proxy, which forwards to the gateway."""

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(
                request.method,
                target["url"] + request.url.path,
                params=list(request.query_params.multi_items()),
                content=await request.body(),
                headers={"content-type": request.headers.get("content-type", "")},
            )
        return Response(answer.content, answer.status_code, media_type=answer.headers.get("content-type"))

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])


async def pay_on_the_psp_page(form: HostedPaymentForm) -> None:
    """What the browser does: post our signed form to the PSP, type the test card."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=30) as browser:
        shown = await browser.post(form.form_action_url, data=form.form_fields)
        assert shown.status_code == 200, shown.text
        token = re.search(r'name="token" value="([^"]+)"', shown.text)
        assert token
        base = form.form_action_url.split("/cgi/")[0]
        paid = await browser.post(
            f"{base}/pay", data={"token": html.unescape(token.group(1)), "card_number": SUCCESS_CARD}
        )
        assert paid.status_code == 303 and "accepted" in paid.headers["location"]


@pytest.mark.temporal
@pytest.mark.req("BIL-02")
@pytest.mark.req("BIL-06")
@pytest.mark.req("CASE-11")
async def test_a_card_paid_case_cancelled_in_review_is_refunded_once_through_the_psp(
    tmp_path: Path, temporal_client: Client, smtp_catcher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir(parents=True)
    psp_key = generate_rsa_key()
    (keys / "psp-sandbox.pub.pem").write_bytes(public_pem(psp_key))
    sandbox_app = create_sandbox_app(load_or_create_secret(keys / "psp-sandbox.hmac"), psp_key, "sha1")
    sandbox: SandboxState = sandbox_app.state.sandbox
    gateway: dict[str, str] = {}
    queue = queue_name("e2e-card")
    async with (
        serve_app(sandbox_app) as sandbox_url,  # type: ignore[arg-type]
        serve_app(forwarding_proxy(gateway)) as proxy_url,  # type: ignore[arg-type]
    ):
        monkeypatch.setenv("BILLING_PSP_PAYMENT_URL", f"{sandbox_url}/cgi/MYchoix_pagepaiement.cgi")
        monkeypatch.setenv("BILLING_PSP_RETURN_BASE_URL", f"{proxy_url}/api/payments/psp")
        async with (
            platform_stack(tmp_path, "sqlite", temporal=temporal_client, task_queue=queue) as stack,
            seeded_world(stack) as world,
        ):
            gateway["url"] = stack.gateway_url
            assert stack.temporal_settings is not None
            client = with_data_converter(temporal_client, stack.temporal_settings)
            doctor = await world.referent_doctor("Lucie", "1000000003")
            patient = await world.patient_signs_up("marc")
            case = await world.create_case(patient)
            handle = await start_case_workflow(
                client,
                CaseWorkflowInput(
                    case_id=case.case_id, therapeutic_area="oncology", doctor_choice_mode="platform_chosen"
                ),
                queue,
            )
            await world.submit_forms(patient, case.case_id)
            await handle.signal(CaseWorkflow.checkout_changed, CheckoutChanged(what="forms"))
            await view_when(handle, lambda v: v.phase is Phase.PAYMENT)
            billing = world.billing(world.worker)
            order = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id))).order
            assert order.status == billing_pb2.ORDER_STATUS_AWAITING_PAYMENT and order.total_amount_cents > 0

            form = await handle.execute_update(CaseWorkflow.start_card_payment, StartCardPayment(locale="fr"))
            assert "PBX_HMAC" in form.form_fields and "PBX_REPONDRE_A" in form.form_fields
            await pay_on_the_psp_page(form)
            # The PSP's notification went through the gateway to billing and woke the case.
            await view_when(handle, lambda v: v.phase is not Phase.PAYMENT)
            paid = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id))).order
            assert paid.status == billing_pb2.ORDER_STATUS_PAID
            assert sandbox.deliveries and all(status == 200 for _, status in sandbox.deliveries)
            (capture,) = sandbox.captures.values()
            assert capture[1] == order.total_amount_cents
            summary = await eventually(
                lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_PAYMENT_SUMMARY),
                "the payment summary",
            )
            assert len(summary) == 1

            await world.doctor_accepts(doctor, handle, case.case_id)
            await view_when(handle, lambda v: v.status is CaseStatus.IN_REVIEW)
            answer = await handle.execute_update(
                CaseWorkflow.cancel_case, CancelCase(requested_by="coordinator")
            )
            assert answer.status is CaseStatus.CANCELLED and answer.refund_expected
            result = await asyncio.wait_for(handle.result(), timeout=60)
            assert result.status == "cancelled"
            await settle(handle)

            # The PSP refunded the whole capture, once (one Paybox Direct question).
            assert [amount for _, amount in sandbox.refunds] == [order.total_amount_cents]
            assert len(sandbox.direct_requests) == 1
            refunded = (await billing.GetOrder(billing_pb2.GetOrderRequest(case_id=case.case_id))).order
            assert refunded.status == billing_pb2.ORDER_STATUS_REFUNDED
            # No invoice for a service not delivered; the patient is told once, with the amount.
            invoices = await billing.ListInvoices(billing_pb2.ListInvoicesRequest(order_id=order.order_id))
            assert not invoices.invoices
            told = await eventually(
                lambda: world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_CASE_CANCELLED),
                "the cancellation email",
            )
            assert len(told) == 1
            assert not await world.delivered(patient.email, N.NOTIFICATION_TEMPLATE_REPORT_AVAILABLE)
