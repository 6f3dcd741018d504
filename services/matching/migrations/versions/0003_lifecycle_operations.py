"""lifecycle operations

Outcomes of the data-lifecycle steps (archive, purge) so a retried call answers the same
(issue 10).

Revision ID: 0003_lifecycle_operations
Revises: 8f3c2a9d41b7
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_lifecycle_operations"
down_revision: str | None = "8f3c2a9d41b7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lifecycle_operations",
        sa.Column("operation_id", sa.String(length=36), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("done_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("operation_id", name=op.f("pk_lifecycle_operations")),
    )
    op.create_index(
        op.f("ix_lifecycle_operations_subject_id"), "lifecycle_operations", ["subject_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_lifecycle_operations_subject_id"), table_name="lifecycle_operations")
    op.drop_table("lifecycle_operations")
