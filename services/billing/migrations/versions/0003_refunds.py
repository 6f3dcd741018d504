"""refunds

Refunds of captured payments and cancellations of covered orders (issue 7), and the
PSP's call number (NUMAPPEL) on payment attempts, which a Paybox Direct refund names.

Revision ID: 0003_refunds
Revises: 90291c6fdd1a
Create Date: 2026-11-24 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_refunds"
down_revision: str | None = "90291c6fdd1a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("psp_call_number", sa.String(length=40), nullable=False, server_default="")
        )
    op.create_table(
        "refunds",
        sa.Column("refund_id", sa.String(length=36), nullable=False),
        sa.Column("order_id", sa.String(length=36), nullable=False),
        sa.Column("request_key", sa.String(length=200), nullable=False),
        sa.Column("payment_attempt_id", sa.String(length=36), nullable=False),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=48), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("psp_question_number", sa.Integer(), nullable=False),
        sa.Column("psp_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("psp_transaction_id", sa.String(length=40), nullable=False),
        sa.Column("psp_call_number", sa.String(length=40), nullable=False),
        sa.Column("psp_authorization", sa.String(length=20), nullable=False),
        sa.Column("psp_error_code", sa.String(length=10), nullable=False),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("credit_note_ids", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"], name=op.f("fk_refunds_order_id_orders")),
        sa.PrimaryKeyConstraint("refund_id", name=op.f("pk_refunds")),
        sa.UniqueConstraint("request_key", name=op.f("uq_refunds_request_key")),
    )
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_refunds_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_refunds_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("refunds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refunds_order_id"))
        batch_op.drop_index(batch_op.f("ix_refunds_created_at"))
    op.drop_table("refunds")
    with op.batch_alter_table("payment_attempts", schema=None) as batch_op:
        batch_op.drop_column("psp_call_number")
