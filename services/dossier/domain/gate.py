"""Every access to a case goes through the gate: access rules, then the access log (in the
same transaction as a write; through the group commit, before any data leaves, for a
read), and a logged refusal when the rules say no."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain import accesslog
from services.dossier.domain.access import AccessPolicy, AccessRefused, CaseAccess, Need, resolve
from services.dossier.domain.accesslog import Action, ObjectKind, PendingEntry, Purpose, ReadLog
from services.dossier.domain.subjectkeys import SubjectKeys
from services.dossier.models import IdempotencyRecord
from services.shared.auth import Principal, Role
from services.shared.errors import FailedPrecondition
from services.shared.idempotency import run_once

log = logging.getLogger(__name__)

# The purpose a refused caller could have claimed; partners and others have none.
ATTEMPT_PURPOSE = {
    Role.PATIENT: Purpose.OWN_SPACE,
    Role.REFERENT_DOCTOR: Purpose.CASE_REVIEW,
    Role.COORDINATOR: Purpose.COORDINATION,
}


class ProcessingRestricted(FailedPrecondition):
    """GDPR-04: the file is kept, readable by the person, and not otherwise processed."""

    def __init__(self) -> None:
        super().__init__("processing of this medical file is restricted at the person's request")


class Reads:
    """The read entries of an access, logged together once the reads are done."""

    def __init__(self) -> None:
        self.entries: list[PendingEntry] = []

    def add(self, access: CaseAccess, kind: ObjectKind, object_id: str) -> None:
        self.entries.append(
            accesslog.pending(
                actor=access.principal, action=Action.READ, object_kind=kind, object_id=object_id,
                case=access.case, purpose=access.purpose,
            )
        )  # fmt: skip


class Gate:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], policy: AccessPolicy, keys: SubjectKeys
    ) -> None:
        self.sessions = sessions
        self.policy = policy
        self.keys = keys
        self.read_log = ReadLog(sessions)

    async def resolve(
        self, session: AsyncSession, principal: Principal, case_id: str, need: Need
    ) -> CaseAccess:
        """The access rules, the restriction, then the subject's key for this request."""
        access = await resolve(session, self.policy, principal, case_id, need)
        if access.case.restricted_at is not None and not (need is Need.READ and access.filer_side):
            raise ProcessingRestricted()
        await self.keys.load(session, access.case.filer_account_id)
        return access

    async def log_refusal(self, principal: Principal, refused: AccessRefused) -> None:
        """A refused attempt on an existing case is evidence too (best effort: the caller
        is refused whatever happens here)."""
        if refused.case is None:
            return
        try:
            async with self.sessions.begin() as session:
                await accesslog.append(
                    session,
                    actor=principal,
                    action=Action.REFUSED,
                    object_kind=ObjectKind.CASE,
                    object_id=refused.case.case_id,
                    case=refused.case,
                    purpose=ATTEMPT_PURPOSE.get(principal.role, Purpose.NONE_ESTABLISHED),
                )
        except Exception:
            log.warning("refusal not logged", extra={"fields": {"case_id": refused.case.case_id}})
        log.info(
            "access refused",
            extra={"fields": {"case_id": refused.case.case_id, "role": principal.role.value}},
        )

    @asynccontextmanager
    async def case(
        self, principal: Principal, case_id: str, need: Need
    ) -> AsyncIterator[tuple[AsyncSession, CaseAccess]]:
        """One transaction with the caller's access to the case; the body logs what it did.
        The transaction commits (log included) before the caller returns any data."""
        try:
            async with self.sessions.begin() as session:
                access = await self.resolve(session, principal, case_id, need)
                yield session, access
        except AccessRefused as refused:
            await self.log_refusal(principal, refused)
            raise

    @asynccontextmanager
    async def read(
        self, principal: Principal, case_id: str
    ) -> AsyncIterator[tuple[AsyncSession, CaseAccess, Reads]]:
        """A read of the case: the rules and the reads in one transaction that writes
        nothing, then the body's read entries through the group commit. The caller returns
        its data after this block, so only once they are committed (no log, no data)."""
        reads = Reads()
        try:
            async with self.sessions.begin() as session:
                access = await self.resolve(session, principal, case_id, Need.READ)
                yield session, access, reads
        except AccessRefused as refused:
            await self.log_refusal(principal, refused)
            raise
        await self.log_reads(reads)

    async def log_reads(self, reads: Reads) -> None:
        """Append read entries (group commit); AccessLogUnavailable when they cannot be."""
        await self.read_log.append(reads.entries)

    async def check(self, principal: Principal, case_id: str, need: Need) -> str:
        """Refuse early (before reading a stream, for instance); logs nothing on success.
        Returns the case's subject (its filer), whose key then exists and is loaded."""
        try:
            async with self.sessions() as session:
                access = await self.resolve(session, principal, case_id, need)
                subject = access.case.filer_account_id
        except AccessRefused as refused:
            await self.log_refusal(principal, refused)
            raise
        if need is not Need.READ:
            await self.keys.ensure(subject)
        return subject

    async def write(
        self,
        principal: Principal,
        request: Message,
        operation: str,
        case_id: str,
        need: Need,
        action: Callable[[AsyncSession, CaseAccess], Awaitable[str]],
    ) -> tuple[str, bool]:
        """An idempotent write: access, the change and its log entry in one transaction."""

        async def run(session: AsyncSession) -> str:
            access = await self.resolve(session, principal, case_id, need)
            return await action(session, access)

        # Access is checked on replays too: a retry never hands out what is no longer allowed.
        await self.check(principal, case_id, need)
        try:
            return await run_once(
                self.sessions, IdempotencyRecord, request, f"{operation}:{principal.subject}", run
            )
        except AccessRefused as refused:
            await self.log_refusal(principal, refused)
            raise


async def record(
    session: AsyncSession, access: CaseAccess, action: Action, kind: ObjectKind, object_id: str
) -> None:
    await accesslog.append(
        session,
        actor=access.principal,
        action=action,
        object_kind=kind,
        object_id=object_id,
        case=access.case,
        purpose=access.purpose,
    )
