"""Browser-facing protections as units: CSRF tokens, rate limits, locale choice."""

from __future__ import annotations

import pytest

from services.gateway.web.i18n import MESSAGES, pick_locale, translator
from services.gateway.web.security import CsrfProtection, Limit, RateLimiter


def test_csrf_token_is_bound_to_its_cookie_and_secret() -> None:
    csrf = CsrfProtection(b"k" * 32)
    cookie = CsrfProtection.new_cookie_value()
    token = csrf.form_token(cookie)
    assert csrf.is_valid(cookie, token)
    assert not csrf.is_valid(CsrfProtection.new_cookie_value(), token)  # planted cookie
    assert not csrf.is_valid(cookie, None)
    assert not csrf.is_valid(None, token)
    assert not CsrfProtection(b"x" * 32).is_valid(cookie, token)


def test_rate_limit_counts_per_client_and_action_and_says_how_long_to_wait() -> None:
    limiter = RateLimiter({"login": Limit(3, 60)})
    assert [limiter.check("login", "1.2.3.4", now=t) for t in (0, 1, 2)] == [0, 0, 0]
    assert limiter.check("login", "1.2.3.4", now=10) == 50
    assert limiter.check("login", "5.6.7.8", now=10) == 0  # another client
    assert limiter.check("unlimited", "1.2.3.4", now=10) == 0
    assert limiter.check("login", "1.2.3.4", now=61) == 0  # window slid


@pytest.mark.req("CASE-07")
def test_french_first_english_on_request_and_the_emergency_warning_in_both() -> None:
    assert pick_locale(None, None) == "fr"
    assert pick_locale(None, "en-GB,en;q=0.9") == "en"
    assert pick_locale("fr", "en") == "fr"
    assert pick_locale("de", "de-DE") == "fr"
    assert "15" in translator("fr")("no_emergency") and "112" in translator("en")("no_emergency")
    assert all(set(entry) == {"fr", "en"} for entry in MESSAGES.values())
