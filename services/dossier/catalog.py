"""The therapeutic areas catalog, shipped in the repo and shared with the matching service."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

CATALOG_PATH = Path(__file__).with_name("forms") / "therapeutic_areas.json"


@cache
def therapeutic_area_codes(path: Path = CATALOG_PATH) -> frozenset[str]:
    data = json.loads(path.read_text(encoding="utf-8"))
    return frozenset(area["code"] for area in data["areas"])
