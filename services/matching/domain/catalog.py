"""The therapeutic areas catalog shipped with the dossier forms, read (never written) here.

Codes come from `services.dossier.catalog.therapeutic_area_codes()`, the same check the
dossier forms apply; labels and sub-specialties come from the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from services.dossier.catalog import CATALOG_PATH, therapeutic_area_codes
from services.shared.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class SubSpecialty:
    code: str
    label_fr: str
    label_en: str


@dataclass(frozen=True, slots=True)
class Area:
    code: str
    label_fr: str
    label_en: str
    sub_specialties: tuple[SubSpecialty, ...]

    @property
    def sub_specialty_codes(self) -> frozenset[str]:
        return frozenset(sub.code for sub in self.sub_specialties)


@dataclass(frozen=True, slots=True)
class Catalog:
    version: str
    areas: tuple[Area, ...]

    def area(self, code: str) -> Area | None:
        return next((area for area in self.areas if area.code == code), None)


def _humanise(code: str) -> str:
    return code.replace("_", " ").capitalize()


def _sub_specialty(item: Any) -> SubSpecialty:
    # The file lists bare codes today; labelled entries ({"code", "label": {...}}) are read too.
    if isinstance(item, str):
        return SubSpecialty(item, _humanise(item), _humanise(item))
    label = item.get("label", {})
    code = str(item["code"])
    return SubSpecialty(
        code, str(label.get("fr") or _humanise(code)), str(label.get("en") or _humanise(code))
    )


@cache
def load_catalog(path: Path = CATALOG_PATH) -> Catalog:
    data = json.loads(path.read_text(encoding="utf-8"))
    codes = therapeutic_area_codes(path)
    areas = tuple(
        sorted(
            (
                Area(
                    code=str(area["code"]),
                    label_fr=str(area.get("label", {}).get("fr", area["code"])),
                    label_en=str(area.get("label", {}).get("en", area["code"])),
                    sub_specialties=tuple(_sub_specialty(sub) for sub in area.get("sub_specialties", [])),
                )
                for area in data["areas"]
                if area["code"] in codes
            ),
            key=lambda area: area.code,
        )
    )
    return Catalog(version=str(data.get("version", "")), areas=areas)


def require_area(code: str, field: str = "therapeutic_area") -> Area:
    """The catalog area, or INVALID_ARGUMENT for an empty or unknown code."""
    if not code:
        raise InvalidArgument(f"{field} is required")
    area = load_catalog().area(code) if code in therapeutic_area_codes() else None
    if area is None:
        raise InvalidArgument(f"{field} is not in the therapeutic areas catalog")
    return area
