"""the backfill ledger: per run, tenant and backfill, how far its batches are

``public.migration_backfills``: a backfill a tenant revision declares (``tenantfleet.backfill``)
runs after the revision's DDL committed, in batches of its key, each its own transaction; this
row says where it is (the next key, rows and batches done, attempts, the batch size it learnt),
its status (``pending``, ``running``, ``paused``, ``done``, ``failed``) and why it paused or
failed. A worker killed mid-backfill loses at most its current batch.

Revision ID: 20251210_000000
Revises: 20251209_000000
Create Date: 2025-12-10 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251210_000000"
down_revision = "20251209_000000"
branch_labels = None
depends_on = None


def _timestamp(name: str, *, now: bool = False) -> sa.Column[object]:
    if now:
        return sa.Column(
            name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    return sa.Column(name, sa.DateTime(timezone=True))


def upgrade() -> None:
    op.create_table(
        "migration_backfills",
        sa.Column(
            "run_id",
            sa.BigInteger,
            sa.ForeignKey("migration_runs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("schema_name", sa.String(63), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("database", sa.String(63)),
        sa.Column("revision", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("key_low", sa.BigInteger),
        sa.Column("key_high", sa.BigInteger),
        sa.Column("next_key", sa.BigInteger),
        sa.Column("rows_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("batch_keys", sa.BigInteger),
        sa.Column("reason", sa.Text),
        _timestamp("started_at"),
        _timestamp("updated_at", now=True),
        _timestamp("finished_at"),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'paused', 'done', 'failed')",
            name="ck_migration_backfills_status",
        ),
    )
    op.create_index(
        "ix_migration_backfills_schema", "migration_backfills", ["schema_name", "name", "status"]
    )


def downgrade() -> None:
    op.drop_index("ix_migration_backfills_schema", "migration_backfills")
    op.drop_table("migration_backfills")
