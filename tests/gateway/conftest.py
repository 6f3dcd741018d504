"""One running platform per test module (the gateway holds no state of its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.gateway.support import Portal, running_portal

# Small enough to cross in a test, large enough for real documents.
TEST_UPLOAD_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
async def portal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Portal]:
    workdir: Path = tmp_path_factory.mktemp("portal")
    async with running_portal(workdir, "sqlite", max_upload_bytes=TEST_UPLOAD_LIMIT) as running:
        yield running
