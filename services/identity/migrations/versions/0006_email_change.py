"""email change confirmed by a code (ACC-06): the pending address on its challenge

Revision ID: 6d2e8b1c4f57
Revises: 5c1f0a7d2b34
Create Date: 2026-12-08 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '6d2e8b1c4f57'
down_revision: str | None = '5c1f0a7d2b34'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_email', sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.drop_column('pending_email')
