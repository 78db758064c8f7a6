"""invoices.currency, its default from the app's own code

Revision ID: t0002
Revises: t0001
"""

import sqlalchemy as sa
from alembic import op
from saas_app.pricing import DEFAULT_CURRENCY

revision = "t0002"
down_revision = "t0001"
branch_labels = None
depends_on = None
tenantfleet_replay = True


def upgrade() -> None:
    op.add_column(
        "invoices",
        sa.Column("currency", sa.String(3), nullable=False, server_default=DEFAULT_CURRENCY),
    )


def downgrade() -> None:
    op.drop_column("invoices", "currency")
