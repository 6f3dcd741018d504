"""Per-subject data keys (crypto-shredding): created once per subject in their own
transaction, wrapped by the master key, unwrapped into the current request's context when
an access to the subject's data is granted, destroyed at purge time."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain.crypto import (
    Keyring,
    MasterKeyRef,
    forget_subject_key,
    new_data_key,
    use_subject_key,
)
from services.dossier.models import Document, SubjectKey
from services.shared.db import utcnow


def _object_id(subject_id: str) -> str:
    return f"subject:{subject_id}"


class SubjectKeys:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], keyring: Keyring) -> None:
        self.sessions = sessions
        # Replaced together with the vault's keyring when master keys are reloaded.
        self.keyring = keyring

    async def ensure(self, subject_id: str) -> None:
        """The subject has a committed key (made now if needed), loaded for this request.
        Its own transaction: a key is never lost with a rolled-back write."""
        if not subject_id:
            return
        async with self.sessions() as session:
            if await self.load(session, subject_id):
                return
        ref, wrapped = self.keyring.wrap(new_data_key(), _object_id(subject_id))
        try:
            async with self.sessions.begin() as session:
                session.add(
                    SubjectKey(
                        subject_id=subject_id,
                        wrapped_key=wrapped,
                        master_key_id=ref.key_id,
                        master_key_version=ref.version,
                        created_at=utcnow(),
                    )
                )
        except IntegrityError:
            pass  # a concurrent request made it first: use theirs
        async with self.sessions() as session:
            await self.load(session, subject_id)

    async def load(self, session: AsyncSession, subject_id: str) -> bool:
        """Unwrap the subject's key into the current request's context; False when the
        subject has none (legacy data under the master key, or purged)."""
        row = await session.get(SubjectKey, subject_id) if subject_id else None
        if row is None:
            forget_subject_key(subject_id)
            return False
        key = self.keyring.unwrap(
            row.wrapped_key, _object_id(subject_id), MasterKeyRef(row.master_key_id, row.master_key_version)
        )
        use_subject_key(subject_id, key)
        return True

    @staticmethod
    async def destroy(session: AsyncSession, subject_id: str) -> bool:
        """Crypto-shredding: the only copy of the subject's key goes."""
        result = await session.execute(delete(SubjectKey).where(SubjectKey.subject_id == subject_id))
        forget_subject_key(subject_id)
        return bool(getattr(result, "rowcount", 0))

    async def rewrap(self, batch: int = 200) -> int:
        """Master-key rotation: re-wrap subject keys not under the active master key (the
        documents they wrap record the new master key version; objects are untouched)."""
        active = self.keyring.active
        count = 0
        while True:
            async with self.sessions.begin() as session:
                rows = (
                    await session.scalars(
                        select(SubjectKey)
                        .where(
                            (SubjectKey.master_key_id != active.key_id)
                            | (SubjectKey.master_key_version != active.version)
                        )
                        .limit(batch)
                    )
                ).all()
                for row in rows:
                    ref, wrapped = self.keyring.rewrap(
                        row.wrapped_key,
                        _object_id(row.subject_id),
                        MasterKeyRef(row.master_key_id, row.master_key_version),
                    )
                    row.wrapped_key, row.master_key_id, row.master_key_version = (
                        wrapped,
                        ref.key_id,
                        ref.version,
                    )
                    await session.execute(
                        update(Document)
                        .where(Document.subject_key_id == row.subject_id)
                        .values(master_key_id=ref.key_id, master_key_version=ref.version)
                    )
                count += len(rows)
            if len(rows) < batch:
                return count
