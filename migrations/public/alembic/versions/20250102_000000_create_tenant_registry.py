"""create tenant_registry

Revision ID: 20250102_000000
Revises:
Create Date: 2025-01-02 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20250102_000000"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_registry",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant_name", sa.String(255), nullable=False),
        sa.Column("schema_name", sa.String(63), nullable=False, unique=True),
        sa.Column("email", sa.String(255)),
        sa.Column("phone", sa.String(64)),
        sa.Column("tenant_address", sa.String(255)),
        sa.Column("tenant_city", sa.String(100)),
        sa.Column("tenant_state", sa.String(100)),
        sa.Column("tenant_country", sa.String(100)),
        sa.Column("tenant_country_code", sa.String(2)),
        sa.Column("zip", sa.String(20)),
        sa.Column("tenant_timezone", sa.String(64)),
        sa.Column("api_key", sa.String(255), unique=True),
        sa.Column("is_active", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("tenant_registry")
