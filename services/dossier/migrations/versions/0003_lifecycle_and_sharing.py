"""case reference, treating physician sharing, subject keys, archive, restriction, purge

Revision ID: 7c1e9a42d0b3
Revises: 4d9df6cb139d
Create Date: 2026-11-24 09:00:00.000000
"""
import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '7c1e9a42d0b3'
down_revision: str | None = '4d9df6cb139d'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"


def _reference() -> str:
    return "SO-" + "-".join("".join(secrets.choice(ALPHABET) for _ in range(4)) for _ in range(2))


def upgrade() -> None:
    op.create_table('subject_keys',
    sa.Column('subject_id', sa.String(length=36), nullable=False),
    sa.Column('wrapped_key', sa.LargeBinary(), nullable=False),
    sa.Column('master_key_id', sa.String(length=64), nullable=False),
    sa.Column('master_key_version', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('subject_id', name=op.f('pk_subject_keys'))
    )
    op.create_table('subject_purges',
    sa.Column('subject_id', sa.String(length=36), nullable=False),
    sa.Column('purged_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rights_request_id', sa.String(length=64), nullable=False),
    sa.Column('report', sa.JSON(), nullable=False),
    sa.Column('pending_object_keys', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('subject_id', name=op.f('pk_subject_purges'))
    )
    op.create_table('report_shares',
    sa.Column('report_id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.String(length=36), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('channel_message_id', sa.String(length=200), nullable=False),
    sa.Column('package_sha256_hex', sa.String(length=64), nullable=False),
    sa.Column('shared_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('report_id', name=op.f('pk_report_shares'))
    )
    with op.batch_alter_table('report_shares', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_report_shares_case_id'), ['case_id'], unique=False)

    op.create_table('secure_message_outbox',
    sa.Column('message_id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.String(length=36), nullable=False),
    sa.Column('package_sealed', sa.LargeBinary(), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_secure_message_outbox'))
    )
    with op.batch_alter_table('secure_message_outbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_secure_message_outbox_case_id'), ['case_id'], unique=False)

    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('subject_key_id', sa.String(length=36), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('case_reference', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('requested_doctor_count', sa.Integer(), nullable=False, server_default='1'))
        batch_op.add_column(sa.Column('submitted_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('treating_physician_sealed', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('treating_physician_recorded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('report_sharing_opposed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('restricted_at', sa.DateTime(timezone=True), nullable=True))

    # Existing cases get a reference; those past draft were submitted when created.
    bind = op.get_bind()
    cases = sa.table(
        'cases',
        sa.column('case_id', sa.String()),
        sa.column('case_reference', sa.String()),
        sa.column('status', sa.String()),
        sa.column('created_at', sa.DateTime(timezone=True)),
        sa.column('submitted_at', sa.DateTime(timezone=True)),
    )
    used: set[str] = set()
    for case_id, status, created_at in bind.execute(sa.select(cases.c.case_id, cases.c.status, cases.c.created_at)).all():
        reference = _reference()
        while reference in used:
            reference = _reference()
        used.add(reference)
        bind.execute(
            cases.update()
            .where(cases.c.case_id == case_id)
            .values(case_reference=reference, submitted_at=None if status == 'draft' else created_at)
        )

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.alter_column('case_reference', existing_type=sa.String(length=20), nullable=False)
        batch_op.create_unique_constraint(batch_op.f('uq_cases_case_reference'), ['case_reference'])
        batch_op.create_index(batch_op.f('ix_cases_archived_at'), ['archived_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_archived_at'))
        batch_op.drop_constraint(batch_op.f('uq_cases_case_reference'), type_='unique')
        batch_op.drop_column('restricted_at')
        batch_op.drop_column('archived_at')
        batch_op.drop_column('report_sharing_opposed_at')
        batch_op.drop_column('treating_physician_recorded_at')
        batch_op.drop_column('treating_physician_sealed')
        batch_op.drop_column('submitted_at')
        batch_op.drop_column('requested_doctor_count')
        batch_op.drop_column('case_reference')

    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('archived_at')
        batch_op.drop_column('subject_key_id')

    with op.batch_alter_table('secure_message_outbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_secure_message_outbox_case_id'))
    op.drop_table('secure_message_outbox')
    with op.batch_alter_table('report_shares', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_report_shares_case_id'))
    op.drop_table('report_shares')
    op.drop_table('subject_purges')
    op.drop_table('subject_keys')
