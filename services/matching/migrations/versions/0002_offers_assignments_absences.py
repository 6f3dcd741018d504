"""registry details, absences, offers, assignments, reassignments

Revision ID: 8f3c2a9d41b7
Revises: 537660fdb76c
Create Date: 2026-11-24 10:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '8f3c2a9d41b7'
down_revision: str | None = '537660fdb76c'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('doctor_languages',
    sa.Column('doctor_id', sa.String(length=36), nullable=False),
    sa.Column('language', sa.String(length=35), nullable=False),
    sa.ForeignKeyConstraint(['doctor_id'], ['referent_doctors.doctor_id'], name=op.f('fk_doctor_languages_doctor_id_referent_doctors')),
    sa.PrimaryKeyConstraint('doctor_id', 'language', name=op.f('pk_doctor_languages'))
    )
    with op.batch_alter_table('doctor_languages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_doctor_languages_language'), ['language'], unique=False)

    op.create_table('doctor_sub_specialties',
    sa.Column('doctor_id', sa.String(length=36), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['doctor_id'], ['referent_doctors.doctor_id'], name=op.f('fk_doctor_sub_specialties_doctor_id_referent_doctors')),
    sa.PrimaryKeyConstraint('doctor_id', 'code', name=op.f('pk_doctor_sub_specialties'))
    )
    with op.batch_alter_table('doctor_sub_specialties', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_doctor_sub_specialties_code'), ['code'], unique=False)

    # Languages move from a JSON column to rows (indexed filter by language).
    bind = op.get_bind()
    doctors = sa.table(
        'referent_doctors',
        sa.column('doctor_id', sa.String()),
        sa.column('languages', sa.JSON()),
        sa.column('created_at', sa.DateTime(timezone=True)),
        sa.column('updated_at', sa.DateTime(timezone=True)),
    )
    languages = sa.table('doctor_languages', sa.column('doctor_id', sa.String()), sa.column('language', sa.String()))
    rows = [
        {'doctor_id': doctor_id, 'language': language}
        for doctor_id, tags in bind.execute(sa.select(doctors.c.doctor_id, doctors.c.languages))
        for language in sorted(set(tags or []))
    ]
    if rows:
        op.bulk_insert(languages, rows)

    with op.batch_alter_table('referent_doctors', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pending_offer_count', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('active', sa.Boolean(), server_default=sa.true(), nullable=False))
        batch_op.add_column(sa.Column('median_turnaround_seconds', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_column('languages')
    bind.execute(sa.update(doctors).values(updated_at=doctors.c.created_at))
    with op.batch_alter_table('referent_doctors', schema=None) as batch_op:
        batch_op.alter_column('updated_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.create_check_constraint(op.f('ck_referent_doctors_capacity_positive'), 'max_concurrent_cases >= 1')
        batch_op.create_check_constraint(op.f('ck_referent_doctors_load_not_negative'), 'current_load >= 0')
        batch_op.create_check_constraint(op.f('ck_referent_doctors_pending_not_negative'), 'pending_offer_count >= 0')

    op.create_table('absences',
    sa.Column('absence_id', sa.String(length=36), nullable=False),
    sa.Column('doctor_id', sa.String(length=36), nullable=False),
    sa.Column('starts_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ends_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('ends_at > starts_at', name=op.f('ck_absences_ends_after_start')),
    sa.ForeignKeyConstraint(['doctor_id'], ['referent_doctors.doctor_id'], name=op.f('fk_absences_doctor_id_referent_doctors')),
    sa.PrimaryKeyConstraint('absence_id', name=op.f('pk_absences'))
    )
    with op.batch_alter_table('absences', schema=None) as batch_op:
        batch_op.create_index('ix_absences_doctor_id_ends_at', ['doctor_id', 'ends_at'], unique=False)

    op.create_table('case_slots',
    sa.Column('case_id', sa.String(length=64), nullable=False),
    sa.Column('doctors_needed', sa.Integer(), nullable=False),
    sa.Column('assigned_count', sa.Integer(), nullable=False),
    sa.CheckConstraint('assigned_count >= 0', name=op.f('ck_case_slots_assigned_not_negative')),
    sa.CheckConstraint('doctors_needed >= 1', name=op.f('ck_case_slots_needed_positive')),
    sa.PrimaryKeyConstraint('case_id', name=op.f('pk_case_slots'))
    )

    op.create_table('offers',
    sa.Column('offer_id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.String(length=64), nullable=False),
    sa.Column('doctor_id', sa.String(length=36), nullable=False),
    sa.Column('therapeutic_area', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('respond_by', sa.DateTime(timezone=True), nullable=False),
    sa.Column('review_deadline_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decline_reason', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['doctor_id'], ['referent_doctors.doctor_id'], name=op.f('fk_offers_doctor_id_referent_doctors')),
    sa.PrimaryKeyConstraint('offer_id', name=op.f('pk_offers')),
    sa.UniqueConstraint('case_id', 'doctor_id', name='uq_offers_case_id_doctor_id')
    )
    with op.batch_alter_table('offers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_offers_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_offers_doctor_id_status', ['doctor_id', 'status'], unique=False)
        batch_op.create_index('ix_offers_created_at_offer_id', ['created_at', 'offer_id'], unique=False)

    op.create_table('assignments',
    sa.Column('assignment_id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.String(length=64), nullable=False),
    sa.Column('doctor_id', sa.String(length=36), nullable=False),
    sa.Column('offer_id', sa.String(length=36), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deadline_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('release_reason', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['doctor_id'], ['referent_doctors.doctor_id'], name=op.f('fk_assignments_doctor_id_referent_doctors')),
    sa.ForeignKeyConstraint(['offer_id'], ['offers.offer_id'], name=op.f('fk_assignments_offer_id_offers')),
    sa.PrimaryKeyConstraint('assignment_id', name=op.f('pk_assignments')),
    sa.UniqueConstraint('offer_id', name=op.f('uq_assignments_offer_id'))
    )
    with op.batch_alter_table('assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_assignments_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_assignments_doctor_id_released_at', ['doctor_id', 'released_at'], unique=False)
        batch_op.create_index('ix_assignments_deadline_at_assignment_id', ['deadline_at', 'assignment_id'], unique=False)

    op.create_table('reassignments',
    sa.Column('reassignment_id', sa.String(length=36), nullable=False),
    sa.Column('case_id', sa.String(length=64), nullable=False),
    sa.Column('released_assignment_id', sa.String(length=36), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('outcome', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('reassignment_id', name=op.f('pk_reassignments'))
    )
    with op.batch_alter_table('reassignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reassignments_case_id'), ['case_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('reassignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reassignments_case_id'))
    op.drop_table('reassignments')
    op.drop_table('assignments')
    op.drop_table('offers')
    op.drop_table('case_slots')
    op.drop_table('absences')
    with op.batch_alter_table('referent_doctors', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_referent_doctors_pending_not_negative'), type_='check')
        batch_op.drop_constraint(op.f('ck_referent_doctors_load_not_negative'), type_='check')
        batch_op.drop_constraint(op.f('ck_referent_doctors_capacity_positive'), type_='check')
        batch_op.add_column(sa.Column('languages', sa.JSON(), nullable=True))
        batch_op.drop_column('updated_at')
        batch_op.drop_column('median_turnaround_seconds')
        batch_op.drop_column('active')
        batch_op.drop_column('pending_offer_count')
    bind = op.get_bind()
    doctors = sa.table('referent_doctors', sa.column('doctor_id', sa.String()), sa.column('languages', sa.JSON()))
    tags: dict[str, list[str]] = {}
    for doctor_id, language in bind.execute(sa.text('SELECT doctor_id, language FROM doctor_languages')):
        tags.setdefault(doctor_id, []).append(language)
    for doctor_id in [row[0] for row in bind.execute(sa.select(doctors.c.doctor_id))]:
        bind.execute(
            sa.update(doctors).where(doctors.c.doctor_id == doctor_id).values(languages=sorted(tags.get(doctor_id, [])))
        )
    with op.batch_alter_table('referent_doctors', schema=None) as batch_op:
        batch_op.alter_column('languages', existing_type=sa.JSON(), nullable=False)
    op.drop_table('doctor_sub_specialties')
    op.drop_table('doctor_languages')
