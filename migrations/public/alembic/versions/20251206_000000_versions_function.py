"""every schema's revision read by the server, one schema at a time, in one call

Planning reads the version table of every tenant. Sent as a UNION ALL of 250 version tables
a statement, PostgreSQL spent more time parsing and planning the union than reading the tables
(docs/performance-history.md); this function runs one small query per schema instead, with the names
quoted by ``format('%I')``. ``tenantfleet.versions.read_versions`` calls it where it
exists (the control database at this revision or later) and sends the union elsewhere (other
databases need nothing installed).

Revision ID: 20251206_000000
Revises: 20251205_000000
Create Date: 2025-12-06 00:00:00
"""

from alembic import op

revision = "20251206_000000"
down_revision = "20251205_000000"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
CREATE FUNCTION public.tenantfleet_versions(p_schemas text[], p_table text)
RETURNS TABLE (schema_name text, versions text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS $body$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY p_schemas LOOP
        CONTINUE WHEN NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = name);
        schema_name := name;
        versions := NULL;
        IF to_regclass(format('%I.%I', name, p_table)) IS NOT NULL THEN
            EXECUTE format('SELECT string_agg(version_num, '','') FROM %I.%I', name, p_table)
                INTO versions;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$body$"""
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION public.tenantfleet_versions(text[], text)")
