"""Password policy (ACC-04) and Argon2id hashing.

Policy, exactly as the terms state it: 8 to 25 characters with upper case, lower case,
and digits and/or special characters. On top of it (security checklist) a password is
refused when it is common or known from breaches: `data/common-passwords.txt` is checked
on the case-folded password, and on its base word when at most 4 trailing digits or
symbols decorate it ("Dragon2024" and "Soleil1!" are as weak as their listed words).

Hashing: Argon2id (argon2-cffi), m=19 MiB, t=2, p=1 by default (OWASP minimum, the
settings refuse less), 16-byte salt, 32-byte tag. Verification runs in a worker thread
(argon2-cffi releases the GIL) so one login never stalls the event loop. Unknown logins
verify against a dummy hash made with the same parameters, so they cost the same.
"""

from __future__ import annotations

import asyncio
import secrets
import string
from functools import lru_cache
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from services.shared.errors import InvalidArgument

PASSWORD_MIN, PASSWORD_MAX = 8, 25
BLOCKLIST_PATH = Path(__file__).resolve().parents[1] / "data" / "common-passwords.txt"
SPECIALS = "!#$%&()*+,-./:;<=>?@[]^_{|}~"


@lru_cache(maxsize=1)
def blocklist() -> frozenset[str]:
    lines = BLOCKLIST_PATH.read_text(encoding="utf-8").splitlines()
    return frozenset(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def base_word(password: str) -> str:
    return password.casefold().rstrip(string.digits + string.punctuation + " ")


def is_blocklisted(password: str) -> bool:
    folded = password.casefold()
    base = base_word(password)
    listed = blocklist()
    # A listed word with a short decoration ("Dragon1!", "Soleil2024") is as weak as the word.
    decorated = len(base) >= 4 and base in listed and len(folded) - len(base) <= 4
    return folded in listed or decorated


def policy_violation(password: str) -> str | None:
    """The reason a password is refused, or None when it is acceptable."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters"
    if any(not c.isprintable() for c in password):
        return "password must not contain control characters"
    has_upper = any(c.isupper() for c in password)
    has_lower = any(c.islower() for c in password)
    has_digit_or_special = any(c.isdigit() or not c.isalnum() for c in password)
    if not (has_upper and has_lower and has_digit_or_special):
        return "password needs upper case, lower case, and digits and/or special characters"
    if is_blocklisted(password):
        return "password is too common or known from a data breach; choose another"
    return None


def check_password_policy(password: str) -> None:
    reason = policy_violation(password)
    if reason is not None:
        raise InvalidArgument(reason)


def generate_compliant_password() -> str:
    """A random password that meets the policy (provisional credentials)."""
    alphabet = string.ascii_letters + string.digits + SPECIALS
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(20))
        if policy_violation(candidate) is None and any(c.isdigit() for c in candidate):
            return candidate


class PasswordHashing:
    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self.hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID
        )
        self._dummy_hash = self.hasher.hash(secrets.token_urlsafe(16))

    @property
    def parameters(self) -> str:
        p = self.hasher
        return f"argon2id m={p.memory_cost} KiB t={p.time_cost} p={p.parallelism}"

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hasher.hash, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored or self._dummy_hash, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, stored: str | None, password: str) -> bool:
        """False for a mismatch; with no stored hash, a dummy verify of the same cost."""
        return await asyncio.to_thread(self._verify, stored, password)
