"""Channels and stubs to the services, opened in the lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
from secondopinion.billing.v1 import billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2_grpc
from temporalio.client import Client

from services.gateway.settings import GatewaySettings
from services.shared.auth import ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from services.shared.settings import InternalAuthSettings

GATEWAY_ISSUER = "gateway"
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


@dataclass(frozen=True, slots=True)
class Caller:
    """A person authenticated by their session; `metadata` carries their internal token."""

    account_id: str
    role: str
    session_id: str
    internal_token: str
    habilitations: tuple[str, ...] = ()
    # End of the session's step-up window (ACC-06); None when no fresh code was given.
    step_up_valid_until: datetime | None = None
    must_enrol_totp: bool = False
    # ACC-10: a breach flag or provisional credentials; the next page is the password change.
    must_change_password: bool = False

    @property
    def metadata(self) -> Metadata:
        return bearer(self.internal_token)

    @property
    def stepped_up(self) -> bool:
        return self.step_up_valid_until is not None and self.step_up_valid_until > datetime.now(UTC)


class ServiceClients:
    """Channels carry no default identity: every call names who it is for (fails closed)."""

    def __init__(
        self,
        settings: GatewaySettings,
        auth: InternalAuthSettings,
        temporal: Client | None,
        temporal_task_queue: str = "cases",
    ) -> None:
        timeout = settings.service_call_timeout_seconds
        self._own_tokens = ServiceTokenProvider(
            TokenSigner.from_keys_dir(auth.keys_dir, GATEWAY_ISSUER, auth.token_ttl_seconds)
        )
        # Uploads and downloads stream for longer than a plain call.
        self._channels: list[grpc.aio.Channel] = [
            open_channel(target, lambda: None, timeout)
            for target in (
                settings.identity_target,
                settings.dossier_target,
                settings.matching_target,
                settings.billing_target,
            )
        ]
        self.transfer_timeout = settings.transfer_timeout_seconds
        self.identity = identity_pb2_grpc.IdentityServiceStub(self._channels[0])
        self.dossier = dossier_pb2_grpc.DossierServiceStub(self._channels[1])
        self.matching = matching_pb2_grpc.MatchingServiceStub(self._channels[2])
        self.billing = billing_pb2_grpc.BillingServiceStub(self._channels[3])
        self.temporal = temporal
        self.temporal_task_queue = temporal_task_queue

    def as_gateway(self) -> Metadata:
        """The gateway's own identity, for the few calls made before a person is known."""
        return bearer(self._own_tokens())

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
