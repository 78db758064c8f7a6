"""every attempt at a tenant is kept: ``migration_attempts``

One row per attempt (number, worker, start, end, outcome, SQLSTATE, message), written by the
same statements that mark the tenant's row, so it costs no round trip. An attempt without an end
is one whose worker died (or is still at it).

Revision ID: 20251203_000000
Revises: 20251202_000000
Create Date: 2025-12-03 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251203_000000"
down_revision = "20251202_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migration_attempts",
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("schema_name", sa.String(63), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.String(255)),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("outcome", sa.String(16)),
        sa.Column("sqlstate", sa.String(5)),
        sa.Column("error_message", sa.Text()),
        sa.ForeignKeyConstraint(
            ["run_id", "schema_name"],
            ["migration_run_tenants.run_id", "migration_run_tenants.schema_name"],
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", "schema_name", "attempt"),
    )


def downgrade() -> None:
    op.drop_table("migration_attempts")
