"""Thin gRPC layer of the billing service."""

from __future__ import annotations

from typing import Any

from secondopinion.billing.v1 import billing_pb2 as pb
from secondopinion.billing.v1 import billing_pb2_grpc as pb_grpc
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.billing.domain.partners import PartnerKind, create_partner, list_partners
from services.billing.models import IdempotencyRecord, Partner
from services.shared.auth import Role
from services.shared.errors import InvalidArgument
from services.shared.idempotency import run_once
from services.shared.principals import require_role
from services.shared.protoconv import from_pb_enum, to_pb_enum, to_timestamp


def partner_to_pb(partner: Partner) -> pb.Partner:
    return pb.Partner(
        partner_id=partner.partner_id,
        name=partner.name,
        kind=to_pb_enum(pb.PartnerKind, PartnerKind(partner.kind)),
        created_at=to_timestamp(partner.created_at),
    )


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    async def CreatePartner(self, request: pb.CreatePartnerRequest, context: Any) -> pb.CreatePartnerResponse:
        require_role(Role.ADMINISTRATOR, Role.SERVICE, services=frozenset({"ops"}))
        kind = from_pb_enum(pb.PartnerKind, PartnerKind, request.kind)
        if kind is None:
            raise InvalidArgument("kind is required")

        async def create(session: AsyncSession) -> str:
            return (await create_partner(session, request.name, kind)).partner_id

        partner_id, _ = await run_once(self._sessions, IdempotencyRecord, request, "CreatePartner", create)
        async with self._sessions() as session:
            partner = await session.get(Partner, partner_id)
            assert partner is not None
            return pb.CreatePartnerResponse(partner=partner_to_pb(partner))

    async def ListPartners(self, request: pb.ListPartnersRequest, context: Any) -> pb.ListPartnersResponse:
        require_role(Role.ADMINISTRATOR, Role.COORDINATOR, Role.SERVICE)
        async with self._sessions() as session:
            partners, next_token = await list_partners(session, request.page_size, request.page_token)
            return pb.ListPartnersResponse(
                partners=[partner_to_pb(p) for p in partners], next_page_token=next_token
            )
