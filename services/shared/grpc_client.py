"""Outgoing gRPC channels: tracing, the caller's internal token, a deadline on every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from services.shared.auth import outgoing_token
from services.shared.telemetry import grpc_client_interceptors

TokenProvider = Callable[[], str | None]


def request_scoped_token() -> str | None:
    """The token of the person being served (set by the gateway per request)."""
    return outgoing_token.get()


class _CallDecorator:
    def __init__(self, token_provider: TokenProvider, default_timeout: float) -> None:
        self._token_provider = token_provider
        self._default_timeout = default_timeout

    def decorate(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        # A token passed explicitly on the call (a person's, from the gateway) wins over
        # the channel's default identity.
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        if not any(key == "authorization" for key, _ in metadata):
            token = self._token_provider()
            if token:
                metadata.add("authorization", f"Bearer {token}")
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        return grpc.aio.ClientCallDetails(
            details.method, timeout, metadata, details.credentials, details.wait_for_ready
        )


class _UnaryUnary(_CallDecorator, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.decorate(client_call_details), request)


class _UnaryStream(_CallDecorator, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self.decorate(client_call_details), request)


class _StreamUnary(_CallDecorator, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.decorate(client_call_details), request_iterator)


class _StreamStream(_CallDecorator, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self.decorate(client_call_details), request_iterator)


def open_channel(
    target: str, token_provider: TokenProvider, default_timeout: float = 5.0
) -> grpc.aio.Channel:
    """A channel whose every call carries a token and a deadline, traced.

    Loopback/private network only: transport security between services is the
    deployment's job (mesh mTLS); the signed token is what proves who is calling.
    """
    interceptors: list[grpc.aio.ClientInterceptor] = [
        *grpc_client_interceptors(),
        _UnaryUnary(token_provider, default_timeout),
        _UnaryStream(token_provider, default_timeout),
        _StreamUnary(token_provider, default_timeout),
        _StreamStream(token_provider, default_timeout),
    ]
    return grpc.aio.insecure_channel(target, interceptors=interceptors)
