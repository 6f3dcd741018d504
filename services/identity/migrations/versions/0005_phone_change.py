"""phone change confirmed by a code (ACC-06): the pending number on its challenge

Revision ID: 5c1f0a7d2b34
Revises: e6904af50b48
Create Date: 2026-12-01 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '5c1f0a7d2b34'
down_revision: str | None = 'e6904af50b48'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_phone_number', sa.String(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('challenges', schema=None) as batch_op:
        batch_op.drop_column('pending_phone_number')
