"""Second factors behind one interface (ACC-05, ACC-12).

`SecondFactor.verify` answers whether a code is accepted for an account and a challenge,
and consumes it atomically (a code is accepted once, even under concurrent calls). SMS
codes, TOTP (pyotp) and recovery codes implement it; an OpenID Connect provider for
health professionals (Pro Santé Connect) can be added as one more implementation whose
`verify` checks an authorization code instead of a typed one.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import pyotp
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.identity.domain.secrets import CodeKeys, new_recovery_code, normalize_recovery_code
from services.identity.models import Account, Challenge, RecoveryCode, TotpFactor
from services.shared.db import utcnow
from services.shared.errors import InvalidArgument

TOTP_STEP_SECONDS = 30
MAX_CODE_INPUT = 32


class FactorKind(StrEnum):
    SMS_CODE = "SMS_CODE"
    TOTP = "TOTP"
    RECOVERY_CODE = "RECOVERY_CODE"


def check_code_format(kind: FactorKind, code: str) -> str:
    code = code.strip()
    if kind is FactorKind.RECOVERY_CODE:
        normalized = normalize_recovery_code(code)
        if not 1 <= len(code) <= MAX_CODE_INPUT or len(normalized) != 10 or not normalized.isalnum():
            raise InvalidArgument("a recovery code has 10 letters and digits (xxxxx-xxxxx)")
        return normalized
    if len(code) != 6 or not code.isdigit():
        raise InvalidArgument("the code has exactly 6 digits")
    return code


class SecondFactor(Protocol):
    kind: FactorKind

    async def verify(
        self, session: AsyncSession, account: Account, challenge: Challenge | None, code: str
    ) -> bool:
        """True when the code is accepted; the code is consumed in the caller's transaction."""
        ...


class SmsCodeFactor:
    kind = FactorKind.SMS_CODE

    def __init__(self, keys: CodeKeys) -> None:
        self._keys = keys

    async def verify(
        self, session: AsyncSession, account: Account, challenge: Challenge | None, code: str
    ) -> bool:
        if challenge is None or challenge.code_hash is None:
            return False
        now = utcnow()
        if challenge.code_expires_at is None or challenge.code_expires_at <= now:
            return False
        if not self._keys.matches(challenge.code_hash, challenge.challenge_id, code):
            return False
        # Single use, even for two concurrent requests carrying the same code.
        result = await session.execute(
            update(Challenge)
            .where(
                Challenge.challenge_id == challenge.challenge_id, Challenge.code_hash == challenge.code_hash
            )
            .values(code_hash=None)
            .execution_options(synchronize_session=False)
        )
        won = int(getattr(result, "rowcount", 0) or 0) == 1
        if won:
            challenge.code_hash = None
        return won


async def active_totp(session: AsyncSession, account_id: str) -> TotpFactor | None:
    return await session.scalar(
        select(TotpFactor).where(TotpFactor.account_id == account_id, TotpFactor.status == "active")
    )


def matching_step(secret: str, code: str, at: float | None = None) -> int | None:
    """The time step whose code matches (current one, or one step either side)."""
    totp = pyotp.TOTP(secret, interval=TOTP_STEP_SECONDS)
    now = time.time() if at is None else at
    for offset in (0, -1, 1):
        moment = now + offset * TOTP_STEP_SECONDS
        if pyotp.utils.strings_equal(totp.at(moment), code):
            return int(moment // TOTP_STEP_SECONDS)
    return None


class TotpFactorCheck:
    kind = FactorKind.TOTP

    def __init__(self, keys: CodeKeys) -> None:
        self._keys = keys

    async def verify(
        self, session: AsyncSession, account: Account, challenge: Challenge | None, code: str
    ) -> bool:
        factor = await active_totp(session, account.account_id)
        if factor is None:
            return False
        return await accept_totp(session, self._keys, factor, code)


async def accept_totp(session: AsyncSession, keys: CodeKeys, factor: TotpFactor, code: str) -> bool:
    secret = keys.decrypt_totp_secret(factor.secret_encrypted, factor.account_id)
    step = matching_step(secret, code)
    if step is None:
        return False
    # A TOTP code is accepted once: the step must be newer than the last one accepted.
    result = await session.execute(
        update(TotpFactor)
        .where(TotpFactor.factor_id == factor.factor_id, TotpFactor.last_used_step < step)
        .values(last_used_step=step)
        .execution_options(synchronize_session=False)
    )
    won = int(getattr(result, "rowcount", 0) or 0) == 1
    if won:
        factor.last_used_step = step
    return won


class RecoveryCodeFactor:
    kind = FactorKind.RECOVERY_CODE

    def __init__(self, keys: CodeKeys) -> None:
        self._keys = keys

    async def verify(
        self, session: AsyncSession, account: Account, challenge: Challenge | None, code: str
    ) -> bool:
        digest = self._keys.code_hash(f"recovery:{account.account_id}", normalize_recovery_code(code))
        result = await session.execute(
            update(RecoveryCode)
            .where(
                RecoveryCode.account_id == account.account_id,
                RecoveryCode.code_hash == digest,
                RecoveryCode.used_at.is_(None),
                RecoveryCode.revoked_at.is_(None),
            )
            .values(used_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return int(getattr(result, "rowcount", 0) or 0) == 1


async def issue_recovery_codes(
    session: AsyncSession, keys: CodeKeys, account_id: str, count: int
) -> list[str]:
    """New single-use codes (shown once, stored hashed); earlier ones stop working."""
    now: datetime = utcnow()
    await session.execute(
        update(RecoveryCode)
        .where(RecoveryCode.account_id == account_id, RecoveryCode.revoked_at.is_(None))
        .values(revoked_at=now)
        .execution_options(synchronize_session=False)
    )
    codes = [new_recovery_code() for _ in range(count)]
    for code in codes:
        session.add(
            RecoveryCode(
                code_id=str(uuid.uuid4()),
                account_id=account_id,
                code_hash=keys.code_hash(f"recovery:{account_id}", normalize_recovery_code(code)),
                created_at=now,
                used_at=None,
                revoked_at=None,
            )
        )
    await session.flush()
    return codes


def factors(keys: CodeKeys) -> dict[FactorKind, SecondFactor]:
    return {
        FactorKind.SMS_CODE: SmsCodeFactor(keys),
        FactorKind.TOTP: TotpFactorCheck(keys),
        FactorKind.RECOVERY_CODE: RecoveryCodeFactor(keys),
    }
