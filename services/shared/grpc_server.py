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

# Probes and tooling that must work without a token; they expose no data.
UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


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


class _Guard:
    """Wraps every handler: verify the caller's token, map errors, log the outcome."""

    def __init__(self, verifier: TokenVerifier | None, authenticate: bool) -> None:
        self._verifier = verifier
        self._authenticate = authenticate

    async def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        if not self._authenticate:
            return None
        token = bearer_token(context.invocation_metadata())
        if not token or self._verifier is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "an internal identity token is required")
        try:
            assert self._verifier is not None
            return self._verifier.verify(token)
        except InvalidTokenError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"invalid internal identity token ({exc})")
        raise AssertionError("unreachable")

    async def _fail(self, context: grpc.aio.ServicerContext[Any, Any], method: str, exc: Exception) -> None:
        if isinstance(exc, ServiceError):
            log.info("rpc refused", extra={"fields": {"method": method, "code": exc.status.name}})
            await context.abort(exc.status, exc.message)
        if isinstance(exc, NotImplementedError):
            # The generated base class's answer for an RPC a service does not implement yet:
            # callers (workflows) must see UNIMPLEMENTED, not a retryable INTERNAL.
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not implemented")
        log.error("rpc failed", exc_info=exc, extra={"fields": {"method": method}})
        await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    def unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            principal = await self._principal(context)
            token = current_principal.set(principal)
            started = time.perf_counter()
            try:
                return await behavior(request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await self._fail(context, method, exc)
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
            return grpc.stream_unary_rpc_method_handler(guard.unary(method, h.stream_unary), **kwargs)
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
