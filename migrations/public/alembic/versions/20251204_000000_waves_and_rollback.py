"""waves, continue, rollback and revisions that commit part way: the columns they need

- ``migration_run_tenants.wave``: the wave a tenant belongs to (NULL: the run has no waves);
- ``migration_runs.wave``: the wave being run; ``migration_runs.continued_wave``: the last wave
  an operator let the run go on after (``tenantfleet continue``);
- ``migration_run_tenants.reached_revision``: where a tenant that failed part way through a
  revision with an ``autocommit_block()`` actually is.

Revision ID: 20251204_000000
Revises: 20251203_000000
Create Date: 2025-12-04 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251204_000000"
down_revision = "20251203_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("migration_run_tenants", sa.Column("wave", sa.SmallInteger()))
    op.add_column("migration_run_tenants", sa.Column("reached_revision", sa.String(64)))
    op.add_column("migration_runs", sa.Column("wave", sa.Integer()))
    op.add_column("migration_runs", sa.Column("continued_wave", sa.Integer()))


def downgrade() -> None:
    op.drop_column("migration_runs", "continued_wave")
    op.drop_column("migration_runs", "wave")
    op.drop_column("migration_run_tenants", "reached_revision")
    op.drop_column("migration_run_tenants", "wave")
