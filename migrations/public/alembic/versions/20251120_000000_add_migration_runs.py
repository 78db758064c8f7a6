"""add migration run tables and per-tenant outcome columns to tenant_registry

Revision ID: 20251120_000000
Revises: 20250102_000000
Create Date: 2025-11-20 00:00:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "20251120_000000"
down_revision = "20250102_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migration_runs",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column(
            "parent_run_id",
            sa.BigInteger(),
            sa.ForeignKey("migration_runs.id", ondelete="SET NULL"),
        ),
        sa.Column("target_revision", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="running"),
        sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("up_to_date", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("succeeded", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("skipped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("options", JSONB(), nullable=False, server_default=sa.text("'{}'::jsonb")),
        sa.Column("producer", sa.String(255)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'nothing_to_do')",
            name="ck_migration_runs_status",
        ),
    )
    op.create_table(
        "migration_run_tenants",
        sa.Column(
            "run_id",
            sa.BigInteger(),
            sa.ForeignKey("migration_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("schema_name", sa.String(63), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
        sa.Column("from_revision", sa.String(64)),
        sa.Column("to_revision", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("worker", sa.String(255)),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("duration_ms", sa.Integer()),
        sa.Column("error_class", sa.String(128)),
        sa.Column("error_message", sa.Text()),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'skipped')",
            name="ck_migration_run_tenants_status",
        ),
    )
    op.create_index(
        "ix_migration_run_tenants_run_id_status", "migration_run_tenants", ["run_id", "status"]
    )
    op.add_column("tenant_registry", sa.Column("current_revision", sa.String(64)))
    op.add_column("tenant_registry", sa.Column("last_migration_status", sa.String(16)))
    op.add_column("tenant_registry", sa.Column("last_migrated_at", sa.DateTime(timezone=True)))
    op.add_column(
        "tenant_registry",
        sa.Column(
            "last_run_id",
            sa.BigInteger(),
            sa.ForeignKey("migration_runs.id", ondelete="SET NULL"),
        ),
    )


def downgrade() -> None:
    op.drop_column("tenant_registry", "last_run_id")
    op.drop_column("tenant_registry", "last_migrated_at")
    op.drop_column("tenant_registry", "last_migration_status")
    op.drop_column("tenant_registry", "current_revision")
    op.drop_index("ix_migration_run_tenants_run_id_status", "migration_run_tenants")
    op.drop_table("migration_run_tenants")
    op.drop_table("migration_runs")
