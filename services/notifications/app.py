"""Resources of the notifications service, opened and closed together: the database, the
delivery channels, the gRPC server and the delivery loop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta

from secondopinion.notifications.v1 import notifications_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.notifications.domain.catalog import Channel
from services.notifications.domain.channels import (
    DeliveryChannel,
    DevelopmentStoreChannel,
    HttpSmsChannel,
    SmtpEmailChannel,
)
from services.notifications.domain.delivery import Dispatcher, LoopSettings, delivering
from services.notifications.domain.outbox import NO_GATE, RetryPolicy, WriteGate
from services.notifications.servicer import NotificationsServicer
from services.notifications.settings import EmailTransport, NotificationsSettings, SmsTransport
from services.shared.db import is_sqlite
from services.shared.grpc_server import GrpcServer, ServiceRegistration
from services.shared.service import serving
from services.shared.settings import InternalAuthSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["NotificationsService"].full_name


def build_channels(
    settings: NotificationsSettings, sessions: async_sessionmaker[AsyncSession], gate: WriteGate = NO_GATE
) -> dict[Channel, DeliveryChannel]:
    sms: DeliveryChannel = (
        HttpSmsChannel(settings)
        if settings.sms_transport is SmsTransport.HTTP
        else DevelopmentStoreChannel(sessions, gate)
    )
    email: DeliveryChannel = (
        SmtpEmailChannel(settings)
        if settings.email_transport is EmailTransport.SMTP
        else DevelopmentStoreChannel(sessions, gate)
    )
    return {Channel.SMS: sms, Channel.EMAIL: email}


def build_dispatcher(
    settings: NotificationsSettings,
    sessions: async_sessionmaker[AsyncSession],
    channels: dict[Channel, DeliveryChannel],
    gate: WriteGate = NO_GATE,
) -> Dispatcher:
    return Dispatcher(
        sessions,
        channels,
        RetryPolicy(
            max_attempts=settings.max_attempts,
            base=timedelta(seconds=settings.retry_base_seconds),
            cap=timedelta(seconds=settings.retry_max_seconds),
        ),
        LoopSettings(
            concurrency=settings.delivery_concurrency,
            batch_size=settings.delivery_batch_size,
            poll_seconds=settings.delivery_poll_seconds,
            lease=timedelta(seconds=settings.delivery_lease_seconds),
            skip_locked=not is_sqlite(settings.effective_database_url("notifications")),
            keep_development_copies=settings.is_development,
        ),
        gate,
    )


@asynccontextmanager
async def running(
    settings: NotificationsSettings, auth: InternalAuthSettings | None = None
) -> AsyncIterator[GrpcServer]:
    built: dict[str, Dispatcher] = {}
    servicers: list[NotificationsServicer] = []
    channels: dict[Channel, DeliveryChannel] = {}

    def registrations(sessions: async_sessionmaker[AsyncSession]) -> list[ServiceRegistration]:
        gate = WriteGate(serialise=is_sqlite(settings.effective_database_url("notifications")))
        channels.update(build_channels(settings, sessions, gate))
        dispatcher = build_dispatcher(settings, sessions, channels, gate)
        built["dispatcher"] = dispatcher
        servicer = NotificationsServicer(sessions, settings, on_queued=dispatcher.wake, gate=gate)
        servicers.append(servicer)
        return [
            ServiceRegistration(SERVICE_NAME, pb_grpc.add_NotificationsServiceServicer_to_server, servicer)
        ]

    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            serving("notifications", settings, auth or InternalAuthSettings(), registrations)
        )
        # On exit, after the delivery loop: the server stops (in-flight calls finish, their
        # messages committed by the send group commit), then the group commit ends (anything
        # still queued is answered UNAVAILABLE), then `serving` closes the database (its
        # second stop of the server does nothing).
        for servicer in servicers:
            stack.push_async_callback(servicer.aclose, settings.shutdown_grace_seconds)
        stack.push_async_callback(server.stop)
        for channel in {id(c): c for c in channels.values()}.values():
            stack.push_async_callback(channel.aclose)
        await stack.enter_async_context(delivering(built["dispatcher"], settings.shutdown_grace_seconds))
        yield server
