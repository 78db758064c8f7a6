"""invoices.customer_count, computed by reading the database (runs online, per tenant)

Revision ID: t0004
Revises: t0003
"""

import sqlalchemy as sa
from alembic import op

revision = "t0004"
down_revision = "t0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("customer_count", sa.Integer))
    customers = op.get_bind().execute(sa.text("SELECT count(*) FROM customers")).scalar()
    op.execute(sa.text("UPDATE invoices SET customer_count = :n").bindparams(n=customers))


def downgrade() -> None:
    op.drop_column("invoices", "customer_count")
