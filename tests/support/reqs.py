"""Requirement coverage: `@pytest.mark.req("ACC-07")` on tests, `make reqs` to report.

IDs come from shared/REQUIREMENTS.md (beside the repo); a test naming an unknown ID
fails collection, so a typo cannot fake coverage.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS_CANDIDATES = (REPO.parent / "shared" / "REQUIREMENTS.md", REPO / "shared" / "REQUIREMENTS.md")
ID_PATTERN = re.compile(r"^- \*\*([A-Z]+-\d{2})\*\*", re.MULTILINE)


def catalog() -> list[str]:
    for path in REQUIREMENTS_CANDIDATES:
        if path.exists():
            return ID_PATTERN.findall(path.read_text(encoding="utf-8"))
    return []


def collect(items: list[pytest.Item]) -> dict[str, list[str]]:
    coverage: dict[str, list[str]] = defaultdict(list)
    for item in items:
        for marker in item.iter_markers("req"):
            for requirement in marker.args:
                coverage[str(requirement)].append(item.nodeid)
    return coverage


def check_known(coverage: dict[str, list[str]], known: list[str]) -> None:
    unknown = sorted(set(coverage) - set(known)) if known else []
    if unknown:
        raise pytest.UsageError(f"tests cite unknown requirement IDs: {', '.join(unknown)}")


def report(coverage: dict[str, list[str]], known: list[str]) -> list[str]:
    lines: list[str] = []
    ids = known or sorted(coverage)
    for requirement in ids:
        tests = coverage.get(requirement, [])
        lines.append(f"{requirement:8} {len(tests):3} test(s)")
        lines += [f"           {test}" for test in sorted(set(tests))]
    missing = [requirement for requirement in ids if requirement not in coverage]
    lines.append("")
    lines.append(f"covered: {len(ids) - len(missing)}/{len(ids)}")
    lines.append("without tests: " + (" ".join(missing) if missing else "none"))
    return lines
