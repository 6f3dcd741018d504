"""partner client certificates (mutual TLS on the partner API)

A client certificate registered for a partner is a `partner_credentials` row of kind
`client_certificate` holding its SHA-256 fingerprint (columns present since 0002). This
index keeps an active certificate bound to one partner at most, so one partner's
certificate can never be accepted with another partner's API key. No row of that kind
existed before this revision (nothing registered certificates), so nothing conflicts.

Revision ID: 0007_partner_certificates
Revises: 0006_deferred_rendering
Create Date: 2026-12-14 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_partner_certificates"
down_revision: str | None = "0006_deferred_rendering"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIVE_CERTIFICATE = "kind = 'client_certificate' AND revoked_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("partner_credentials", schema=None) as batch_op:
        batch_op.create_index(
            "uq_partner_credentials_active_certificate",
            ["certificate_sha256_fingerprint"],
            unique=True,
            sqlite_where=sa.text(ACTIVE_CERTIFICATE),
            postgresql_where=sa.text(ACTIVE_CERTIFICATE),
        )


def downgrade() -> None:
    with op.batch_alter_table("partner_credentials", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_partner_credentials_active_certificate",
            sqlite_where=sa.text(ACTIVE_CERTIFICATE),
            postgresql_where=sa.text(ACTIVE_CERTIFICATE),
        )
