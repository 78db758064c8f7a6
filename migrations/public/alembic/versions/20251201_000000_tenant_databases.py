"""tenants on many databases: where each tenant lives, and a concurrency cap per database

- ``tenant_registry.database`` and ``migration_run_tenants.database``: the key of the database
  that holds the tenant's schema (``[tool.tenantfleet.databases.KEY]``); NULL is this database.
- ``migration_run_tenants.status = 'waiting'``: pending, parked until a slot of its database is
  free (the worker holding one takes it next).
- ``public.tenantfleet_take_slot(database, cap)``: take one of the database's ``cap`` slots, a
  session-level advisory lock ``(hashtext('tenantfleet-slot:' || database), n)``; raises with
  SQLSTATE TF503 when every slot is taken. ``public.tenantfleet_free_slot()`` gives back the slot
  this session took, if any.

Revision ID: 20251201_000000
Revises: 20251130_000000
Create Date: 2025-12-01 00:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "20251201_000000"
down_revision = "20251130_000000"
branch_labels = None
depends_on = None

OLD_STATUSES = "'queued', 'running', 'retrying', 'succeeded', 'failed', 'skipped'"


def upgrade() -> None:
    op.add_column("tenant_registry", sa.Column("database", sa.String(63)))
    op.add_column("migration_run_tenants", sa.Column("database", sa.String(63)))
    op.drop_constraint("ck_migration_run_tenants_status", "migration_run_tenants")
    op.create_check_constraint(
        "ck_migration_run_tenants_status",
        "migration_run_tenants",
        f"status IN ({OLD_STATUSES}, 'waiting')",
    )
    op.create_index(
        "ix_migration_run_tenants_waiting",
        "migration_run_tenants",
        ["run_id", "database", "schema_name"],
        postgresql_where=sa.text("status = 'waiting'"),
    )
    op.execute(
        """
        CREATE FUNCTION public.tenantfleet_take_slot(database text, cap integer)
        RETURNS integer LANGUAGE plpgsql VOLATILE AS $body$
        DECLARE
            space integer := hashtext('tenantfleet-slot:' || database);
        BEGIN
            PERFORM public.tenantfleet_free_slot();
            FOR n IN 0 .. cap - 1 LOOP
                IF pg_try_advisory_lock(space, n) THEN
                    PERFORM set_config('tenantfleet.slot', space || ',' || n, false);
                    RETURN n;
                END IF;
            END LOOP;
            RAISE EXCEPTION USING ERRCODE = 'TF503',
                MESSAGE = format('every slot of database %s is taken (max_concurrent %s)',
                                 database, cap);
        END
        $body$
        """
    )
    op.execute(
        """
        CREATE FUNCTION public.tenantfleet_free_slot() RETURNS boolean
        LANGUAGE plpgsql VOLATILE AS $body$
        DECLARE
            held text := current_setting('tenantfleet.slot', true);
        BEGIN
            IF coalesce(held, '') = '' THEN
                RETURN false;
            END IF;
            PERFORM set_config('tenantfleet.slot', '', false);
            RETURN pg_advisory_unlock(split_part(held, ',', 1)::integer,
                                      split_part(held, ',', 2)::integer);
        END
        $body$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION public.tenantfleet_take_slot(text, integer)")
    op.execute("DROP FUNCTION public.tenantfleet_free_slot()")
    op.drop_index("ix_migration_run_tenants_waiting", "migration_run_tenants")
    op.execute("UPDATE migration_run_tenants SET status = 'queued' WHERE status = 'waiting'")
    op.drop_constraint("ck_migration_run_tenants_status", "migration_run_tenants")
    op.create_check_constraint(
        "ck_migration_run_tenants_status", "migration_run_tenants", f"status IN ({OLD_STATUSES})"
    )
    op.drop_column("migration_run_tenants", "database")
    op.drop_column("tenant_registry", "database")
