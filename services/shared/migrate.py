"""`python -m services.shared.migrate <service> [revision message]`: upgrade, or autogenerate.

Used by `make migrate` and the dev stack; tests call `upgrade_to_head_async` directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command

from services.shared.db import alembic_config, upgrade_to_head
from services.shared.settings import REPO_ROOT, ServiceSettings

SERVICES_WITH_DATABASES = ("identity", "dossier", "matching", "billing", "notifications")


def migrations_dir(service: str) -> Path:
    return REPO_ROOT / "services" / service / "migrations"


def database_url(service: str) -> str:
    import importlib

    module = importlib.import_module(f"services.{service}.settings")
    settings_class = next(
        value
        for name, value in vars(module).items()
        if name.endswith("Settings")
        and isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value is not ServiceSettings
    )
    settings: ServiceSettings = settings_class()
    return settings.effective_database_url(service)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in SERVICES_WITH_DATABASES:
        print(f"usage: migrate <{'|'.join(SERVICES_WITH_DATABASES)}> [revision MESSAGE]", file=sys.stderr)
        return 2
    service = argv[0]
    url = database_url(service)
    if len(argv) >= 3 and argv[1] == "revision":
        upgrade_to_head(url, migrations_dir(service))
        command.revision(
            alembic_config(url, migrations_dir(service)), message=" ".join(argv[2:]), autogenerate=True
        )
        return 0
    upgrade_to_head(url, migrations_dir(service))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
