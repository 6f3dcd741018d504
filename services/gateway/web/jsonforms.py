"""Renders a JSON Schema (2020-12) form definition as accessible HTML fields and turns
the posted fields back into a JSON object. The definitions are the dossier's; the service
validates the answers (the browser's `required`/`pattern` only help the person)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

TEXTAREA_FROM = 500  # strings that may be longer than this get a text area


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # dotted path, for example "patient.last_name"
    label: str
    widget: str  # text, textarea, date, number, select, checkboxes, boolean
    required: bool
    options: tuple[str, ...] = ()
    max_length: int | None = None
    pattern: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    value: Any = None

    @property
    def html_id(self) -> str:
        return "f-" + self.name.replace(".", "-")


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    label: str
    fields: list[Field] = field(default_factory=list)


def humanise(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _lookup(answers: Mapping[str, Any], path: str) -> Any:
    current: Any = answers
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def _field(name: str, schema: Mapping[str, Any], required: bool, answers: Mapping[str, Any]) -> Field:
    label = str(schema.get("title") or humanise(name.rsplit(".", 1)[-1]))
    value = _lookup(answers, name)
    kind = schema.get("type")
    if "enum" in schema:
        return Field(name, label, "select", required, tuple(str(o) for o in schema["enum"]), value=value)
    if kind == "array" and "enum" in schema.get("items", {}):
        options = tuple(str(o) for o in schema["items"]["enum"])
        return Field(name, label, "checkboxes", required, options, value=value or [])
    if kind == "boolean":
        return Field(name, label, "boolean", required, ("true", "false"), value=value)
    if kind in ("integer", "number"):
        return Field(
            name, label, "number", required,
            minimum=schema.get("minimum"), maximum=schema.get("maximum"), value=value,
        )  # fmt: skip
    max_length = schema.get("maxLength")
    if schema.get("format") == "date":
        return Field(name, label, "date", required, value=value)
    widget = "textarea" if max_length is None or max_length > TEXTAREA_FROM else "text"
    return Field(
        name, label, widget, required, max_length=max_length, pattern=schema.get("pattern"), value=value
    )


def layout(definition_json: str, answers: Mapping[str, Any] | None = None) -> tuple[str, list[Group]]:
    """(title, groups of fields): top-level scalars in one group, each object in its own."""
    schema = json.loads(definition_json)
    answers = answers or {}
    top = Group("", "")
    groups: list[Group] = [top]
    required = set(schema.get("required", []))
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            group = Group(key, str(sub.get("title") or humanise(key)))
            inner_required = set(sub.get("required", [])) if key in required else set()
            for inner, inner_schema in sub["properties"].items():
                group.fields.append(_field(f"{key}.{inner}", inner_schema, inner in inner_required, answers))
            groups.append(group)
        else:
            top.fields.append(_field(key, sub, key in required, answers))
    return str(schema.get("title", "")), [g for g in groups if g.fields]


def _convert(schema: Mapping[str, Any], values: list[str]) -> Any:
    kind = schema.get("type")
    if kind == "array":
        return sorted({v for v in values if v})
    raw = values[-1].strip() if values else ""
    if raw == "":
        return None
    if kind == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    if raw == "":
        return None
    if kind == "integer":
        try:
            return int(raw)
        except ValueError:
            return raw  # the service says what is wrong, with the path
    if kind == "number":
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def answers_from_form(definition_json: str, form: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The posted `a:<path>` fields as a JSON object following the definition; empty
    optional values are left out (so a draft can be saved half-filled)."""
    schema = json.loads(definition_json)
    posted: dict[str, list[str]] = {}
    for name, value in form:
        if name.startswith("a:"):
            posted.setdefault(name[2:], []).append(value)
    answers: dict[str, Any] = {}
    for key, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            inner = {
                inner_key: value
                for inner_key, inner_schema in sub["properties"].items()
                for value in [_convert(inner_schema, posted.get(f"{key}.{inner_key}", []))]
                if value not in (None, [])
            }
            if inner:
                answers[key] = inner
        else:
            value = _convert(sub, posted.get(key, []))
            if value not in (None, []):
                answers[key] = value
    return answers
