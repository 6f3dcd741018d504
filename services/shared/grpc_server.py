"""gRPC server bootstrap: health, reflection, tracing, internal-token auth, error mapping,
graceful shutdown. Every service starts through `GrpcServer`."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from services.shared.auth import InvalidTokenError, Principal, TokenVerifier, current_principal
from services.shared.errors import ServiceError
from services.shared.telemetry import grpc_server_interceptors

log = logging.getLogger(__name__)

# Probes and tooling that must work without a token; they expose no data. Identity's
# token-signing keys are public keys only: anyone verifying a token may fetch them.
UNAUTHENTICATED_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.",
    "/secondopinion.identity.v1.IdentityService/ListTokenSigningKeys",
)


@dataclass(frozen=True, slots=True)
class ServiceRegistration:
    """One gRPC service to expose: its full name, the generated `add_*_to_server`, the servicer."""

    full_name: str
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    servicer: object


def bearer_token(metadata: Any) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            if text.startswith("Bearer "):
                return text.removeprefix("Bearer ").strip()
    return ""


# A client-streaming call refused before the client has sent everything: gRPC's asyncio
# client then fails its next write and reports INTERNAL instead of our status
# (grpc/grpc#36066). Reading the rest of the stream first lets the caller see the real
# refusal; bounded so a huge or endless stream is cut off anyway.
DRAIN_MAX_BYTES = 256 * 1024 * 1024
DRAIN_MAX_SECONDS = 30.0


class _ClientStream:
    """A client-streaming call's requests, remembering whether the client finished."""

    def __init__(self, requests: AsyncIterator[Any]) -> None:
        self._requests = requests
        self.finished = False

    def __aiter__(self) -> _ClientStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await anext(self._requests)
        except StopAsyncIteration:
            self.finished = True
            raise

    async def drain(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if self.finished:
            return
        remaining = context.time_remaining()
        budget = DRAIN_MAX_SECONDS if remaining is None else min(DRAIN_MAX_SECONDS, max(remaining, 0.0))

        async def read_rest() -> None:
            received = 0
            async for message in self:
                received += message.ByteSize()
                if received > DRAIN_MAX_BYTES:
                    return

        try:
            await asyncio.wait_for(read_rest(), budget)
        except Exception:
            return


class _Guard:
    """Wraps every handler: verify the caller's token, map errors, log the outcome."""

    def __init__(self, verifier: TokenVerifier | None, authenticate: bool) -> None:
        self._verifier = verifier
        self._authenticate = authenticate

    async def _principal(
        self, context: grpc.aio.ServicerContext[Any, Any], stream: _ClientStream | None = None
    ) -> Principal | None:
        if not self._authenticate:
            return None
        token = bearer_token(context.invocation_metadata())
        if not token or self._verifier is None:
            await _abort(
                context, grpc.StatusCode.UNAUTHENTICATED, "an internal identity token is required", stream
            )
        try:
            assert self._verifier is not None
            return self._verifier.verify(token)
        except InvalidTokenError as exc:
            await _abort(
                context, grpc.StatusCode.UNAUTHENTICATED, f"invalid internal identity token ({exc})", stream
            )
        raise AssertionError("unreachable")

    async def _fail(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        exc: Exception,
        stream: _ClientStream | None = None,
    ) -> None:
        if isinstance(exc, ServiceError):
            log.info("rpc refused", extra={"fields": {"method": method, "code": exc.status.name}})
            await _abort(context, exc.status, exc.message, stream)
        if isinstance(exc, NotImplementedError):
            # The generated base class's answer for an RPC a service does not implement yet:
            # callers (workflows) must see UNIMPLEMENTED, not a retryable INTERNAL.
            await _abort(context, grpc.StatusCode.UNIMPLEMENTED, "not implemented", stream)
        log.error("rpc failed", exc_info=exc, extra={"fields": {"method": method}})
        await _abort(context, grpc.StatusCode.INTERNAL, "internal error", stream)

    def unary(
        self, method: str, behavior: Callable[..., Awaitable[Any]], client_streaming: bool = False
    ) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            stream = _ClientStream(request) if client_streaming else None
            principal = await self._principal(context, stream)
            token = current_principal.set(principal)
            started = time.perf_counter()
            try:
                return await behavior(request if stream is None else stream, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(context, method, exc, stream)
            finally:
                current_principal.reset(token)
                log.debug(
                    "rpc", extra={"fields": {"method": method, "ms": (time.perf_counter() - started) * 1e3}}
                )

        return handler

    def streaming(
        self, method: str, behavior: Callable[..., AsyncIterator[Any]]
    ) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            principal = await self._principal(context)
            token = current_principal.set(principal)
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(context, method, exc)
            finally:
                current_principal.reset(token)

        return handler


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    code: grpc.StatusCode,
    message: str,
    stream: _ClientStream | None,
) -> None:
    if stream is not None:
        await stream.drain(context)
    await context.abort(code, message)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        guard = _Guard(self._verifier, authenticate=not method.startswith(UNAUTHENTICATED_PREFIXES))
        h: Any = handler
        kwargs = {
            "request_deserializer": h.request_deserializer,
            "response_serializer": h.response_serializer,
        }
        if h.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(guard.unary(method, h.unary_unary), **kwargs)
        if h.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                guard.unary(method, h.stream_unary, client_streaming=True), **kwargs
            )
        if h.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(guard.streaming(method, h.unary_stream), **kwargs)
        return grpc.stream_stream_rpc_method_handler(guard.streaming(method, h.stream_stream), **kwargs)


def require_principal() -> Principal:
    """The verified caller; servicers call this rather than reading metadata."""
    principal = current_principal.get()
    if principal is None:
        from services.shared.errors import Unauthenticated

        raise Unauthenticated("an internal identity token is required")
    return principal


class GrpcServer:
    """A grpc.aio server with the platform's standard services and interceptors."""

    def __init__(
        self,
        name: str,
        registrations: Sequence[ServiceRegistration],
        verifier: TokenVerifier | None,
        host: str = "127.0.0.1",
        port: int = 0,
        shutdown_grace_seconds: float = 5.0,
    ) -> None:
        self.name = name
        self._registrations = list(registrations)
        self._host = host
        self._requested_port = port
        self._grace = shutdown_grace_seconds
        self._server = grpc.aio.server(
            interceptors=[*grpc_server_interceptors(), GuardInterceptor(verifier)],
            options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)],
        )
        self._health = health_aio.HealthServicer()
        self.port = 0

    @property
    def target(self) -> str:
        return f"{self._host}:{self.port}"

    async def start(self) -> int:
        for registration in self._registrations:
            registration.add_to_server(registration.servicer, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        names = [r.full_name for r in self._registrations]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        self.port = self._server.add_insecure_port(f"{self._host}:{self._requested_port}")
        await self._server.start()
        for service in ["", *names]:
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.info("grpc server started", extra={"fields": {"port": self.port, "server": self.name}})
        return self.port

    async def stop(self) -> None:
        """Report NOT_SERVING first so load balancers drain, then let in-flight RPCs finish."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self._grace)
        log.info("grpc server stopped", extra={"fields": {"server": self.name}})

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()


async def run_until_signal(resources: AbstractAsyncContextManager[Any]) -> None:
    """Enter the service's resources, wait for SIGINT/SIGTERM, exit them cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with resources:
        await stop.wait()


def run_service(name: str, resources: AbstractAsyncContextManager[Any], log_level: str = "INFO") -> None:
    """Entry point of `python -m services.<name>`: logs, tracing, serve until a signal."""
    from services.shared.logging import configure_logging
    from services.shared.telemetry import configure_tracing

    configure_logging(name, log_level)
    configure_tracing(name)
    asyncio.run(run_until_signal(resources))
