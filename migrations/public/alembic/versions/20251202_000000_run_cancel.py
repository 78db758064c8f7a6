"""a run can be cancelled: its tenants not started are recorded ``cancelled``, never touched

- ``migration_runs.cancelled_at`` and the run status ``cancelled``;
- ``migration_run_tenants.status = 'cancelled'`` (final).

Revision ID: 20251202_000000
Revises: 20251201_000000
Create Date: 2025-12-02 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251202_000000"
down_revision = "20251201_000000"
branch_labels = None
depends_on = None

TENANT_STATUSES = "'queued', 'running', 'retrying', 'succeeded', 'failed', 'skipped', 'waiting'"
RUN_STATUSES = "'running', 'succeeded', 'partial', 'failed', 'nothing_to_do'"


def _checks(tenant_statuses: str, run_statuses: str) -> None:
    op.drop_constraint("ck_migration_run_tenants_status", "migration_run_tenants")
    op.create_check_constraint(
        "ck_migration_run_tenants_status",
        "migration_run_tenants",
        f"status IN ({tenant_statuses})",
    )
    op.drop_constraint("ck_migration_runs_status", "migration_runs")
    op.create_check_constraint(
        "ck_migration_runs_status", "migration_runs", f"status IN ({run_statuses})"
    )


def upgrade() -> None:
    op.add_column("migration_runs", sa.Column("cancelled_at", sa.DateTime(timezone=True)))
    _checks(f"{TENANT_STATUSES}, 'cancelled'", f"{RUN_STATUSES}, 'cancelled'")


def downgrade() -> None:
    op.execute("UPDATE migration_run_tenants SET status = 'skipped' WHERE status = 'cancelled'")
    op.execute("UPDATE migration_runs SET status = 'failed' WHERE status = 'cancelled'")
    _checks(TENANT_STATUSES, RUN_STATUSES)
    op.drop_column("migration_runs", "cancelled_at")
