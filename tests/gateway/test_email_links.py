"""Every link a service or worker puts in an email or SMS opens a page the gateway serves
(a person clicking "see your invoice" must not land on a 404). The link builders are found
in the source, so a new link to a page that does not exist fails here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.shared.settings import REPO_ROOT
from tests.support.stack import make_keys

# `{self._portal}/cases/{data.case_id}`, `{deps.policy.public_base_url}/password-reset?token=...`
F_STRING_LINK = re.compile(r"\{[\w.]*(?:_portal|base_url)\}(/[^\"'\s]*)")
# billing's TEMPLATES table: (NOTIFICATION_TEMPLATE_X, "/invoices")
TABLE_LINK = re.compile(r"NOTIFICATION_TEMPLATE_\w+,\s*\"(/[^\"]*)\"")


def emitted_link_paths() -> dict[str, str]:
    """Path of each link (query dropped, placeholders as `x`) → where it is built."""
    found: dict[str, str] = {}
    sources = [*(REPO_ROOT / "services").rglob("*.py"), *(REPO_ROOT / "workflows").rglob("*.py")]
    for source in sources:
        if "gateway" in source.parts or "migrations" in source.parts:
            continue
        text = source.read_text()
        for pattern in (F_STRING_LINK, TABLE_LINK):
            for match in pattern.finditer(text):
                path = re.sub(r"\{[^}]*\}", "x", match.group(1).split("?", 1)[0])
                found[path] = f"{source.relative_to(REPO_ROOT)}:{text[: match.start()].count(chr(10)) + 1}"
    return found


def get_routes(routes: Any, prefix: str = "") -> Iterator[re.Pattern[str]]:
    """A pattern for every GET path the gateway serves, included routers unfolded."""
    for route in routes:
        if hasattr(route, "original_router"):
            yield from get_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif hasattr(route, "path") and "GET" in (getattr(route, "methods", None) or set()):
            pattern = re.sub(r"\{\w+:path\}", ".+", prefix + route.path)
            yield re.compile("^" + re.sub(r"\{\w+\}", "[^/]+", pattern) + "$")


@pytest.mark.req("NOT-02")
@pytest.mark.req("SEC-08")
def test_every_link_in_a_message_opens_a_page_the_gateway_serves(tmp_path: Path) -> None:
    from services.gateway.app import create_app
    from services.gateway.settings import GatewaySettings

    app = create_app(GatewaySettings(), make_keys(tmp_path / "keys"), connect_temporal=False)
    served = list(get_routes(app.routes))
    links = emitted_link_paths()
    # The scan finds the builders of the case and lifecycle workers, identity and billing.
    assert {"/cases/x", "/coordination/cases/x", "/privacy/requests/x", "/invoices", "/login"} <= set(links)
    missing = {path: where for path, where in links.items() if not any(p.match(path) for p in served)}
    assert not missing, f"links to pages the gateway does not serve: {missing}"
