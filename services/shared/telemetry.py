"""OpenTelemetry tracing: one provider per process, exporter chosen in settings."""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import aio_client_interceptors, aio_server_interceptor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

from services.shared.settings import TelemetrySettings, TraceExporter


def configure_tracing(service: str, settings: TelemetrySettings | None = None) -> TracerProvider:
    """Install the global tracer provider once; later calls reuse it.

    Tests install their own provider with an in-memory exporter before starting servers,
    which is why an existing SDK provider is kept rather than replaced.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    settings = settings or TelemetrySettings()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    exporter: SpanExporter | None = None
    if settings.exporter is TraceExporter.CONSOLE:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif settings.exporter is TraceExporter.OTLP:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider


def grpc_server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:
    return [aio_server_interceptor()]  # type: ignore[no-untyped-call]


def grpc_client_interceptors() -> Sequence[grpc.aio.ClientInterceptor]:
    return list(aio_client_interceptors())  # type: ignore[no-untyped-call]
