from services.billing.models import Base
from services.shared.db import run_alembic_env

run_alembic_env(Base.metadata)
