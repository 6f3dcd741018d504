"""Each service's Alembic migrations build exactly the schema its models declare, on SQLite
and PostgreSQL (a model change without a migration fails here)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection

from services.shared.db import create_engine
from services.shared.migrate import SERVICES_WITH_DATABASES
from tests.support.databases import service_database


@pytest.mark.parametrize("service", SERVICES_WITH_DATABASES)
async def test_migrations_match_models(service: str, backend: str, tmp_path: Path) -> None:
    metadata: MetaData = importlib.import_module(f"services.{service}.models").Base.metadata
    async with service_database(service, backend, tmp_path) as url:
        engine = create_engine(url)
        try:

            def diff(connection: Connection) -> list[Any]:
                context = MigrationContext.configure(connection, opts={"compare_type": True})
                return list(compare_metadata(context, metadata))

            async with engine.connect() as connection:
                differences = await connection.run_sync(diff)
        finally:
            await engine.dispose()
    assert differences == [], f"{service}: models and migrations differ: {differences}"
