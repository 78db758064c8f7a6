"""the run lifecycle: runs held between waves, runs whose tenants were all skipped; the
functions' definitions from one file

- run status ``held``: a run between two waves that waits for ``tenantfleet continue`` (or its
  pause). The hold is in the database, so a held run stays active when its producer is gone.
- run status ``skipped``: every tenant was skipped, untouched, and none failed (it was labelled
  ``failed``).
- every tenantfleet function is (re)created from ``tenantfleet/sql/functions.sql``, the one file
  that shows their current definitions. Their behaviour is that of 20251207_000000; only their
  text was tidied, so the downgrade leaves them.

Revision ID: 20251209_000000
Revises: 20251208_000000
Create Date: 2025-12-09 00:00:00
"""

from alembic import op

from tenantfleet import sql

revision = "20251209_000000"
down_revision = "20251208_000000"
branch_labels = None
depends_on = None

RUN_STATUSES = "'running', 'succeeded', 'partial', 'failed', 'nothing_to_do', 'cancelled'"


def _check(run_statuses: str) -> None:
    op.drop_constraint("ck_migration_runs_status", "migration_runs")
    op.create_check_constraint(
        "ck_migration_runs_status", "migration_runs", f"status IN ({run_statuses})"
    )


def upgrade() -> None:
    _check(f"{RUN_STATUSES}, 'held', 'skipped'")
    for definition in sql.functions().values():
        op.execute(definition)


def downgrade() -> None:
    op.execute("UPDATE migration_runs SET status = 'running' WHERE status = 'held'")
    op.execute("UPDATE migration_runs SET status = 'failed' WHERE status = 'skipped'")
    _check(RUN_STATUSES)
