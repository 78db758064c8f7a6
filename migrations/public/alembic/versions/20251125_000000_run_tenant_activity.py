"""add migration_run_tenants.updated_at: the last time anything happened to a tenant of a run

Revision ID: 20251125_000000
Revises: 20251120_000000
Create Date: 2025-11-25 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251125_000000"
down_revision = "20251120_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "migration_run_tenants",
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_column("migration_run_tenants", "updated_at")
