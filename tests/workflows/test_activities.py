"""The real activities against in-test gRPC servers that follow the contracts: requests
carry the idempotency key and a deadline shorter than the activity timeout, refusals
become non-retryable errors, outages stay retryable, an accept that beat the expiry
wins, compensations work from the case's ids alone, emails never return addresses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc
from secondopinion.notifications.v1 import notifications_pb2, notifications_pb2_grpc
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from services.shared.grpc_client import open_channel
from workflows.case.activities import CaseActivities
from workflows.case.models import (
    CaseOnlyInput,
    CreateOfferInput,
    ExpireOfferInput,
    NotifyInput,
    Recipient,
    RecipientKind,
    RefundInput,
    Template,
)
from workflows.settings import WorkerSettings

SEEN: list[tuple[str, Any, float | None]] = []


def _remember(name: str, request: Any, context: Any) -> None:
    SEEN.append((name, request, context.time_remaining()))


class Matching(matching_pb2_grpc.MatchingServiceServicer):
    accepted_before_expiry = True

    async def CreateOffer(self, request: Any, context: Any) -> Any:
        _remember("CreateOffer", request, context)
        if request.doctor_id == "on-leave":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "doctor on leave")
        if request.doctor_id == "flaky":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")
        return matching_pb2.CreateOfferResponse(
            offer=matching_pb2.Offer(offer_id="o-1", doctor_id=request.doctor_id)
        )

    async def ExpireOffer(self, request: Any, context: Any) -> Any:
        _remember("ExpireOffer", request, context)
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "offer already answered")

    async def GetOffer(self, request: Any, context: Any) -> Any:
        return matching_pb2.GetOfferResponse(
            offer=matching_pb2.Offer(
                offer_id=request.offer_id, case_id="c-1", status=matching_pb2.OFFER_STATUS_ACCEPTED
            )
        )

    async def ListAssignments(self, request: Any, context: Any) -> Any:
        return matching_pb2.ListAssignmentsResponse(
            assignments=[
                matching_pb2.Assignment(assignment_id="a-1", offer_id="o-1", doctor_account_id="acct-d")
            ]
        )

    async def ListOffers(self, request: Any, context: Any) -> Any:
        return matching_pb2.ListOffersResponse(offers=[matching_pb2.Offer(offer_id="o-7")])

    async def WithdrawOffer(self, request: Any, context: Any) -> Any:
        _remember("WithdrawOffer", request, context)
        return matching_pb2.WithdrawOfferResponse()

    async def GetReferentDoctor(self, request: Any, context: Any) -> Any:
        return matching_pb2.GetReferentDoctorResponse(doctor=matching_pb2.ReferentDoctor(account_id="acct-d"))


class Billing(billing_pb2_grpc.BillingServiceServicer):
    async def GetPaymentStatus(self, request: Any, context: Any) -> Any:
        return billing_pb2.GetPaymentStatusResponse(
            order_status=billing_pb2.ORDER_STATUS_PAID,
            payment_attempt=billing_pb2.PaymentAttempt(amount_cents=9000, currency="EUR"),
        )

    async def RefundPayment(self, request: Any, context: Any) -> Any:
        _remember("RefundPayment", request, context)
        return billing_pb2.RefundPaymentResponse(
            refund=billing_pb2.Refund(refund_id="r-1", status=billing_pb2.REFUND_STATUS_COMPLETED)
        )


class Identity(identity_pb2_grpc.IdentityServiceServicer):
    async def GetAccount(self, request: Any, context: Any) -> Any:
        return identity_pb2.GetAccountResponse(
            account=identity_pb2.Account(account_id=request.account_id, email="dr@example.org", locale="fr")
        )


class Notifications(notifications_pb2_grpc.NotificationsServiceServicer):
    async def SendNotification(self, request: Any, context: Any) -> Any:
        _remember("SendNotification", request, context)
        return notifications_pb2.SendNotificationResponse(notification_id="n-1")


@pytest.fixture
async def activities() -> AsyncIterator[CaseActivities]:
    server = grpc.aio.server()
    matching_pb2_grpc.add_MatchingServiceServicer_to_server(Matching(), server)  # type: ignore[abstract]
    billing_pb2_grpc.add_BillingServiceServicer_to_server(Billing(), server)  # type: ignore[abstract]
    identity_pb2_grpc.add_IdentityServiceServicer_to_server(Identity(), server)  # type: ignore[abstract]
    notifications_pb2_grpc.add_NotificationsServiceServicer_to_server(Notifications(), server)  # type: ignore[abstract]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    target = f"127.0.0.1:{port}"
    timeout = WorkerSettings().service_call_timeout_seconds
    channel = open_channel(target, lambda: "token", timeout)
    SEEN.clear()
    yield CaseActivities(
        identity=channel,
        dossier=channel,
        matching=channel,
        billing=channel,
        notifications=channel,
        call_timeout=timeout,
        coordinator_email="coord@example.org",
        portal_base_url="https://portal.example",
    )
    await channel.close()
    await server.stop(None)


def offer(doctor_id: str) -> CreateOfferInput:
    now = datetime.now(UTC)
    return CreateOfferInput(
        idempotency_key="case-c-1:offer:0:" + doctor_id,
        case_id="c-1",
        doctor_id=doctor_id,
        therapeutic_area="oncology",
        respond_by=now + timedelta(hours=24),
        review_deadline_at=now + timedelta(days=7),
    )


async def test_offer_carries_key_and_a_deadline_shorter_than_the_activity(activities: CaseActivities) -> None:
    result = await ActivityEnvironment().run(activities.create_offer, offer("doc-a"))
    assert result.offer_id == "o-1"
    name, request, remaining = SEEN[0]
    assert name == "CreateOffer" and request.idempotency_key == "case-c-1:offer:0:doc-a"
    # gRPC sends the timeout rounded up to its wire precision and the server measures it on
    # its own clock, so the remaining time can exceed the client's by a few milliseconds.
    timeout = WorkerSettings().service_call_timeout_seconds
    assert timeout < 30
    assert remaining is not None and remaining <= timeout + 0.5


async def test_refusal_is_final_and_outage_retries(activities: CaseActivities) -> None:
    with pytest.raises(ApplicationError) as refused:
        await ActivityEnvironment().run(activities.create_offer, offer("on-leave"))
    assert refused.value.non_retryable and refused.value.type == "grpc.FAILED_PRECONDITION"
    with pytest.raises(grpc.aio.AioRpcError):  # retried by Temporal
        await ActivityEnvironment().run(activities.create_offer, offer("flaky"))


async def test_an_accept_that_beat_the_expiry_wins(activities: CaseActivities) -> None:
    outcome = await ActivityEnvironment().run(
        activities.expire_offer, ExpireOfferInput(idempotency_key="case-c-1:expire:o-1", offer_id="o-1")
    )
    assert outcome.status == "accepted" and outcome.assignment_id == "a-1"


async def test_compensations_work_from_the_case_alone(activities: CaseActivities) -> None:
    refund = await ActivityEnvironment().run(
        activities.refund_if_captured, RefundInput(idempotency_key="case-c-1:refund", order_id="ord-1")
    )
    assert refund.refunded
    withdrawn = await ActivityEnvironment().run(
        activities.withdraw_open_offers,
        CaseOnlyInput(idempotency_key_prefix="case-c-1:withdraw", case_id="c-1"),
    )
    assert withdrawn == 1
    requests = {name: request for name, request, _ in SEEN}
    assert requests["RefundPayment"].amount_cents == 9000
    assert requests["RefundPayment"].reason == billing_pb2.REFUND_REASON_CASE_CANCELLED_BEFORE_DELIVERY
    assert requests["WithdrawOffer"].idempotency_key == "case-c-1:withdraw:o-7"


async def test_email_to_a_doctor_resolves_the_address_and_returns_only_an_id(
    activities: CaseActivities,
) -> None:
    sent = await ActivityEnvironment().run(
        activities.notify,
        NotifyInput(
            idempotency_key="case-c-1:email:offer:o-1",
            template=Template.DOCTOR_NEW_OFFER,
            recipient=Recipient(kind=RecipientKind.DOCTOR, id="doc-a"),
            case_id="c-1",
        ),
    )
    assert sent == "n-1"
    request = SEEN[-1][1]
    assert request.email == "dr@example.org" and request.channel == notifications_pb2.CHANNEL_EMAIL
    assert request.template == notifications_pb2.NOTIFICATION_TEMPLATE_DOCTOR_NEW_OFFER
    # Not assigned yet: the link opens the doctor's offers, not the case.
    assert request.variables.link == "https://portal.example/doctor"
