"""Thin gRPC layer of the billing service: who may call, messages in and out."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing import convert as cv
from services.billing import refund_rpc
from services.billing.domain import (
    archive_access,
    coverage,
    invoices,
    ledger,
    lifecycle,
    mandates,
    orders,
    partner_access,
    payments,
    prices,
)
from services.billing.domain.common import CasePurpose, next_token, offset_from_token, page_size
from services.billing.domain.coverage import CodeIssuer, CodeStatus, CodeUsage
from services.billing.domain.partners import PartnerKind, create_partner, list_partners
from services.billing.domain.retention import purge_payment_data, purge_satisfaction
from services.billing.models import (
    BillingMandate,
    CoverageCode,
    IdempotencyRecord,
    Invoice,
    Order,
    Partner,
    PartnerAgreement,
    PartnerCredential,
    PaymentAttempt,
    SatisfactionAnswer,
)
from services.billing.psp.paybox import PaymentServiceProvider
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import InvalidArgument, NotFound, PermissionDenied
from services.shared.grpc_server import require_principal
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

STAFF = (Role.ADMINISTRATOR, Role.COORDINATOR, Role.DPO)
OPS = frozenset({"ops"})
WORKER_OPS = frozenset({"worker", "ops"})
FRONT = frozenset({"gateway", "worker", "ops"})
# The lifecycle worker (issue 10) and the operators' tools.
LIFECYCLE = WORKER_OPS


def partner_to_pb(partner: Partner) -> pb.Partner:
    return pb.Partner(
        partner_id=partner.partner_id,
        name=partner.name,
        kind=to_pb_enum(pb.PartnerKind, PartnerKind(partner.kind)),
        created_at=to_timestamp(partner.created_at),
    )


@dataclass(frozen=True)
class BillingContext:
    psp: PaymentServiceProvider
    archive: invoices.Archive
    code_secret: Callable[[], bytes]
    payment_attempt_ttl_seconds: int
    satisfaction_minimum_answers: int
    wake_outbox: Callable[[], None]
    # The partners' CA bundle of the partner API's mutual TLS; None: not configured.
    partner_client_ca_path: Path | None = None


def caller_is_payer(principal: Principal, order: Order) -> None:
    """A person may only act on their own order; services act for the platform."""
    if (
        not principal.is_service
        and principal.role not in STAFF
        and principal.subject != order.payer_account_id
    ):
        raise NotFound("no such order")


async def doctor_may_read(session: AsyncSession, principal: Principal, doctor_id: str) -> None:
    if principal.is_service or principal.role in (Role.ADMINISTRATOR, Role.COORDINATOR):
        return
    owned = await session.scalar(
        select(BillingMandate.mandate_id).where(
            BillingMandate.doctor_id == doctor_id, BillingMandate.doctor_account_id == principal.subject
        )
    )
    if owned is None:
        raise PermissionDenied("a doctor may only read their own ledger")


def may_read_invoice(principal: Principal, invoice: Invoice) -> bool:
    return (
        principal.is_service
        or principal.role in STAFF
        or (invoice.recipient_account_id != "" and invoice.recipient_account_id == principal.subject)
    )


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], context: BillingContext) -> None:
        self._sessions = sessions
        self._ctx = context

    # --- prices --------------------------------------------------------------------------

    async def GetPrice(self, request: pb.GetPriceRequest, context: Any) -> pb.GetPriceResponse:
        require_role(*Role)
        purpose = from_pb_enum(pb.CasePurpose, CasePurpose, request.purpose)
        if purpose is None:
            raise InvalidArgument("purpose is required")
        async with self._sessions() as session:
            catalog = await prices.catalog_in_force(session)
        price = prices.compute_price(catalog, purpose, request.therapeutic_area, request.doctor_count or 1)
        return pb.GetPriceResponse(
            price=pb.Price(
                catalog_version=price.catalog_version,
                lines=[cv.line_to_pb(line) for line in price.lines],
                total_amount_cents=price.total_amount_cents,
                currency=price.currency,
            )
        )

    async def PublishPriceCatalog(
        self, request: pb.PublishPriceCatalogRequest, context: Any
    ) -> pb.PublishPriceCatalogResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        entries = []
        for entry in request.entries:
            purpose = from_pb_enum(pb.CasePurpose, CasePurpose, entry.purpose)
            if purpose is None:
                raise InvalidArgument("every entry needs a purpose")
            entries.append(
                prices.Entry(
                    purpose.value,
                    entry.therapeutic_area,
                    entry.doctor_fee_amount_cents,
                    entry.platform_fee_amount_cents,
                    entry.currency,
                    entry.doctor_fee_vat_rate_basis_points,
                    entry.platform_fee_vat_rate_basis_points,
                )
            )

        async def publish(session: AsyncSession) -> str:
            catalog = await prices.publish_catalog(
                session, request.catalog_version, cv.when(request, "effective_at"), entries
            )
            return catalog.catalog_version

        version, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "PublishPriceCatalog", publish
        )
        async with self._sessions() as session:
            return pb.PublishPriceCatalogResponse(
                catalog=cv.catalog_to_pb(await prices.get_catalog(session, version))
            )

    async def GetPriceCatalog(
        self, request: pb.GetPriceCatalogRequest, context: Any
    ) -> pb.GetPriceCatalogResponse:
        require_role(*Role)
        async with self._sessions() as session:
            catalog = await prices.get_catalog(session, request.catalog_version)
            return pb.GetPriceCatalogResponse(catalog=cv.catalog_to_pb(catalog))

    # --- orders and payment ----------------------------------------------------------------

    async def CreateOrder(self, request: pb.CreateOrderRequest, context: Any) -> pb.CreateOrderResponse:
        principal = require_role(Role.PATIENT, Role.REFERRING_DOCTOR, Role.SERVICE, services=FRONT)
        if not principal.is_service and principal.subject != request.payer_account_id:
            raise PermissionDenied("an order is placed by its payer")
        purpose = from_pb_enum(pb.CasePurpose, CasePurpose, request.purpose)
        if purpose is None:
            raise InvalidArgument("purpose is required")

        async def create(session: AsyncSession) -> str:
            order = await orders.create_order(
                session,
                request.case_id,
                request.payer_account_id,
                purpose,
                request.therapeutic_area,
                request.doctor_count,
            )
            return order.order_id

        order_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "CreateOrder", create)
        async with self._sessions() as session:
            order = await orders.get_order(session, principal, order_id=order_id)
            return pb.CreateOrderResponse(order=cv.order_to_pb(order))

    async def GetOrder(self, request: pb.GetOrderRequest, context: Any) -> pb.GetOrderResponse:
        principal = require_role(*Role)
        async with self._sessions() as session:
            order = await orders.get_order(session, principal, request.order_id, request.case_id)
            return pb.GetOrderResponse(order=cv.order_to_pb(order))

    async def ValidateCoverageCode(
        self, request: pb.ValidateCoverageCodeRequest, context: Any
    ) -> pb.ValidateCoverageCodeResponse:
        principal = require_role(Role.PATIENT, Role.REFERRING_DOCTOR, Role.SERVICE, services=FRONT)

        async def validate(session: AsyncSession) -> str:
            order = await orders.get_order(session, principal, order_id=request.order_id)
            await coverage.validate_code_on_order(session, order, request.code)
            return order.order_id

        order_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "ValidateCoverageCode", validate
        )
        async with self._sessions() as session:
            order = await orders.get_order(session, principal, order_id=order_id)
            return pb.ValidateCoverageCodeResponse(order=cv.order_to_pb(order))

    async def StartCardPayment(
        self, request: pb.StartCardPaymentRequest, context: Any
    ) -> pb.StartCardPaymentResponse:
        principal = require_role(Role.PATIENT, Role.REFERRING_DOCTOR, Role.SERVICE, services=FRONT)

        async def start(session: AsyncSession) -> str:
            order = await orders.get_order(session, principal, order_id=request.order_id)
            attempt = await payments.start_attempt(
                session, order, request.locale, self._ctx.payment_attempt_ttl_seconds
            )
            return attempt.payment_attempt_id

        attempt_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "StartCardPayment", start)
        async with self._sessions() as session:
            attempt = await session.get(PaymentAttempt, attempt_id)
            if attempt is None:
                raise NotFound("the payment attempt was purged")
        form = payments.attempt_form(self._ctx.psp, attempt)
        return pb.StartCardPaymentResponse(
            payment_attempt_id=attempt.payment_attempt_id,
            form_action_url=form.action_url,
            form_fields=[pb.HostedFormField(name=name, value=value) for name, value in form.fields],
            expires_at=to_timestamp(attempt.expires_at),
        )

    async def HandlePspNotification(
        self, request: pb.HandlePspNotificationRequest, context: Any
    ) -> pb.HandlePspNotificationResponse:
        require_role(Role.SERVICE, services=frozenset({"gateway", "ops"}))
        kinds = {pb.PSP_MESSAGE_KIND_NOTIFICATION: "notification", pb.PSP_MESSAGE_KIND_RETURN: "return"}
        kind = kinds.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind is required")
        if request.idempotency_key != hashlib.sha256(request.raw_payload.encode()).hexdigest():
            raise InvalidArgument("idempotency_key must be the SHA-256 (hex) of raw_payload")
        outcome: dict[str, bool] = {}

        async def handle(session: AsyncSession) -> str:
            handled = await payments.handle_notification(session, self._ctx.psp, kind, request.raw_payload)
            outcome["captured_now"] = handled.captured_now
            return handled.attempt_id

        # The PSP sends the same signed variables to the browser and to the notification
        # URL: the key names the kind too, and the capture itself is deduplicated anyway.
        keyed = pb.HandlePspNotificationRequest()
        keyed.CopyFrom(request)
        keyed.idempotency_key = f"psp-{kind}:{request.idempotency_key}"
        attempt_id, replayed = await run_once(
            self._sessions, IdempotencyRecord, keyed, "HandlePspNotification", handle
        )
        captured_now = outcome.get("captured_now", False) and not replayed
        if captured_now:
            self._ctx.wake_outbox()
        async with self._sessions() as session:
            attempt = await session.get(PaymentAttempt, attempt_id)
            if attempt is None:
                raise NotFound("the payment attempt was purged")
            order = await session.get(Order, attempt.order_id)
            assert order is not None
            return pb.HandlePspNotificationResponse(
                payment_attempt=cv.attempt_to_pb(attempt),
                order=cv.order_to_pb(order),
                captured_now=captured_now,
            )

    async def GetPaymentStatus(
        self, request: pb.GetPaymentStatusRequest, context: Any
    ) -> pb.GetPaymentStatusResponse:
        principal = require_role(*Role)
        async with self._sessions() as session:
            if request.order_id:
                await orders.get_order(session, principal, order_id=request.order_id)
            attempt = await payments.get_attempt(session, request.payment_attempt_id, request.order_id)
            order = await session.get(Order, attempt.order_id)
            assert order is not None
            caller_is_payer(principal, order)
            return pb.GetPaymentStatusResponse(
                payment_attempt=cv.attempt_to_pb(attempt), order_status=cv.order_to_pb(order).status
            )

    async def RefundPayment(self, request: pb.RefundPaymentRequest, context: Any) -> pb.RefundPaymentResponse:
        return await refund_rpc.refund_payment(
            self._sessions, self._ctx.psp, self._ctx.archive, self._ctx.wake_outbox, request
        )

    # --- mandates --------------------------------------------------------------------------

    async def RecordBillingMandate(
        self, request: pb.RecordBillingMandateRequest, context: Any
    ) -> pb.RecordBillingMandateResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops", "gateway"}))

        async def record(session: AsyncSession) -> str:
            mandate = await mandates.record_mandate(
                session,
                doctor_id=request.doctor_id,
                doctor_account_id=request.doctor_account_id,
                doctor_legal_name=request.doctor_legal_name,
                covers_billing=request.covers_billing,
                covers_collection=request.covers_collection,
                starts_at=cv.when(request, "starts_at"),
                ends_at=cv.when(request, "ends_at"),
                text_version=request.mandate_text_version,
                text_sha256=request.mandate_text_sha256_hex,
                signed_document_id=request.signed_document_id,
                accepted_at=cv.when(request, "accepted_at"),
            )
            return mandate.mandate_id

        mandate_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "RecordBillingMandate", record
        )
        async with self._sessions() as session:
            mandate = await session.get(BillingMandate, mandate_id)
            assert mandate is not None
            return pb.RecordBillingMandateResponse(mandate=cv.mandate_to_pb(mandate))

    async def GetBillingMandate(
        self, request: pb.GetBillingMandateRequest, context: Any
    ) -> pb.GetBillingMandateResponse:
        principal = require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.REFERENT_DOCTOR, Role.SERVICE)
        async with self._sessions() as session:
            mandate = await mandates.mandate_in_force(session, request.doctor_id, cv.when(request, "at"))
            if principal.role is Role.REFERENT_DOCTOR and mandate.doctor_account_id != principal.subject:
                raise NotFound("no billing mandate in force for this doctor")
            return pb.GetBillingMandateResponse(mandate=cv.mandate_to_pb(mandate))

    async def EndBillingMandate(
        self, request: pb.EndBillingMandateRequest, context: Any
    ) -> pb.EndBillingMandateResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)

        async def end(session: AsyncSession) -> str:
            return (
                await mandates.end_mandate(session, request.mandate_id, cv.when(request, "ends_at"))
            ).mandate_id

        mandate_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "EndBillingMandate", end)
        async with self._sessions() as session:
            mandate = await session.get(BillingMandate, mandate_id)
            assert mandate is not None
            return pb.EndBillingMandateResponse(mandate=cv.mandate_to_pb(mandate))

    # --- invoices --------------------------------------------------------------------------

    async def IssueInvoices(self, request: pb.IssueInvoicesRequest, context: Any) -> pb.IssueInvoicesResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=WORKER_OPS)

        async def issue(session: AsyncSession) -> str:
            await invoices.issue_invoices(
                session, self._ctx.archive, request.order_id, list(request.doctor_ids)
            )
            return request.order_id

        order_id, replayed = await run_once(
            self._sessions, IdempotencyRecord, request, "IssueInvoices", issue
        )
        if not replayed:
            self._ctx.wake_outbox()
        async with self._sessions() as session:
            rows = await session.scalars(
                select(Invoice)
                .where(Invoice.order_id == order_id, Invoice.kind == "invoice")
                .order_by(Invoice.invoice_number)
            )
            return pb.IssueInvoicesResponse(invoices=[cv.invoice_to_pb(row) for row in rows])

    async def IssueCreditNote(
        self, request: pb.IssueCreditNoteRequest, context: Any
    ) -> pb.IssueCreditNoteResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=WORKER_OPS)
        if request.reason == pb.CREDIT_NOTE_REASON_UNSPECIFIED:
            raise InvalidArgument("reason is required")

        async def issue(session: AsyncSession) -> str:
            note = await invoices.issue_credit_note(
                session, self._ctx.archive, request.invoice_id, request.amount_cents, request.currency
            )
            return note.invoice_id

        note_id, replayed = await run_once(
            self._sessions, IdempotencyRecord, request, "IssueCreditNote", issue
        )
        if not replayed:
            self._ctx.wake_outbox()  # wakes the invoice renderer too
        async with self._sessions() as session:
            note = await session.get(Invoice, note_id)
            assert note is not None
            return pb.IssueCreditNoteResponse(credit_note=cv.invoice_to_pb(note))

    async def _readable_invoice(
        self, session: AsyncSession, principal: Principal, invoice_id: str
    ) -> Invoice:
        invoice = await session.get(Invoice, invoice_id) if invoice_id else None
        if invoice is None or not may_read_invoice(principal, invoice):
            raise NotFound("no such invoice")
        return invoice

    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Any) -> pb.GetInvoiceResponse:
        principal = require_role(*Role)
        async with self._sessions() as session:
            invoice = await self._readable_invoice(session, principal, request.invoice_id)
            return pb.GetInvoiceResponse(invoice=cv.invoice_to_pb(invoice))

    async def ListInvoices(self, request: pb.ListInvoicesRequest, context: Any) -> pb.ListInvoicesResponse:
        principal = require_role(*Role)
        staff = principal.is_service or principal.role in STAFF
        account_id = request.account_id
        if not staff:
            if account_id and account_id != principal.subject:
                raise PermissionDenied("only staff may list another account's invoices")
            account_id = principal.subject
        elif not account_id and not request.order_id:
            raise InvalidArgument("staff name an account_id or an order_id")
        size = page_size(request.page_size)
        offset = offset_from_token(request.page_token)
        query = select(Invoice)
        if account_id:
            query = query.where(Invoice.recipient_account_id == account_id)
        if request.order_id:
            query = query.where(Invoice.order_id == request.order_id)
        async with self._sessions() as session:
            rows = list(
                await session.scalars(
                    query.order_by(Invoice.issued_at.desc(), Invoice.invoice_number.desc())
                    .offset(offset)
                    .limit(size + 1)
                )
            )
        return pb.ListInvoicesResponse(
            invoices=[cv.invoice_to_pb(row) for row in rows[:size]],
            next_page_token=next_token(offset, size, len(rows)),
        )

    async def DownloadInvoice(
        self, request: pb.DownloadInvoiceRequest, context: Any
    ) -> AsyncIterator[pb.DownloadInvoiceResponse]:
        principal = require_role(*Role)
        async with self._sessions() as session:
            invoice = await self._readable_invoice(session, principal, request.invoice_id)
        invoice, content = await invoices.archived_copy(self._sessions, self._ctx.archive, invoice)
        yield pb.DownloadInvoiceResponse(metadata=cv.invoice_to_pb(invoice))
        for chunk in invoices.chunks(content):
            yield pb.DownloadInvoiceResponse(chunk=chunk)

    # --- ledger and payouts ----------------------------------------------------------------

    async def ListCollectionLedger(
        self, request: pb.ListCollectionLedgerRequest, context: Any
    ) -> pb.ListCollectionLedgerResponse:
        principal = require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.REFERENT_DOCTOR, Role.SERVICE)
        async with self._sessions() as session:
            await doctor_may_read(session, principal, request.doctor_id)
            entries, token = await ledger.list_ledger(
                session,
                request.doctor_id,
                cv.when(request, "period_start"),
                cv.when(request, "period_end"),
                request.page_size,
                request.page_token,
            )
            return pb.ListCollectionLedgerResponse(
                entries=[cv.ledger_to_pb(e) for e in entries], next_page_token=token
            )

    async def GeneratePayoutStatement(
        self, request: pb.GeneratePayoutStatementRequest, context: Any
    ) -> pb.GeneratePayoutStatementResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=WORKER_OPS)

        async def generate(session: AsyncSession) -> str:
            statement = await ledger.generate_statement(
                session,
                self._ctx.archive.store,
                request.doctor_id,
                cv.when(request, "period_start"),
                cv.when(request, "period_end"),
            )
            return statement.statement_id

        statement_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "GeneratePayoutStatement", generate
        )
        async with self._sessions() as session:
            statement = await ledger.get_statement(session, statement_id)
            return pb.GeneratePayoutStatementResponse(statement=cv.statement_to_pb(statement))

    async def GetPayoutStatement(
        self, request: pb.GetPayoutStatementRequest, context: Any
    ) -> pb.GetPayoutStatementResponse:
        principal = require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.REFERENT_DOCTOR, Role.SERVICE)
        async with self._sessions() as session:
            statement = await ledger.get_statement(session, request.statement_id)
            try:
                await doctor_may_read(session, principal, statement.doctor_id)
            except PermissionDenied:
                raise NotFound("no such payout statement") from None
            return pb.GetPayoutStatementResponse(statement=cv.statement_to_pb(statement))

    async def ListPayoutStatements(
        self, request: pb.ListPayoutStatementsRequest, context: Any
    ) -> pb.ListPayoutStatementsResponse:
        principal = require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.REFERENT_DOCTOR, Role.SERVICE)
        async with self._sessions() as session:
            await doctor_may_read(session, principal, request.doctor_id)
            rows, token = await ledger.list_statements(
                session, request.doctor_id, request.page_size, request.page_token
            )
            return pb.ListPayoutStatementsResponse(
                statements=[cv.statement_to_pb(row) for row in rows], next_page_token=token
            )

    # --- partners --------------------------------------------------------------------------

    async def CreatePartner(self, request: pb.CreatePartnerRequest, context: Any) -> pb.CreatePartnerResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        kind = from_pb_enum(pb.PartnerKind, PartnerKind, request.kind)
        if kind is None:
            raise InvalidArgument("kind is required")

        async def create(session: AsyncSession) -> str:
            return (await create_partner(session, request.name, kind)).partner_id

        partner_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "CreatePartner", create)
        async with self._sessions() as session:
            partner = await session.get(Partner, partner_id)
            assert partner is not None
            return pb.CreatePartnerResponse(partner=partner_to_pb(partner))

    async def GetPartner(self, request: pb.GetPartnerRequest, context: Any) -> pb.GetPartnerResponse:
        require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE)
        async with self._sessions() as session:
            return pb.GetPartnerResponse(
                partner=partner_to_pb(await coverage.get_partner(session, request.partner_id))
            )

    async def ListPartners(self, request: pb.ListPartnersRequest, context: Any) -> pb.ListPartnersResponse:
        require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE)
        async with self._sessions() as session:
            partners, next_page = await list_partners(session, request.page_size, request.page_token)
            return pb.ListPartnersResponse(
                partners=[partner_to_pb(p) for p in partners], next_page_token=next_page
            )

    async def CreatePartnerAgreement(
        self, request: pb.CreatePartnerAgreementRequest, context: Any
    ) -> pb.CreatePartnerAgreementResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        purposes = [from_pb_enum(pb.CasePurpose, CasePurpose, p) for p in request.covered_purposes]
        if any(p is None for p in purposes):
            raise InvalidArgument("covered_purposes holds an unknown purpose")

        async def create(session: AsyncSession) -> str:
            agreement = await coverage.create_agreement(
                session,
                request.partner_id,
                [p for p in purposes if p is not None],
                list(request.covered_therapeutic_areas),
                cv.when(request, "starts_at"),
                cv.when(request, "ends_at"),
                request.quota,
            )
            return agreement.agreement_id

        agreement_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "CreatePartnerAgreement", create
        )
        async with self._sessions() as session:
            agreement = await session.get(PartnerAgreement, agreement_id)
            assert agreement is not None
            return pb.CreatePartnerAgreementResponse(agreement=cv.agreement_to_pb(agreement))

    async def ListPartnerAgreements(
        self, request: pb.ListPartnerAgreementsRequest, context: Any
    ) -> pb.ListPartnerAgreementsResponse:
        require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE)
        async with self._sessions() as session:
            await coverage.get_partner(session, request.partner_id)
            rows = await coverage.list_agreements(session, request.partner_id, request.include_ended)
            return pb.ListPartnerAgreementsResponse(agreements=[cv.agreement_to_pb(row) for row in rows])

    async def EndPartnerAgreement(
        self, request: pb.EndPartnerAgreementRequest, context: Any
    ) -> pb.EndPartnerAgreementResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)

        async def end(session: AsyncSession) -> str:
            agreement = await coverage.end_agreement(
                session, request.agreement_id, cv.when(request, "ends_at")
            )
            return agreement.agreement_id

        agreement_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "EndPartnerAgreement", end
        )
        async with self._sessions() as session:
            agreement = await session.get(PartnerAgreement, agreement_id)
            assert agreement is not None
            return pb.EndPartnerAgreementResponse(agreement=cv.agreement_to_pb(agreement))

    async def CreatePartnerApiKey(
        self, request: pb.CreatePartnerApiKeyRequest, context: Any
    ) -> pb.CreatePartnerApiKeyResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        async with self._sessions.begin() as session:
            credential, api_key = await partner_access.create_api_key(
                session, request.partner_id, cv.when(request, "expires_at")
            )
            return pb.CreatePartnerApiKeyResponse(credential=cv.credential_to_pb(credential), api_key=api_key)

    async def RegisterPartnerCertificate(
        self, request: pb.RegisterPartnerCertificateRequest, context: Any
    ) -> pb.RegisterPartnerCertificateResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        # Read at each call, so a new CA bundle applies to registrations without a restart.
        issuers = await asyncio.to_thread(partner_access.trusted_issuers, self._ctx.partner_client_ca_path)

        async def register(session: AsyncSession) -> str:
            credential = await partner_access.register_certificate(
                session, request.partner_id, request.certificate_pem, issuers
            )
            return credential.credential_id

        credential_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "RegisterPartnerCertificate", register
        )
        async with self._sessions() as session:
            credential = await session.get(PartnerCredential, credential_id)
            assert credential is not None
            return pb.RegisterPartnerCertificateResponse(credential=cv.credential_to_pb(credential))

    async def RevokePartnerCredential(
        self, request: pb.RevokePartnerCredentialRequest, context: Any
    ) -> pb.RevokePartnerCredentialResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)

        async def revoke(session: AsyncSession) -> str:
            return (await partner_access.revoke_credential(session, request.credential_id)).credential_id

        credential_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "RevokePartnerCredential", revoke
        )
        async with self._sessions() as session:
            credential = await session.get(PartnerCredential, credential_id)
            assert credential is not None
            return pb.RevokePartnerCredentialResponse(credential=cv.credential_to_pb(credential))

    async def ListPartnerCredentials(
        self, request: pb.ListPartnerCredentialsRequest, context: Any
    ) -> pb.ListPartnerCredentialsResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        async with self._sessions() as session:
            rows = await partner_access.list_credentials(session, request.partner_id)
            return pb.ListPartnerCredentialsResponse(credentials=[cv.credential_to_pb(row) for row in rows])

    async def IssueCoverageCodes(
        self, request: pb.IssueCoverageCodesRequest, context: Any
    ) -> pb.IssueCoverageCodesResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)
        usage = from_pb_enum(pb.CoverageCodeUsage, CodeUsage, request.usage)
        secret = self._ctx.code_secret()

        async def issue(session: AsyncSession) -> str:
            return await coverage.issue_codes(
                session,
                secret,
                request.partner_id,
                request.agreement_id,
                request.count,
                usage,
                request.max_uses,
                cv.when(request, "expires_at"),
                CodeIssuer.PLATFORM,
            )

        batch_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "IssueCoverageCodes", issue)
        async with self._sessions() as session:
            issued = await coverage.batch_codes(session, secret, batch_id)
            return pb.IssueCoverageCodesResponse(
                codes=[cv.code_to_pb(item.row, item.code) for item in issued]
            )

    async def RevokeCoverageCode(
        self, request: pb.RevokeCoverageCodeRequest, context: Any
    ) -> pb.RevokeCoverageCodeResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=OPS)

        async def revoke(session: AsyncSession) -> str:
            code = await session.get(CoverageCode, request.code_id) if request.code_id else None
            if code is None:
                raise NotFound("no such coverage code")
            return (await coverage.revoke_code(session, code.partner_id, code.code_id)).code_id

        code_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "RevokeCoverageCode", revoke)
        async with self._sessions() as session:
            code = await session.get(CoverageCode, code_id)
            assert code is not None
            return pb.RevokeCoverageCodeResponse(code=cv.code_to_pb(code))

    async def ListCoverageCodes(
        self, request: pb.ListCoverageCodesRequest, context: Any
    ) -> pb.ListCoverageCodesResponse:
        require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE)
        status = from_pb_enum(pb.CoverageCodeStatus, CodeStatus, request.status)
        async with self._sessions() as session:
            await coverage.get_partner(session, request.partner_id)
            rows, token = await coverage.list_codes(
                session, request.partner_id, status, request.page_size, request.page_token
            )
            return pb.ListCoverageCodesResponse(
                codes=[cv.code_to_pb(row) for row in rows], next_page_token=token
            )

    # --- satisfaction and retention --------------------------------------------------------

    async def RecordSatisfactionAnswer(
        self, request: pb.RecordSatisfactionAnswerRequest, context: Any
    ) -> pb.RecordSatisfactionAnswerResponse:
        principal = require_role(Role.PATIENT, Role.SERVICE, services=FRONT)
        recorded: dict[str, Any] = {}

        async def record(session: AsyncSession) -> str:
            order = await session.scalar(select(Order).where(Order.case_id == request.case_id))
            if order is None:
                raise NotFound("no such case")
            caller_is_payer(principal, order)
            recorded["at"] = await partner_access.record_satisfaction(
                session, request.case_id, request.score, request.would_recommend
            )
            return request.case_id

        await run_once(self._sessions, IdempotencyRecord, request, "RecordSatisfactionAnswer", record)
        async with self._sessions() as session:
            answer = await session.get(SatisfactionAnswer, request.case_id)
            if answer is None:
                raise NotFound("the answer was purged")
            return pb.RecordSatisfactionAnswerResponse(recorded_at=to_timestamp(answer.recorded_at))

    async def PurgePaymentData(
        self, request: pb.PurgePaymentDataRequest, context: Any
    ) -> pb.PurgePaymentDataResponse:
        require_role(Role.SERVICE, services=WORKER_OPS)
        counts: dict[str, int] = {}

        async def purge(session: AsyncSession) -> str:
            attempts, notifications = await purge_payment_data(session, cv.when(request, "older_than"))
            return f"{attempts}:{notifications}"

        result, _ = await run_once(self._sessions, IdempotencyRecord, request, "PurgePaymentData", purge)
        attempts_text, _, notifications_text = result.partition(":")
        counts["attempts"], counts["notifications"] = int(attempts_text), int(notifications_text)
        return pb.PurgePaymentDataResponse(
            purged_payment_attempt_count=counts["attempts"], purged_notification_count=counts["notifications"]
        )

    async def PurgeSatisfactionData(
        self, request: pb.PurgeSatisfactionDataRequest, context: Any
    ) -> pb.PurgeSatisfactionDataResponse:
        require_role(Role.SERVICE, services=WORKER_OPS)

        async def purge(session: AsyncSession) -> str:
            return str(await purge_satisfaction(session, cv.when(request, "older_than")))

        result, _ = await run_once(self._sessions, IdempotencyRecord, request, "PurgeSatisfactionData", purge)
        return pb.PurgeSatisfactionDataResponse(purged_count=int(result))

    # --- data lifecycle (issue 10) ---------------------------------------------------------

    async def ExportSubjectData(
        self, request: pb.ExportSubjectDataRequest, context: Any
    ) -> pb.ExportSubjectDataResponse:
        require_role(Role.SERVICE, services=LIFECYCLE)
        subject_id = lifecycle.check_subject(request.subject_id)
        if not request.rights_request_id:
            raise InvalidArgument("rights_request_id is required (an export answers an access request)")
        await lifecycle.render_pending_invoices(
            self._sessions, self._ctx.archive, subject_id, "nothing was exported"
        )
        at = utcnow()
        async with self._sessions() as session:
            bundle, invoice_ids = await lifecycle.export_subject(session, subject_id, at)
        return pb.ExportSubjectDataResponse(
            fhir_bundle_json=json.dumps(bundle, ensure_ascii=False).encode(),
            resource_count=len(bundle.get("entry", [])),
            invoice_ids=invoice_ids,
            generated_at=to_timestamp(at),
        )

    async def ArchiveSubject(
        self, request: pb.ArchiveSubjectRequest, context: Any
    ) -> pb.ArchiveSubjectResponse:
        require_role(Role.DPO, Role.SERVICE, services=LIFECYCLE)
        subject_id = lifecycle.check_subject(request.subject_id)
        # Every invoice is archived with its PDF: the pending ones are rendered first.
        await lifecycle.render_pending_invoices(self._sessions, self._ctx.archive, subject_id)

        async def archive(session: AsyncSession) -> str:
            counts = await lifecycle.archive_subject(session, self._ctx.archive, subject_id)
            return await lifecycle.record_operation(session, "archive", subject_id, {"counts": counts})

        result, _ = await run_once(self._sessions, IdempotencyRecord, request, "ArchiveSubject", archive)
        data = await self._operation(result)
        return pb.ArchiveSubjectResponse(
            archived_at=to_timestamp(datetime.fromisoformat(data["at"])),
            archived=_item_counts(data["counts"]),
        )

    async def RestrictSubject(
        self, request: pb.RestrictSubjectRequest, context: Any
    ) -> pb.RestrictSubjectResponse:
        require_role(Role.DPO, Role.SERVICE, services=LIFECYCLE)
        subject_id = lifecycle.check_subject(request.subject_id)

        async def restrict(session: AsyncSession) -> str:
            counts = await lifecycle.restrict_subject(
                session, subject_id, request.rights_request_id, request.restricted
            )
            return await lifecycle.record_operation(session, "restrict", subject_id, {"counts": counts})

        result, _ = await run_once(self._sessions, IdempotencyRecord, request, "RestrictSubject", restrict)
        data = await self._operation(result)
        return pb.RestrictSubjectResponse(
            affected=_item_counts(data["counts"]), changed_at=to_timestamp(datetime.fromisoformat(data["at"]))
        )

    async def PurgeSubject(self, request: pb.PurgeSubjectRequest, context: Any) -> pb.PurgeSubjectResponse:
        require_role(Role.DPO, Role.SERVICE, services=LIFECYCLE)
        subject_id = lifecycle.check_subject(request.subject_id)
        await lifecycle.render_pending_invoices(self._sessions, self._ctx.archive, subject_id)

        async def purge(session: AsyncSession) -> str:
            outcome = await lifecycle.purge_subject(session, self._ctx.archive, subject_id)
            retained = [
                [item.category, item.count, item.legal_basis.value, item.retained_until.isoformat()]
                for item in outcome.retained
            ]
            return await lifecycle.record_operation(
                session, "purge", subject_id, {"purged": outcome.purged, "retained": retained}
            )

        result, _ = await run_once(self._sessions, IdempotencyRecord, request, "PurgeSubject", purge)
        data = await self._operation(result)
        return pb.PurgeSubjectResponse(
            purged_at=to_timestamp(datetime.fromisoformat(data["at"])),
            purged=_item_counts(data["purged"]),
            retained=[
                pb.RetainedDataItem(
                    category=category,
                    count=count,
                    legal_basis=to_pb_enum(pb.RetentionLegalBasis, lifecycle.LegalBasis(basis)),
                    retained_until=to_timestamp(datetime.fromisoformat(until)),
                )
                for category, count, basis, until in data["retained"]
            ],
            # Billing holds no per-subject key: what it keeps must stay readable (BIL-09).
            subject_key_destroyed=False,
        )

    async def _operation(self, operation_id: str) -> dict[str, Any]:
        async with self._sessions() as session:
            return await lifecycle.operation_outcome(session, operation_id)

    async def ReadArchivedSubject(
        self, request: pb.ReadArchivedSubjectRequest, context: Any
    ) -> pb.ReadArchivedSubjectResponse:
        """RET-07: the only path to archived records; DPO or habilitated staff, a legal
        reason; every attempt logged, refusals included."""
        attempt = archive_access.Attempt(
            principal=require_principal(),
            subject_id=request.subject_id,
            purpose=from_pb_enum(pb.ArchiveReadPurpose, archive_access.ArchivePurpose, request.purpose),
            reference=request.reference,
        )
        view, access_id = await archive_access.read_archive(self._sessions, attempt)
        return cv.archive_view_to_pb(view, access_id)

    async def ListSubjectCaseIds(
        self, request: pb.ListSubjectCaseIdsRequest, context: Any
    ) -> pb.ListSubjectCaseIdsResponse:
        require_role(Role.SERVICE, services=LIFECYCLE)
        subject_id = lifecycle.check_subject(request.subject_id)
        async with self._sessions() as session:
            return pb.ListSubjectCaseIdsResponse(
                case_ids=await lifecycle.subject_case_ids(session, subject_id)
            )


def _item_counts(counts: dict[str, int]) -> list[pb.DataItemCount]:
    return [pb.DataItemCount(category=name, count=int(count)) for name, count in sorted(counts.items())]
