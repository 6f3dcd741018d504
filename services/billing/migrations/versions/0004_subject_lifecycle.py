"""subject lifecycle

Archive of a subject's billing records (orders, invoices, refunds, payment data) out of
day-to-day reach, and the subjects whose billing data is restricted (issue 10).

Revision ID: 0004_subject_lifecycle
Revises: 0003_refunds
Create Date: 2026-12-01 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_subject_lifecycle"
down_revision: str | None = "0003_refunds"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "archived_records",
        sa.Column("record_id", sa.String(length=36), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("record_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("retain_until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archived_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("restricted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("record_id", name=op.f("pk_archived_records")),
    )
    op.create_index(
        op.f("ix_archived_records_subject_id"), "archived_records", ["subject_id"], unique=False
    )
    op.create_index(
        "ix_archived_records_category_record_at",
        "archived_records",
        ["category", "record_at"],
        unique=False,
    )
    op.create_table(
        "subject_restrictions",
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("restricted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rights_request_id", sa.String(length=36), nullable=False),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_subject_restrictions")),
    )
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
    op.drop_table("subject_restrictions")
    op.drop_index("ix_archived_records_category_record_at", table_name="archived_records")
    op.drop_index(op.f("ix_archived_records_subject_id"), table_name="archived_records")
    op.drop_table("archived_records")
