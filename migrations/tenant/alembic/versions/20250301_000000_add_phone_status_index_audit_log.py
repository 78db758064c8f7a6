"""add users.phone, an index on orders.status and the audit_log table (workload W1, r2)

Revision ID: 20250301_000000
Revises: 20250102_000001
Create Date: 2025-03-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20250301_000000"
down_revision = "20250102_000001"
branch_labels = None
depends_on = None
tenantfleet_replay = True  # the same SQL for every tenant: no reads, no branching


def upgrade() -> None:
    op.add_column("users", sa.Column("phone", sa.String(64)))
    op.create_index("ix_orders_status", "orders", ["status"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id")),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("ix_orders_status", "orders")
    op.drop_column("users", "phone")
