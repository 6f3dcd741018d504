"""Templates: every one renders in French and English, and nothing but its declared,
validated variables can reach a message (SEC-08)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from jinja2 import Environment, meta
from secondopinion.notifications.v1 import notifications_pb2 as pb

from services.notifications.domain.catalog import (
    LOCALES,
    SPECS,
    Channel,
    Template,
    Variable,
    normalise_locale,
)
from services.notifications.domain.rendering import TEMPLATES_DIR, Renderer
from services.notifications.domain.variables import RawVariables, template_context
from services.shared.errors import InvalidArgument
from services.shared.protoconv import from_pb_enum

BASE_URL = "https://app.deuxiemeavis.test"
# One recognisable value per variable; each must appear exactly where allowed.
CANARY_RAW = RawVariables(
    first_name="Canarinho",
    link=f"{BASE_URL}/c/canary-link-7f3a",
    date=datetime(2037, 7, 19, 6, 45, tzinfo=UTC),
    amount_cents=987654,
    currency="EUR",
    invoice_number="INV-2031-555111",
    one_time_code="917364",
)
CANARY_TEXT: dict[Variable, tuple[str, ...]] = {
    Variable.FIRST_NAME: ("Canarinho",),
    Variable.LINK: ("canary-link-7f3a",),
    Variable.DATE: ("2037", "08:45"),  # shown in Paris time (UTC+2 in July)
    Variable.AMOUNT: ("9\u202f876,54", "9,876.54"),  # fr or en spelling
    Variable.INVOICE_NUMBER: ("INV-2031-555111",),
    Variable.ONE_TIME_CODE: ("917364",),
}
# Words that would betray health data in a message; the catalogue's fixed text has none.
HEALTH_WORDS = ("diagnos", "cancer", "traitement", "treatment", "pathologi", "symptom", "maladie", "disease")
LAYOUT_VARIABLES = {"lang", "subject", "content", "footer"}
CONTEXT_NAMES = {v: v.value for v in Variable}
renderer = Renderer()


def _found(variable: Variable, text: str) -> bool:
    return any(canary in text for canary in CANARY_TEXT[variable])


@pytest.mark.req("SEC-08")
@pytest.mark.req("NOT-01")
@pytest.mark.req("NOT-02")
@pytest.mark.parametrize("locale", LOCALES)
def test_every_template_renders_with_its_variables_and_nothing_else(locale: str) -> None:
    for spec in SPECS.values():
        context = template_context(
            spec, CANARY_RAW, locale, public_base_url=BASE_URL, time_zone="Europe/Paris"
        )
        assert set(context) == {CONTEXT_NAMES[v] for v in spec.variables}
        for channel in spec.channels:
            message = renderer.render(spec.template, locale, channel, context)
            parts = [message.subject, message.text, message.html]
            everything = "\n".join(parts)
            for variable in Variable:
                if variable in spec.variables:
                    # Each declared variable is shown in the text (and the HTML) of the message.
                    assert _found(variable, message.text), (spec.template, channel, variable)
                    if channel is Channel.EMAIL:
                        assert _found(variable, message.html), (spec.template, variable)
                else:
                    assert not _found(variable, everything), (spec.template, channel, variable)
            lowered = everything.lower()
            assert not any(word in lowered for word in HEALTH_WORDS), spec.template
            assert "{{" not in everything and "{%" not in everything
            if channel is Channel.SMS:
                assert not message.subject and not message.html
                assert len(message.text) <= 320, (spec.template, len(message.text))
            else:
                assert message.subject and "\n" not in message.subject
                assert message.html.startswith("<!DOCTYPE html>") and f'lang="{locale}"' in message.html


@pytest.mark.req("SEC-08")
def test_templates_reference_only_their_declared_variables() -> None:
    env = Environment(autoescape=True)
    for name, source in renderer.template_sources().items():
        used = meta.find_undeclared_variables(env.parse(source))
        if name == "_layout.html":
            assert used <= LAYOUT_VARIABLES
            continue
        locale, _, file_name = name.partition("/")
        assert locale in LOCALES, name
        if file_name == "_footer.txt":
            assert not used, name
            continue
        spec = SPECS[Template(file_name.removesuffix(".jinja"))]
        assert used <= {CONTEXT_NAMES[v] for v in spec.variables}, (name, used)


@pytest.mark.req("SEC-08")
def test_every_proto_template_has_a_spec_and_files_in_both_locales() -> None:
    for number in pb.NotificationTemplate.values():
        if number == pb.NOTIFICATION_TEMPLATE_UNSPECIFIED:
            continue
        template = from_pb_enum(pb.NotificationTemplate, Template, number)
        assert template is not None and template in SPECS, pb.NotificationTemplate.Name(number)
        for locale in LOCALES:
            assert (TEMPLATES_DIR / locale / f"{template.value}.jinja").is_file()
    assert len(SPECS) == len(pb.NotificationTemplate.values()) - 1


@pytest.mark.req("SEC-08")
def test_no_request_field_can_carry_free_text() -> None:
    # The contract itself: a template id and typed, validated variables; no body, no subject.
    assert set(pb.TemplateVariables.DESCRIPTOR.fields_by_name) == {
        "first_name", "link", "date", "amount_cents", "currency", "invoice_number", "one_time_code",
    }  # fmt: skip
    assert set(pb.SendNotificationRequest.DESCRIPTOR.fields_by_name) == {
        "idempotency_key", "template", "channel", "phone_number", "email", "locale", "variables",
    }  # fmt: skip


@pytest.mark.req("SEC-08")
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("first_name", "Jean 2", "first_name"),
        ("first_name", "<b>Jean</b>", "first_name"),
        ("first_name", "Jean, diabète de type 2", "first_name"),
        ("first_name", "x" * 51, "first_name"),
        ("link", "https://evil.example/c/1", "link"),
        ("link", f"{BASE_URL}.evil.example/c/1", "link"),
        ("link", f"{BASE_URL}/c/%C3%A9pilepsie", "link"),
        ("link", f"{BASE_URL}/c/1 cancer", "link"),
        ("link", "http://app.deuxiemeavis.test/c/1", "link"),
        ("link", "", "link"),
        ("one_time_code", "12345", "one_time_code"),
        ("one_time_code", "12345a", "one_time_code"),
        ("invoice_number", "facture de chimio", "invoice_number"),
        ("amount_cents", -1, "amount_cents"),
        ("currency", "euro", "currency"),
        ("date", None, "date"),
    ],
)
def test_variables_are_validated_before_any_rendering(field: str, value: object, message: str) -> None:
    values = {name: getattr(CANARY_RAW, name) for name in CANARY_RAW.__slots__}
    values[field] = value
    raw = RawVariables(**values)
    spec = next(
        s
        for s in SPECS.values()
        if any(CONTEXT_NAMES[v] in field for v in s.variables)
        or (field in ("amount_cents", "currency") and Variable.AMOUNT in s.variables)
    )
    with pytest.raises(InvalidArgument) as error:
        template_context(spec, raw, "fr", public_base_url=BASE_URL, time_zone="Europe/Paris")
    assert message in error.value.message
    assert str(value) not in error.value.message or value in ("", None)


@pytest.mark.req("SEC-08")
def test_html_escapes_and_text_keeps_names_and_unused_variables_are_dropped() -> None:
    spec = SPECS[Template.REPORT_AVAILABLE]
    raw = RawVariables(first_name="Zoé O'Brien", link=f"{BASE_URL}/cases/42", one_time_code="not checked")
    context = template_context(spec, raw, "en", public_base_url=BASE_URL, time_zone="Europe/Paris")
    assert "one_time_code" not in context
    message = renderer.render(Template.REPORT_AVAILABLE, "en", Channel.EMAIL, context)
    assert "Zoé O'Brien" in message.text
    assert "Zoé O&#39;Brien" in message.html and "O'Brien" not in message.html


def test_locales_fall_back_to_french() -> None:
    assert [normalise_locale(x) for x in ("en-GB", "EN", "fr_FR", "", "de", "zz-Latn")] == [
        "en", "en", "fr", "fr", "fr", "fr",
    ]  # fmt: skip


@pytest.mark.req("SEC-08")
@pytest.mark.req("ACC-01")
@pytest.mark.parametrize(
    ("locale", "words"),
    [
        ("fr", ("essayé de créer un compte", "aucun nouveau compte", "réinitialisation")),
        ("en", ("tried to create an account", "no new account", "password reset")),
    ],
)
def test_the_sign_up_attempt_notice_tells_the_owner_and_nothing_about_the_attempt(
    locale: str, words: tuple[str, ...]
) -> None:
    """Sent to the owner of an address someone signed up with (no account enumeration on
    the form): email only, a login link, no date, code, amount or anything of the other
    person (the request has no field that could carry their phone or address)."""
    spec = SPECS[Template.SIGN_UP_ATTEMPT_ON_EXISTING_ACCOUNT]
    assert spec.channels == {Channel.EMAIL} and spec.variables == {Variable.FIRST_NAME, Variable.LINK}
    raw = RawVariables(link=f"{BASE_URL}/login")
    context = template_context(spec, raw, locale, public_base_url=BASE_URL, time_zone="Europe/Paris")
    message = renderer.render(spec.template, locale, Channel.EMAIL, context)
    for word in words:
        assert word in message.text.lower(), word
    assert f"{BASE_URL}/login" in message.text and f'href="{BASE_URL}/login"' in message.html


@pytest.mark.req("SEC-08")
@pytest.mark.req("GDPR-03")
@pytest.mark.parametrize(
    ("locale", "words"),
    [
        ("fr", ("effacement", "ne peut pas être exécutée", "dès la clôture")),
        ("en", ("erasure", "cannot be carried out yet", "as soon as")),
    ],
)
def test_the_postponed_erasure_notice_promises_no_date_and_names_nothing_medical(
    locale: str, words: tuple[str, ...]
) -> None:
    """An erasure refused for now while a case is in progress: the person is told it waits
    for the case, with a link to the request; no date, no area, no case detail."""
    spec = SPECS[Template.RIGHTS_REQUEST_POSTPONED]
    assert spec.channels == {Channel.EMAIL} and spec.variables == {Variable.FIRST_NAME, Variable.LINK}
    link = f"{BASE_URL}/privacy/requests/r-1"
    context = template_context(
        spec, RawVariables(link=link), locale, public_base_url=BASE_URL, time_zone="Europe/Paris"
    )
    message = renderer.render(spec.template, locale, Channel.EMAIL, context)
    for word in words:
        assert word in message.text.lower(), word
    assert link in message.text and f'href="{link}"' in message.html
