"""deferred invoice rendering and the abandoned-attempt sweep

Invoices are numbered and written in a short transaction with a snapshot of what their
document shows (`document`); the PDF is rendered and archived after commit, and
`archived_at` records when (existing invoices were archived at issue). Payment attempts
get `abandoned_at` and an index on (status, expires_at) for the sweep.

Revision ID: 0006_deferred_rendering
Revises: 0005_archive_access_log
Create Date: 2026-12-10 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_deferred_rendering"
down_revision: str | None = "0005_archive_access_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("document", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("archived_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_invoices_archived_at"), ["archived_at"], unique=False)
    # Every invoice issued before this revision was rendered and archived at issue.
    op.execute("UPDATE invoices SET archived_at = issued_at WHERE archived_at IS NULL")
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("abandoned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            "ix_payment_attempts_status_expires_at", ["status", "expires_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_payment_attempts_status_expires_at")
        batch_op.drop_column("abandoned_at")
    with op.batch_alter_table("invoices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_invoices_archived_at"))
        batch_op.drop_column("archived_at")
        batch_op.drop_column("document")
