"""Thin gRPC layer of the notifications service.

Delivery (outbox, channels, templates, rate limits) is issue 4; until then every RPC
answers UNIMPLEMENTED through the generated base class, which callers handle.
"""

from __future__ import annotations

from secondopinion.notifications.v1 import notifications_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class NotificationsServicer(pb_grpc.NotificationsServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
