"""Forms (CASE-02, CASE-03, CASE-14): versioned JSON Schema definitions per therapeutic
area shipped in `services/dossier/forms/definitions/<area>/<kind>.v<N>.json`; answers are
validated against them (drafts loosely: types, not completeness), a submitted version is
immutable (a change makes a new version), and what staff enter under the
personal-assistant mandate is marked as such."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.dossier.catalog import therapeutic_area_codes
from services.dossier.domain.access import CaseAccess
from services.dossier.domain.crypto import Keyring
from services.dossier.models import FormAnswers
from services.shared.db import utcnow
from services.shared.errors import FailedPrecondition, InvalidArgument, NotFound

DEFINITIONS_DIR = Path(__file__).resolve().parents[1] / "forms" / "definitions"
DEFINITION_FILE = re.compile(r"^(?P<kind>pre_form|pathology)\.v(?P<version>\d+)\.json$")
# Cases whose file is frozen: the opinion is out, or the request ended.
FROZEN_STATUSES = frozenset({"report_delivered", "closed", "cancelled"})


class FormKind(StrEnum):
    PRE_FORM = "pre_form"
    PATHOLOGY = "pathology"


class FormStatus(StrEnum):
    DRAFT = "draft"
    SUBMITTED = "submitted"


@dataclass(frozen=True, slots=True)
class FormDefinition:
    definition_id: str  # "<area>/<kind>/<version>"
    kind: FormKind
    area: str
    version: int
    text: str

    @property
    def schema(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.text)
        return loaded


@cache
def all_definitions() -> dict[tuple[str, FormKind, int], FormDefinition]:
    found: dict[tuple[str, FormKind, int], FormDefinition] = {}
    for area_dir in sorted(DEFINITIONS_DIR.iterdir()):
        if not area_dir.is_dir():
            continue
        for path in sorted(area_dir.iterdir()):
            match = DEFINITION_FILE.match(path.name)
            if not match:
                continue
            kind, version = FormKind(match["kind"]), int(match["version"])
            text = path.read_text(encoding="utf-8")
            Draft202012Validator.check_schema(json.loads(text))
            found[(area_dir.name, kind, version)] = FormDefinition(
                f"{area_dir.name}/{kind.value}/{version}", kind, area_dir.name, version, text
            )
    return found


def definition(area: str, kind: FormKind, version: int = 0) -> FormDefinition:
    if area not in therapeutic_area_codes():
        raise InvalidArgument("therapeutic_area is not in the catalog")
    versions = {v: d for (a, k, v), d in all_definitions().items() if a == area and k is kind}
    if not versions:
        raise NotFound("no form definition for this area")
    if version == 0:
        return versions[max(versions)]
    if version not in versions:
        raise NotFound("no such form definition version")
    return versions[version]


def validation_errors(defn: FormDefinition, answers: Any, complete: bool) -> list[str]:
    """Failing paths (no values: answers are health data). Drafts ignore completeness."""
    validator = Draft202012Validator(defn.schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    paths: list[str] = []
    for error in validator.iter_errors(answers):
        if not complete and error.validator in {"required", "dependentRequired", "minItems"}:
            continue
        path = "/" + "/".join(str(part) for part in error.absolute_path)
        paths.append(f"{path} ({error.validator})")
    return sorted(set(paths))


def parse_answers(answers_json: str, max_bytes: int) -> dict[str, Any]:
    if len(answers_json.encode()) > max_bytes:
        raise InvalidArgument(f"answers_json is over {max_bytes} bytes")
    try:
        answers = json.loads(answers_json)
    except json.JSONDecodeError:
        raise InvalidArgument("answers_json is not valid JSON") from None
    if not isinstance(answers, dict):
        raise InvalidArgument("answers_json must be a JSON object")
    return answers


def _context(row_id: str) -> str:
    return f"form_answers:{row_id}"


def open_answers(keyring: Keyring, row: FormAnswers) -> str:
    return keyring.open_text(row.answers_sealed, _context(row.form_answers_id))


async def latest(session: AsyncSession, case_id: str, kind: FormKind) -> FormAnswers | None:
    return await session.scalar(
        select(FormAnswers)
        .where(FormAnswers.case_id == case_id, FormAnswers.kind == kind.value)
        .order_by(FormAnswers.version.desc())
        .limit(1)
    )


def _check_open(access: CaseAccess) -> None:
    if access.case.status in FROZEN_STATUSES:
        raise FailedPrecondition("the case is closed to changes")


async def save(
    session: AsyncSession,
    keyring: Keyring,
    access: CaseAccess,
    kind: FormKind,
    answers_json: str,
    *,
    submit: bool,
    max_bytes: int,
) -> FormAnswers:
    """A draft is updated in place; a submission freezes the draft (or makes a new
    version); a draft after a submission is a new version."""
    _check_open(access)
    defn = definition(access.case.therapeutic_area, kind)
    current = await latest(session, access.case.case_id, kind)
    if not answers_json:
        if not submit or current is None or current.status != FormStatus.DRAFT:
            raise InvalidArgument("answers_json is required (there is no draft to submit)")
        answers_json = open_answers(keyring, current)
    answers = parse_answers(answers_json, max_bytes)
    errors = validation_errors(defn, answers, complete=submit)
    if errors:
        raise InvalidArgument("the answers do not match the form: " + "; ".join(errors[:20]))
    canonical = json.dumps(answers, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    now = utcnow()
    if current is not None and current.status == FormStatus.DRAFT:
        row = current  # drafts change in place until submitted
        if row.form_definition_id != defn.definition_id:
            row.form_definition_id = defn.definition_id
    else:
        version = int(
            await session.scalar(
                select(func.coalesce(func.max(FormAnswers.version), 0)).where(
                    FormAnswers.case_id == access.case.case_id, FormAnswers.kind == kind.value
                )
            )
            or 0
        )
        row = FormAnswers(
            form_answers_id=str(uuid.uuid4()),
            case_id=access.case.case_id,
            kind=kind.value,
            form_definition_id=defn.definition_id,
            version=version + 1,
            created_at=now,
            submitted_at=None,
        )
        session.add(row)
    row.answers_sealed = keyring.seal_text(
        canonical, _context(row.form_answers_id), access.case.filer_account_id
    )
    row.entered_by_account_id = access.principal.subject
    row.entered_under_mandate = access.under_mandate
    row.status = (FormStatus.SUBMITTED if submit else FormStatus.DRAFT).value
    if submit:
        row.submitted_at = now
    await session.flush()
    return row


async def get_version(session: AsyncSession, case_id: str, kind: FormKind, version: int) -> FormAnswers:
    if version == 0:
        row = await latest(session, case_id, kind)
    else:
        row = await session.scalar(
            select(FormAnswers).where(
                FormAnswers.case_id == case_id, FormAnswers.kind == kind.value, FormAnswers.version == version
            )
        )
    if row is None:
        raise NotFound("no answers to this form yet")
    return row


async def list_versions(session: AsyncSession, case_id: str, kind: FormKind) -> list[FormAnswers]:
    return list(
        (
            await session.scalars(
                select(FormAnswers)
                .where(FormAnswers.case_id == case_id, FormAnswers.kind == kind.value)
                .order_by(FormAnswers.version)
            )
        ).all()
    )
