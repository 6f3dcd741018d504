"""The partner API (issue 7 §7): a separate gRPC server on its own port.

Partners authenticate with an API key in the `x-partner-api-key` metadata (stored hashed);
the internal identity tokens are neither needed nor accepted here. Served over mutual TLS
(required in production), the key only counts with a client certificate registered to the
key's partner (SEC-04): the handshake checks the certificate against the partners' CA, and
this guard checks its fingerprint against the partner's registered ones. Every RPC acts for the
partner the key proves and is confined to that partner's data: another partner's code,
agreement or invoice answers NOT_FOUND. Nothing here carries health data (BIL-10).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from secondopinion.partner.v1 import partner_pb2 as ppb
from secondopinion.partner.v1 import partner_pb2_grpc as ppb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing import convert as cv
from services.billing.domain import coverage, invoices, partner_access
from services.billing.domain.coverage import CodeIssuer, CodeStatus, CodeUsage
from services.billing.models import IdempotencyRecord
from services.billing.servicer import BillingContext
from services.shared.errors import InvalidArgument, ServiceError, Unauthenticated
from services.shared.idempotency import run_once
from services.shared.protoconv import from_pb_enum
from services.shared.telemetry import grpc_server_interceptors

log = logging.getLogger(__name__)
SERVICE_NAME = ppb.DESCRIPTOR.services_by_name["PartnerService"].full_name
API_KEY_HEADER = "x-partner-api-key"
MAX_PARTNER_KEY = 150
# Where gRPC puts the PEM of the client certificate verified by the TLS handshake.
PEER_CERTIFICATE_KEY = "x509_pem_cert"
DENIED = "a valid partner API key is required"
current_partner: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_partner", default=None)


def partner_id() -> str:
    value = current_partner.get()
    if value is None:
        raise Unauthenticated(DENIED)
    return value


def scoped(request: Any, partner: str) -> Any:
    """The request with its idempotency key namespaced by partner (keys never collide)."""
    key = request.idempotency_key
    if not key or len(key) > MAX_PARTNER_KEY:
        raise InvalidArgument(f"idempotency_key is required (1 to {MAX_PARTNER_KEY} characters)")
    copy = type(request)()
    copy.CopyFrom(request)
    copy.idempotency_key = f"partner:{partner}:{key}"
    return copy


def peer_certificate_fingerprint(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """SHA-256 fingerprint of the client certificate the TLS handshake verified, if any."""
    pems = list(context.auth_context().get(PEER_CERTIFICATE_KEY) or ())
    if len(pems) != 1:
        return None
    try:
        return partner_access.certificate_fingerprint(pems[0])
    except ValueError:
        return None


class _PartnerGuard(grpc.aio.ServerInterceptor):
    """Authenticate every call by API key (and, over mutual TLS, by the key's partner's
    client certificate) and map domain errors to statuses."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], require_certificate: bool = False) -> None:
        self._sessions = sessions
        self._require_certificate = require_certificate

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        key = ""
        for name, value in context.invocation_metadata() or ():
            if name == API_KEY_HEADER:
                key = value.decode() if isinstance(value, bytes) else str(value)
        try:
            fingerprint: str | None = None
            if self._require_certificate:
                fingerprint = peer_certificate_fingerprint(context)
                if fingerprint is None:
                    # The handshake requires a certificate; fail closed all the same.
                    raise Unauthenticated(DENIED)
            async with self._sessions() as session:
                return await partner_access.authenticate(session, key, fingerprint)
        except ServiceError as exc:
            # One message for every refusal: nothing tells a wrong key from a wrong certificate.
            message = DENIED if isinstance(exc, Unauthenticated) else exc.message
            await context.abort(exc.status, message)
        raise AssertionError("unreachable")

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
        if isinstance(exc, ServiceError):
            log.info("partner rpc refused", extra={"fields": {"method": method, "code": exc.status.name}})
            await context.abort(exc.status, exc.message)
        log.error("partner rpc failed", exc_info=exc, extra={"fields": {"method": method}})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler: Any = await continuation(details)
        method: str = details.method
        if handler is None or not method.startswith(f"/{SERVICE_NAME}/"):
            passthrough: grpc.RpcMethodHandler[Any, Any] | None = handler
            return passthrough
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = current_partner.set(await self._authenticate(context))
                try:
                    return await behavior(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as exc:
                    await self._fail(context, method, exc)
                finally:
                    current_partner.reset(token)

            return grpc.unary_unary_rpc_method_handler(unary, **kwargs)
        streaming = handler.unary_stream

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            token = current_partner.set(await self._authenticate(context))
            try:
                async for item in streaming(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(context, method, exc)
            finally:
                current_partner.reset(token)

        return grpc.unary_stream_rpc_method_handler(stream, **kwargs)


class PartnerServicer(ppb_grpc.PartnerServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession], context: BillingContext) -> None:
        self._sessions = sessions
        self._ctx = context

    async def ListAgreements(
        self, request: ppb.ListAgreementsRequest, context: Any
    ) -> ppb.ListAgreementsResponse:
        partner = partner_id()
        async with self._sessions() as session:
            rows = await coverage.list_agreements(session, partner, request.include_ended)
            return ppb.ListAgreementsResponse(agreements=[cv.partner_agreement_to_pb(row) for row in rows])

    async def IssueCoverageCodes(
        self, request: ppb.IssueCoverageCodesRequest, context: Any
    ) -> ppb.IssueCoverageCodesResponse:
        partner = partner_id()
        usage = from_pb_enum(ppb.CoverageCodeUsage, CodeUsage, request.usage)
        secret = self._ctx.code_secret()

        async def issue(session: AsyncSession) -> str:
            return await coverage.issue_codes(
                session,
                secret,
                partner,
                request.agreement_id,
                request.count,
                usage,
                request.max_uses,
                cv.when(request, "expires_at"),
                CodeIssuer.PARTNER,
            )

        batch_id, _ = await run_once(
            self._sessions, IdempotencyRecord, scoped(request, partner), "PartnerIssueCoverageCodes", issue
        )
        async with self._sessions() as session:
            issued = await coverage.batch_codes(session, secret, batch_id)
            return ppb.IssueCoverageCodesResponse(
                codes=[cv.partner_code_to_pb(item.row, item.code) for item in issued]
            )

    async def RevokeCoverageCode(
        self, request: ppb.RevokeCoverageCodeRequest, context: Any
    ) -> ppb.RevokeCoverageCodeResponse:
        partner = partner_id()

        async def revoke(session: AsyncSession) -> str:
            return (await coverage.revoke_code(session, partner, request.code_id)).code_id

        code_id, _ = await run_once(
            self._sessions, IdempotencyRecord, scoped(request, partner), "PartnerRevokeCoverageCode", revoke
        )
        async with self._sessions() as session:
            code = await coverage.partner_code(session, partner, code_id)
            return ppb.RevokeCoverageCodeResponse(code=cv.partner_code_to_pb(code))

    async def CheckCoverageCode(
        self, request: ppb.CheckCoverageCodeRequest, context: Any
    ) -> ppb.CheckCoverageCodeResponse:
        partner = partner_id()
        async with self._sessions() as session:
            if request.HasField("code"):
                code = await coverage.partner_code_by_value(session, partner, request.code)
            elif request.code_id:
                code = await coverage.partner_code(session, partner, request.code_id)
            else:
                raise InvalidArgument("code_id or code is required")
            return ppb.CheckCoverageCodeResponse(code=cv.partner_code_to_pb(code))

    async def ListCoverageCodes(
        self, request: ppb.ListCoverageCodesRequest, context: Any
    ) -> ppb.ListCoverageCodesResponse:
        partner = partner_id()
        status = from_pb_enum(ppb.CoverageCodeStatus, CodeStatus, request.status)
        async with self._sessions() as session:
            rows, token = await coverage.list_codes(
                session, partner, status, request.page_size, request.page_token
            )
            return ppb.ListCoverageCodesResponse(
                codes=[cv.partner_code_to_pb(row) for row in rows], next_page_token=token
            )

    async def ListCoveredCases(
        self, request: ppb.ListCoveredCasesRequest, context: Any
    ) -> ppb.ListCoveredCasesResponse:
        partner = partner_id()
        async with self._sessions() as session:
            cases, token = await partner_access.covered_cases(
                session,
                partner,
                cv.when(request, "period_start"),
                cv.when(request, "period_end"),
                request.page_size,
                request.page_token,
            )
            return ppb.ListCoveredCasesResponse(
                cases=[cv.covered_case_to_pb(c) for c in cases], next_page_token=token
            )

    async def ListInvoices(self, request: ppb.ListInvoicesRequest, context: Any) -> ppb.ListInvoicesResponse:
        partner = partner_id()
        async with self._sessions() as session:
            rows, token = await partner_access.partner_invoices(
                session,
                partner,
                cv.when(request, "period_start"),
                cv.when(request, "period_end"),
                request.page_size,
                request.page_token,
            )
            return ppb.ListInvoicesResponse(
                invoices=[cv.partner_invoice_to_pb(*row) for row in rows], next_page_token=token
            )

    async def DownloadInvoice(
        self, request: ppb.DownloadInvoiceRequest, context: Any
    ) -> AsyncIterator[ppb.DownloadInvoiceResponse]:
        partner = partner_id()
        async with self._sessions() as session:
            invoice, reference, corrected = await partner_access.partner_invoice(
                session, partner, request.invoice_id
            )
        invoice, content = await invoices.archived_copy(self._sessions, self._ctx.archive, invoice)
        yield ppb.DownloadInvoiceResponse(metadata=cv.partner_invoice_to_pb(invoice, reference, corrected))
        for chunk in invoices.chunks(content):
            yield ppb.DownloadInvoiceResponse(chunk=chunk)

    async def GetSatisfactionSummary(
        self, request: ppb.GetSatisfactionSummaryRequest, context: Any
    ) -> ppb.GetSatisfactionSummaryResponse:
        partner = partner_id()
        async with self._sessions() as session:
            summary = await partner_access.satisfaction_summary(
                session,
                partner,
                cv.when(request, "period_start"),
                cv.when(request, "period_end"),
                self._ctx.satisfaction_minimum_answers,
            )
        return ppb.GetSatisfactionSummaryResponse(
            suppressed=summary.suppressed,
            minimum_response_count=summary.minimum,
            response_count=summary.count,
            average_score=summary.average,
            score_counts=[ppb.ScoreCount(score=s, count=n) for s, n in sorted(summary.by_score.items())],
            would_recommend_count=summary.would_recommend,
        )


class PartnerApiServer:
    """The partner API's own gRPC server (health and reflection included)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        context: BillingContext,
        host: str,
        port: int,
        grace: float,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        """`credentials`: mutual TLS (`grpc.ssl_server_credentials` requiring client
        certificates); None serves plaintext (development and tests on loopback)."""
        self._host = host
        self._requested_port = port
        self._grace = grace
        self._credentials = credentials
        self._server = grpc.aio.server(
            interceptors=[*grpc_server_interceptors(), _PartnerGuard(sessions, credentials is not None)],
            options=[("grpc.max_receive_message_length", 1024 * 1024)],
        )
        ppb_grpc.add_PartnerServiceServicer_to_server(
            PartnerServicer(sessions, context),
            self._server,
        )
        self._health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            self._server,
        )
        self.port = 0

    @property
    def target(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> int:
        address = f"{self._host}:{self._requested_port}"
        if self._credentials is None:
            self.port = self._server.add_insecure_port(address)
        else:
            self.port = self._server.add_secure_port(address, self._credentials)
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "partner api started",
            extra={"fields": {"port": self.port, "mutual_tls": self._credentials is not None}},
        )
        return self.port

    async def stop(self) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace)
