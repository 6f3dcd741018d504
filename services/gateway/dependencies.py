"""FastAPI dependencies: the service clients and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from secondopinion.identity.v1 import identity_pb2

from services.gateway.clients import Caller, ServiceClients


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
    from services.gateway.web.page import caller_from_session

    return caller_from_session(session)


CallerDep = Annotated[Caller, Depends(get_caller)]
