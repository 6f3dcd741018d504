"""Browser-facing protections: CSRF tokens, rate limits with Retry-After, cookie flags."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections import deque
from dataclasses import dataclass

CSRF_COOKIE = "so_csrf"
CSRF_FIELD = "csrf_token"


class CsrfProtection:
    """Signed double-submit token: a random value in an HttpOnly cookie, its HMAC in every
    form. A forged cross-site post has neither; a value planted by a sibling domain lacks
    a valid signature. The Origin header, when present, must be ours as well."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    @staticmethod
    def new_cookie_value() -> str:
        return secrets.token_urlsafe(32)

    def form_token(self, cookie_value: str) -> str:
        return hmac.new(self._secret, cookie_value.encode(), hashlib.sha256).hexdigest()

    def is_valid(self, cookie_value: str | None, submitted: str | None) -> bool:
        if not cookie_value or not submitted:
            return False
        return hmac.compare_digest(self.form_token(cookie_value), submitted)


@dataclass(frozen=True, slots=True)
class Limit:
    """At most `requests` within `window_seconds` for one client and one action."""

    requests: int
    window_seconds: float


class RateLimiter:
    """Sliding-window limiter in memory, per process. Behind several gateway instances the
    services' own limits (identity lockouts, notification quotas) still hold globally."""

    def __init__(self, limits: dict[str, Limit], max_keys: int = 100_000) -> None:
        self._limits = limits
        self._hits: dict[tuple[str, str], deque[float]] = {}
        self._max_keys = max_keys

    def check(self, action: str, client: str, now: float | None = None) -> int:
        """0 when allowed (and counted), else the seconds to wait (for Retry-After)."""
        limit = self._limits.get(action)
        if limit is None:
            return 0
        now = time.monotonic() if now is None else now
        key = (action, client)
        hits = self._hits.get(key)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._hits.clear()  # bounded memory under a flood of distinct clients
            hits = self._hits[key] = deque()
        while hits and now - hits[0] >= limit.window_seconds:
            hits.popleft()
        if len(hits) >= limit.requests:
            return max(1, math.ceil(limit.window_seconds - (now - hits[0])))
        hits.append(now)
        return 0


DEFAULT_LIMITS = {
    "login": Limit(10, 60),
    "login_code": Limit(10, 60),
    # Reset links asked for per client: each sends an email, so the budget is tighter than
    # the login's (the notifications service caps emails per recipient as well).
    "password_reset": Limit(5, 600),
    # Codes sent to a new phone number (identity also caps them per account and hour).
    "contact_code": Limit(10, 600),
    "signup": Limit(5, 60),
    "case_submission": Limit(10, 60),
    "upload": Limit(30, 60),
    "payment": Limit(10, 60),
}
