"""Thin gRPC layer: check who calls, translate messages, call the domain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.identity.v1 import identity_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.identity.domain.accounts import AccountRegistry, AccountStatus, NewPatient, NewStaffMember
from services.identity.domain.sessions import SessionPolicy, validate_session
from services.identity.models import Account, IdempotencyRecord
from services.shared.auth import Role, TokenSigner
from services.shared.errors import InvalidArgument, PermissionDenied
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp

# Staff who may read any account's contact details for their task.
ACCOUNT_READERS = (Role.COORDINATOR, Role.DPO, Role.ADMINISTRATOR, Role.SERVICE)


def account_to_pb(account: Account) -> pb.Account:
    return pb.Account(
        account_id=account.account_id,
        role=to_pb_enum(pb.AccountRole, Role(account.role)),
        email=account.email,
        phone_number=account.phone_number,
        display_name=account.display_name,
        status=to_pb_enum(pb.AccountStatus, AccountStatus(account.status)),
        created_at=to_timestamp(account.created_at),
    )


class IdentityServicer(pb_grpc.IdentityServiceServicer):
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        registry: AccountRegistry,
        signer: TokenSigner,
        session_policy: SessionPolicy,
    ) -> None:
        self._sessions = sessions
        self._registry = registry
        self._signer = signer
        self._session_policy = session_policy

    async def SignUp(self, request: pb.SignUpRequest, context: Any) -> pb.SignUpResponse:
        # People sign up through the gateway, which calls with its own service identity.
        require_role(Role.SERVICE, services=frozenset({"gateway", "ops"}))
        new = NewPatient(
            email=request.email,
            phone_number=request.phone_number,
            password=request.password,
            declared_age=request.declared_age,
            locale=request.locale,
        )

        async def create(session: AsyncSession) -> str:
            return (await self._registry.sign_up_patient(session, new)).account_id

        account_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "SignUp", create)
        return pb.SignUpResponse(account_id=account_id)

    async def CreateStaffAccount(
        self, request: pb.CreateStaffAccountRequest, context: Any
    ) -> pb.CreateStaffAccountResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        role = from_pb_enum(pb.AccountRole, Role, request.role)
        if role is None:
            raise InvalidArgument("role is required")
        new = NewStaffMember(
            role=role,
            email=request.email,
            phone_number=request.phone_number,
            display_name=request.display_name,
            rpps_number=request.rpps_number,
        )

        async def create(session: AsyncSession) -> str:
            return (await self._registry.create_staff_member(session, new)).account_id

        account_id, _ = await run_once(
            self._sessions, IdempotencyRecord, request, "CreateStaffAccount", create
        )
        return pb.CreateStaffAccountResponse(account_id=account_id)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> pb.GetAccountResponse:
        principal = require_role(*Role)
        if principal.subject != request.account_id and principal.role not in ACCOUNT_READERS:
            raise PermissionDenied("an account can only be read by its owner or habilitated staff")
        async with self._sessions() as session:
            account = await self._registry.get(session, request.account_id)
            return pb.GetAccountResponse(account=account_to_pb(account))

    async def ValidateSession(
        self, request: pb.ValidateSessionRequest, context: Any
    ) -> pb.ValidateSessionResponse:
        require_role(Role.SERVICE, services=frozenset({"gateway"}))
        async with self._sessions.begin() as session:
            valid = await validate_session(session, request.session_token, self._session_policy)
            role = Role(valid.account.role)
            account_id = valid.account.account_id
        token, expires_at = self._signer.mint(account_id, role, valid.session_id)
        return pb.ValidateSessionResponse(
            account_id=account_id,
            role=to_pb_enum(pb.AccountRole, role),
            session_id=valid.session_id,
            internal_token=token,
            internal_token_expires_at=to_timestamp(datetime.fromtimestamp(expires_at, UTC)),
        )


def session_policy(idle_seconds: int, absolute_seconds: int) -> SessionPolicy:
    return SessionPolicy(timedelta(seconds=idle_seconds), timedelta(seconds=absolute_seconds))
