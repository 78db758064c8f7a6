"""run uid and dispatch time; why a tenant was taken out of fleet runs

- ``migration_runs.uid``: a run's identity across databases that share one broker (the numeric
  id is only unique within one database); tasks carry it, and a task whose run uid is not in the
  worker's database touches nothing.
- ``migration_runs.dispatched_at``: when every task of the run was sent; an open run not
  dispatched whose producer is gone is abandoned at once rather than after the stale delay.
- ``tenant_registry.deactivated_reason`` / ``deactivated_at``: ``tenant deactivate --reason``.

Revision ID: 20251130_000000
Revises: 20251126_000000
Create Date: 2025-11-30 00:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "20251130_000000"
down_revision = "20251126_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "migration_runs",
        sa.Column(
            "uid", UUID(as_uuid=False), nullable=False, server_default=sa.text("gen_random_uuid()")
        ),
    )
    op.add_column("migration_runs", sa.Column("dispatched_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE migration_runs SET dispatched_at = created_at")
    op.add_column("tenant_registry", sa.Column("deactivated_reason", sa.Text()))
    op.add_column("tenant_registry", sa.Column("deactivated_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("tenant_registry", "deactivated_at")
    op.drop_column("tenant_registry", "deactivated_reason")
    op.drop_column("migration_runs", "dispatched_at")
    op.drop_column("migration_runs", "uid")
