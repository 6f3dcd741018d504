"""Password policy (hypothesis), Argon2id parameters, bad input at sign-up (ACC-02, ACC-04)."""

from __future__ import annotations

import string

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import text

from deploy.seed import with_luhn_digit
from services.identity.domain.accounts import normalize_email, normalize_phone, rpps_is_valid
from services.identity.domain.passwords import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    PasswordHashing,
    generate_compliant_password,
    is_blocklisted,
    policy_violation,
)
from services.identity.settings import IdentitySettings
from services.shared.errors import InvalidArgument
from services.shared.settings import Environment
from tests.identity.conftest import Identity, expect

SPECIALS = "!#$%&()*+,-./:;<=>?@[]^_{|}~"
QUICK = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def compliant(draw: st.DrawFn) -> str:
    length = draw(st.integers(PASSWORD_MIN, PASSWORD_MAX))
    required = [
        draw(st.sampled_from(string.ascii_uppercase)),
        draw(st.sampled_from(string.ascii_lowercase)),
        draw(st.sampled_from(string.digits + SPECIALS)),
    ]
    rest = draw(
        st.text(
            alphabet=string.ascii_letters + string.digits + SPECIALS, min_size=length - 3, max_size=length - 3
        )
    )
    chars = draw(st.permutations(required + list(rest)))
    return "".join(chars)


@pytest.mark.req("ACC-04")
@QUICK
@given(compliant())
def test_every_password_the_terms_allow_is_accepted_unless_blocklisted(password: str) -> None:
    reason = policy_violation(password)
    assert reason is None or "common" in reason
    assert (reason is not None) == is_blocklisted(password)


@pytest.mark.req("ACC-04")
@QUICK
@given(st.text(min_size=0, max_size=40))
def test_every_accepted_password_meets_the_terms(password: str) -> None:
    if policy_violation(password) is None:
        assert PASSWORD_MIN <= len(password) <= PASSWORD_MAX
        assert any(c.isupper() for c in password) and any(c.islower() for c in password)
        assert any(c.isdigit() or not c.isalnum() for c in password)
        assert not is_blocklisted(password)


@pytest.mark.req("ACC-04")
@QUICK
@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=PASSWORD_MAX + 1, max_size=60))
def test_overlong_passwords_are_refused(password: str) -> None:
    assert policy_violation(password) is not None


@pytest.mark.req("ACC-04")
def test_common_and_breached_passwords_are_refused() -> None:
    for password in ("Password1", "Azerty123!", "Dragon2024", "Motdepasse1", "Qwerty123", "Iloveyou!1"):
        assert policy_violation(password) is not None and "common" in str(policy_violation(password))
    assert policy_violation("Correct-Horse-9") is None
    for _ in range(5):
        assert policy_violation(generate_compliant_password()) is None


@pytest.mark.req("ACC-04")
def test_argon2id_parameters_never_go_below_the_owasp_minimum() -> None:
    with pytest.raises(ValidationError):
        IdentitySettings(argon2_memory_kib=8 * 1024)
    with pytest.raises(ValidationError):
        IdentitySettings(argon2_time_cost=1)
    with pytest.raises(ValidationError):
        IdentitySettings(environment=Environment.PRODUCTION)  # no code secret
    hashed = PasswordHashing(2, 19 * 1024, 1).hasher.hash("Correct-Horse-9")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.mark.req("ACC-02")
@pytest.mark.req("ACC-12")
def test_identifiers_are_normalised_or_refused() -> None:
    assert normalize_email("\uff2a\uff41ne@Example.ORG") == "jane@example.org"
    assert normalize_phone("06 12 34 56 78") == "+33612345678"
    for bad in ("01 23 45 67 89", "+33 6 12", "not a number", "6" * 40):
        with pytest.raises(InvalidArgument):
            normalize_phone(bad)
    for bad in ("a" * 400 + "@example.org", "no-at-sign", "a@b"):
        with pytest.raises(InvalidArgument):
            normalize_email(bad)
    assert (
        rpps_is_valid(with_luhn_digit("1000000001"))
        and not rpps_is_valid("10000000010")
        and not rpps_is_valid("1000000001a")
    )


@pytest.mark.req("ACC-02")
@pytest.mark.req("ACC-04")
async def test_bad_sign_ups_get_precise_statuses_and_write_nothing(identity: Identity) -> None:
    cases: list[dict[str, object]] = [
        {"declared_age": 17},
        {"declared_age": 200},
        {"phone_number": "+33 1 23 45 67 89"},  # a landline cannot receive codes
        {"phone_number": "12"},
        {"password": "Password1"},
        {"password": "x" * 300},
        {"referral_token": "unknown-token"},
    ]
    for index, fields in enumerate(cases):
        password = str(fields.pop("password", "Correct-Horse-9"))
        await expect(
            identity.sign_up(f"bad{index}@example.org", password, **fields), grpc.StatusCode.INVALID_ARGUMENT
        )
    await expect(identity.sign_up("x" * 330 + "@example.org"), grpc.StatusCode.INVALID_ARGUMENT)
    created = await identity.sign_up("dup@example.org")
    # A known email is answered as a new one (no enumeration) and writes nothing either.
    assert await identity.sign_up("DUP@example.org") != created
    async with identity.engine.connect() as connection:
        count = (await connection.execute(text("SELECT count(*) FROM accounts"))).scalar()
        evidence = (await connection.execute(text("SELECT count(*) FROM evidence_records"))).scalar()
    assert count == 1 and evidence == 0
    await expect(identity.start_login("dup@example.org", "y" * 10_000), grpc.StatusCode.UNAUTHENTICATED)
