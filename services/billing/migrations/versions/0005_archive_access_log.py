"""archive access log

The log of every attempt at a subject's archived billing records (RET-07): reads by the
DPO or habilitated staff for a legal reason, and refusals. Append-only (triggers refuse
UPDATE and DELETE on both backends) and hash-chained through a one-row head (issue 10).

Revision ID: 0005_archive_access_log
Revises: 0004_subject_lifecycle
Create Date: 2026-12-08 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_archive_access_log"
down_revision: str | None = "0004_subject_lifecycle"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GENESIS_HASH = "0" * 64


def upgrade() -> None:
    op.create_table(
        "archive_access_log",
        sa.Column("sequence", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("access_id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("subject_id", sa.String(length=36), nullable=False),
        sa.Column("reader_account_id", sa.String(length=64), nullable=False),
        sa.Column("reader_role", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("reference", sa.String(length=128), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("record_count", sa.Integer(), nullable=False),
        sa.Column("previous_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_archive_access_log")),
        sa.UniqueConstraint("access_id", name=op.f("uq_archive_access_log_access_id")),
    )
    op.create_index(
        op.f("ix_archive_access_log_subject_id"), "archive_access_log", ["subject_id"], unique=False
    )
    op.create_table(
        "archive_access_log_head",
        sa.Column("head_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("head_id", name=op.f("pk_archive_access_log_head")),
    )
    # The chain's head starts empty; appends lock and advance it.
    head = sa.table(
        "archive_access_log_head",
        sa.column("head_id", sa.Integer()),
        sa.column("sequence", sa.BigInteger()),
        sa.column("entry_hash", sa.String()),
    )
    op.bulk_insert(head, [{"head_id": 1, "sequence": 0, "entry_hash": GENESIS_HASH}])
    # Append-only: the database itself refuses to change or remove an entry.
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER archive_access_log_no_{verb.lower()} BEFORE {verb} ON archive_access_log "
                "BEGIN SELECT RAISE(ABORT, 'archive_access_log is append-only'); END"
            )
    else:
        op.execute(
            "CREATE FUNCTION archive_access_log_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'archive_access_log is append-only'; END $$"
        )
        op.execute(
            "CREATE TRIGGER archive_access_log_append_only "
            "BEFORE UPDATE OR DELETE OR TRUNCATE ON archive_access_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION archive_access_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS archive_access_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS archive_access_log_no_delete")
    else:
        op.execute("DROP TRIGGER IF EXISTS archive_access_log_append_only ON archive_access_log")
        op.execute("DROP FUNCTION IF EXISTS archive_access_log_append_only()")
    op.drop_table("archive_access_log_head")
    op.drop_index(op.f("ix_archive_access_log_subject_id"), table_name="archive_access_log")
    op.drop_table("archive_access_log")
