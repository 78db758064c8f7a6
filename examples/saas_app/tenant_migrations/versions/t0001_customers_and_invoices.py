"""customers and invoices

Revision ID: t0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "t0001"
down_revision = None
branch_labels = None
depends_on = None
tenantfleet_replay = True  # the same SQL for every account


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("email", sa.String(320)),
    )
    op.create_table(
        "invoices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("paid", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("note", sa.Text),
    )
    op.execute("INSERT INTO customers (name) VALUES ('first customer')")
    op.execute(
        "INSERT INTO invoices (customer_id, amount, paid) SELECT id, 100, true FROM customers"
    )


def downgrade() -> None:
    op.drop_table("invoices")
    op.drop_table("customers")
