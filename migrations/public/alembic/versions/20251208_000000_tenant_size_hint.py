"""a tenant's size hint: what its migration will touch, in bytes, when the app knows better

``tenant_registry.size_hint`` (NULL: none). Planning sends the largest tenants first by an
estimate from the catalog (their tables' bytes); a hint the tenant source gives wins over it, for
the tenants whose catalog misleads (a large table the migration does not touch, or data about to
arrive). The ``query`` source gives it as a column named ``size_hint``.

Revision ID: 20251208_000000
Revises: 20251207_000000
Create Date: 2025-12-08 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251208_000000"
down_revision = "20251207_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_registry", sa.Column("size_hint", sa.BigInteger))
    op.create_check_constraint("ck_tenant_registry_size_hint", "tenant_registry", "size_hint >= 0")


def downgrade() -> None:
    op.drop_constraint("ck_tenant_registry_size_hint", "tenant_registry")
    op.drop_column("tenant_registry", "size_hint")
