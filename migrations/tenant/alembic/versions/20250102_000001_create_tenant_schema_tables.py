"""create tenant schema tables (workload W1, revision r1)

Revision ID: 20250102_000001
Revises:
Create Date: 2025-01-02 00:00:01
"""

import sqlalchemy as sa
from alembic import op

revision = "20250102_000001"
down_revision = None
branch_labels = None
depends_on = None
tenantfleet_replay = True  # the same SQL for every tenant: no reads, no branching


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("email", sa.String(255), nullable=False, unique=True),
        sa.Column("full_name", sa.String(255)),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), primary_key=True),
        sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("orders")
    op.drop_table("users")
