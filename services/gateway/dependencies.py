"""FastAPI dependencies: the service clients and the authenticated caller."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from secondopinion.identity.v1 import identity_pb2

from services.gateway.clients import Caller, ServiceClients
from services.shared.protoconv import pb_enum_to_code


def ts_or_none(message: Any, field: str) -> datetime | None:
    """A protobuf Timestamp field as an aware datetime, None when unset."""
    if not message.HasField(field):
        return None
    value: datetime = getattr(message, field).ToDatetime().replace(tzinfo=UTC)
    return value


def caller_from_session(session: identity_pb2.ValidateSessionResponse) -> Caller:
    return Caller(
        account_id=session.account_id,
        role=pb_enum_to_code(identity_pb2.AccountRole, session.role),
        session_id=session.session_id,
        internal_token=session.internal_token,
        habilitations=tuple(pb_enum_to_code(identity_pb2.Habilitation, h) for h in session.habilitations),
        step_up_valid_until=ts_or_none(session, "step_up_valid_until"),
        must_enrol_totp=session.must_enrol_totp,
        must_change_password=session.must_change_password,
    )


def get_clients(request: Request) -> ServiceClients:
    clients: ServiceClients = request.app.state.clients
    return clients


ClientsDep = Annotated[ServiceClients, Depends(get_clients)]


def _session_token(request: Request) -> str:
    cookie = request.cookies.get(request.app.state.settings.session_cookie_name, "")
    if cookie:
        return cookie
    header = request.headers.get("authorization", "")
    return header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""


async def get_caller(request: Request, clients: ClientsDep) -> Caller:
    token = _session_token(request)
    if not token:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    session = await clients.identity.ValidateSession(
        identity_pb2.ValidateSessionRequest(session_token=token), metadata=clients.as_gateway()
    )
    return caller_from_session(session)


CallerDep = Annotated[Caller, Depends(get_caller)]
