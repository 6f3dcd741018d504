"""Fresh databases per run: SQLite files in a temp folder, or new PostgreSQL databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from services.shared.db import upgrade_to_head_async
from services.shared.migrate import migrations_dir

POSTGRES_ADMIN_DSN = os.environ.get("SO_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


async def postgres_available() -> bool:
    try:
        connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=3)
    except (OSError, asyncpg.PostgresError):
        return False
    await connection.close()
    return True


@asynccontextmanager
async def fresh_postgres_database(label: str) -> AsyncIterator[str]:
    """A new, empty database named after the run; dropped afterwards."""
    name = f"so_test_{label}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@asynccontextmanager
async def service_database(
    service: str, backend: str, folder: Path, migrate: bool = True
) -> AsyncIterator[str]:
    """A migrated database for one service on the chosen backend."""
    if backend == "postgres":
        async with fresh_postgres_database(service) as url:
            if migrate:
                await upgrade_to_head_async(url, migrations_dir(service))
            yield url
        return
    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite+aiosqlite:///{folder / f'{service}-{uuid.uuid4().hex[:8]}.db'}"
    if migrate:
        await upgrade_to_head_async(url, migrations_dir(service))
    yield url
