"""Rendering of messages from the Jinja2 templates in `services/notifications/templates/`.

One file per template and locale (`<locale>/<template>.jinja`) with blocks: `subject`,
`text` and `html` for email, `sms` for SMS. Two environments read the same files: the HTML
one autoescapes, the text one does not (plain text has nothing to escape). Both use
StrictUndefined and have no globals, so a template sees only the context it is given: the
validated variables its spec declares (catalog.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template
from markupsafe import Markup

from services.notifications.domain.catalog import Channel
from services.notifications.domain.catalog import Template as TemplateId

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
_BLANK_LINES = re.compile(r"\n{3,}")


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str  # empty for SMS
    text: str
    html: str  # empty for SMS


def _environment(directory: Path, *, html: bool) -> Environment:
    env = Environment(
        loader=FileSystemLoader(directory),
        autoescape=html,  # noqa: S701 - the text environment renders plain text; HTML escapes
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
    )
    env.globals.clear()  # no range/lipsum/namespace...: a template sees its context only
    return env


class Renderer:
    def __init__(self, directory: Path = TEMPLATES_DIR) -> None:
        self._text = _environment(directory, html=False)
        self._html = _environment(directory, html=True)

    @staticmethod
    def _block(template: Template, block: str, context: Mapping[str, str]) -> str:
        if block not in template.blocks:
            raise LookupError(f"template {template.name} has no {block} block")
        return "".join(template.blocks[block](template.new_context(dict(context))))

    def render(
        self, template: TemplateId, locale: str, channel: Channel, context: Mapping[str, str]
    ) -> RenderedMessage:
        path = f"{locale}/{template.value}.jinja"
        text_template = self._text.get_template(path)
        if channel is Channel.SMS:
            sms = " ".join(self._block(text_template, "sms", context).split())
            return RenderedMessage(subject="", text=sms, html="")
        subject = " ".join(self._block(text_template, "subject", context).split())
        footer = self._text.get_template(f"{locale}/_footer.txt").render().strip()
        body = _BLANK_LINES.sub("\n\n", self._block(text_template, "text", context).strip())
        text = f"{body}\n\n-- \n{footer}\n"
        html_template = self._html.get_template(path)
        content = Markup(self._block(html_template, "html", context).strip())  # noqa: S704 - escaped by Jinja
        html = self._html.get_template("_layout.html").render(
            lang=locale, subject=subject, content=content, footer=footer
        )
        return RenderedMessage(subject=subject, text=text, html=html)

    def template_sources(self) -> dict[str, str]:
        """Every template file's source (tests check which variables they reference)."""
        loader = self._text.loader
        assert loader is not None
        return {name: loader.get_source(self._text, name)[0] for name in self._text.list_templates()}
