"""a data migration: note the paid invoices (a % in its text)

Revision ID: t0003
Revises: t0002
"""

from alembic import op

revision = "t0003"
down_revision = "t0002"
branch_labels = None
depends_on = None
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("UPDATE invoices SET note = 'paid 100% upfront' WHERE paid")


def downgrade() -> None:
    op.execute("UPDATE invoices SET note = NULL WHERE note = 'paid 100% upfront'")
