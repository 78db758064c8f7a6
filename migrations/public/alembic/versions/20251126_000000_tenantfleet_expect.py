"""add public.tenantfleet_expect(ok, message): raise, with SQLSTATE TF409, unless ok

Lets the tenant task send its success mark and COMMIT in one round trip: the mark raises when
the tenant is no longer pending in its run (SQL alone cannot raise), which aborts the
transaction, so the COMMIT that follows in the same string is never reached.

Revision ID: 20251126_000000
Revises: 20251125_000000
Create Date: 2025-11-26 00:00:00
"""

from alembic import op

revision = "20251126_000000"
down_revision = "20251125_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION public.tenantfleet_expect(ok boolean, message text) RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $body$
        BEGIN
            IF ok IS NOT TRUE THEN
                RAISE EXCEPTION USING ERRCODE = 'TF409', MESSAGE = message;
            END IF;
            RETURN true;
        END
        $body$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION public.tenantfleet_expect(boolean, text)")
