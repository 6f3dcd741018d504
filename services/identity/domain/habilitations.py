"""Habilitations: permissions granted to staff on top of their role (SEC-05, CASE-14).

- Who grants: administrators, and the provisioning tool (service `ops`), never the DPO
  and never oneself. The privacy policy (PC §4, §5, §10) gives the DPO oversight of
  processing and of people's rights, not the running of access; the administrators run
  accounts (they create staff accounts, ACC-12). Separation of duties: the DPO audits the
  grants in the evidence chain (ListEvidenceRecords, VerifyEvidenceChain).
- Who may hold what: health data and the personal-assistant mandate go to coordinators
  (the case staff); archive access (RET-07) and rights-request handling go to
  coordinators and the DPO. Patients, doctors, partners and administrators hold none
  (FAILED_PRECONDITION): doctors reach a case through their assignment, never a grant.
- Each grant and revocation is a row of `habilitations` (the history) and a record of the
  hash-chained evidence log, in the same transaction.
- Identity puts the active ones in every internal token it mints for the account: a
  grant or a revocation takes effect at the account's next token (at most the token
  lifetime, 5 minutes, after the change).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain import evidence
from services.identity.domain.accounts import AccountStatus, get_account
from services.identity.domain.evidence import AuthContext, EvidenceKind
from services.identity.models import HabilitationGrant
from services.shared.auth import Habilitation, Principal, Role
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, PermissionDenied

MAX_REASON = 500
KNOWN = frozenset(h.value for h in Habilitation)
# Which roles may hold which habilitation.
HOLDERS: dict[Habilitation, frozenset[Role]] = {
    Habilitation.HEALTH_DATA: frozenset({Role.COORDINATOR}),
    Habilitation.PERSONAL_ASSISTANT: frozenset({Role.COORDINATOR}),
    Habilitation.ARCHIVE_ACCESS: frozenset({Role.COORDINATOR, Role.DPO}),
    Habilitation.RIGHTS_REQUESTS: frozenset({Role.COORDINATOR, Role.DPO}),
}
# Who may grant and revoke: administrators, and the provisioning tool.
GRANTORS = (Role.ADMINISTRATOR, Role.SERVICE)
GRANTING_SERVICES = frozenset({"ops"})


def archive_reader(principal: Principal) -> bool:
    """RET-07: the DPO, or a coordinator holding the archive-access habilitation (as the
    dossier and billing decide from the same token claim)."""
    return principal.role is Role.DPO or (
        principal.role is Role.COORDINATOR and principal.holds(Habilitation.ARCHIVE_ACCESS)
    )


def rights_request_handler(principal: Principal) -> bool:
    """GDPR-07/08: the DPO and administrators, or a coordinator holding the
    rights-requests habilitation, record and answer people's rights requests."""
    return principal.role in (Role.DPO, Role.ADMINISTRATOR) or (
        principal.role is Role.COORDINATOR and principal.holds(Habilitation.RIGHTS_REQUESTS)
    )


def clean_reason(reason: str, required: bool) -> str:
    text = reason.strip()
    if required and not text:
        raise InvalidArgument("reason is required (why the habilitation is granted)")
    if len(text) > MAX_REASON:
        raise InvalidArgument(f"reason is at most {MAX_REASON} characters")
    return text


# Roles that may hold at least one habilitation: only their tokens need the lookup.
MAY_HOLD_ANY = frozenset().union(*HOLDERS.values())


async def active(session: AsyncSession, account_id: str, role: Role | None = None) -> frozenset[Habilitation]:
    """The account's unrevoked habilitations; given the role, one a role may hold (a grant
    left from a former role confers nothing, and a patient's session skips the query)."""
    if role is not None and role not in MAY_HOLD_ANY:
        return frozenset()
    kinds = await session.scalars(
        select(HabilitationGrant.kind).where(
            HabilitationGrant.account_id == account_id, HabilitationGrant.revoked_at.is_(None)
        )
    )
    held = frozenset(Habilitation(kind) for kind in kinds if kind in KNOWN)
    return held if role is None else frozenset(h for h in held if role in HOLDERS[h])


async def _open_grant(session: AsyncSession, account_id: str, kind: Habilitation) -> HabilitationGrant | None:
    return await session.scalar(
        select(HabilitationGrant)
        .where(
            HabilitationGrant.account_id == account_id,
            HabilitationGrant.kind == kind.value,
            HabilitationGrant.revoked_at.is_(None),
        )
        .with_for_update()
    )


async def grant(
    session: AsyncSession,
    account_id: str,
    kind: Habilitation,
    reason: str,
    granted_by: str,
    auth: AuthContext,
) -> bool:
    """Grants `kind`; False when the account already held it (nothing recorded then)."""
    text = clean_reason(reason, required=True)
    if account_id == granted_by:
        raise PermissionDenied("no one grants a habilitation to themselves")
    account = await get_account(session, account_id, for_update=True)
    if account.status == AccountStatus.CLOSED.value:
        raise FailedPrecondition("the account is closed")
    if Role(account.role) not in HOLDERS[kind]:
        raise FailedPrecondition(f"the {kind.value} habilitation is not for this account's role")
    if await _open_grant(session, account_id, kind) is not None:
        return False
    session.add(
        HabilitationGrant(
            habilitation_id=str(uuid.uuid4()),
            account_id=account_id,
            kind=kind.value,
            reason=text,
            granted_by=granted_by,
            granted_at=utcnow(),
            revoked_at=None,
            revoked_by="",
            revocation_reason="",
        )
    )
    await evidence.append(
        session, account_id, EvidenceKind.HABILITATION_GRANTED, auth, habilitation=kind.value
    )
    return True


async def revoke(
    session: AsyncSession,
    account_id: str,
    kind: Habilitation,
    reason: str,
    revoked_by: str,
    auth: AuthContext,
) -> bool:
    """Revokes `kind`; False when the account did not hold it (nothing recorded then)."""
    text = clean_reason(reason, required=False)
    await get_account(session, account_id, for_update=True)
    held = await _open_grant(session, account_id, kind)
    if held is None:
        return False
    held.revoked_at = utcnow()
    held.revoked_by = revoked_by
    held.revocation_reason = text
    await evidence.append(
        session, account_id, EvidenceKind.HABILITATION_REVOKED, auth, habilitation=kind.value
    )
    return True


async def grant_all(
    session: AsyncSession,
    account_id: str,
    kinds: Iterable[Habilitation],
    reason: str,
    granted_by: str,
    auth: AuthContext,
) -> None:
    for kind in dict.fromkeys(kinds):
        await grant(session, account_id, kind, reason, granted_by, auth)


async def history(session: AsyncSession, account_id: str) -> list[HabilitationGrant]:
    return list(
        await session.scalars(
            select(HabilitationGrant)
            .where(HabilitationGrant.account_id == account_id)
            .order_by(HabilitationGrant.granted_at, HabilitationGrant.habilitation_id)
        )
    )
