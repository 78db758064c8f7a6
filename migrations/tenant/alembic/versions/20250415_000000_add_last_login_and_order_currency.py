"""add users.last_login_at and orders.currency (existing orders are in USD)

Revision ID: 20250415_000000
Revises: 20250301_000000
Create Date: 2025-04-15 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20250415_000000"
down_revision = "20250301_000000"
branch_labels = None
depends_on = None
tenantfleet_replay = True  # the same SQL for every tenant: no reads, no branching


def upgrade() -> None:
    op.add_column("users", sa.Column("last_login_at", sa.DateTime(timezone=True)))
    op.add_column(
        "orders", sa.Column("currency", sa.String(3), nullable=False, server_default="USD")
    )


def downgrade() -> None:
    op.drop_column("orders", "currency")
    op.drop_column("users", "last_login_at")
