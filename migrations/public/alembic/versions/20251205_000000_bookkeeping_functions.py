"""an attempt's bookkeeping as functions, so PostgreSQL plans it once per session

Every attempt sends its bookkeeping (the running mark, the pending check, the success mark,
whether tenants wait for a slot) as text: PostgreSQL parsed and planned those statements anew
for each tenant, and on W1 that cost it more than a third of what the tenant's DDL did
(pg_stat_statements, docs/performance-history.md). PL/pgSQL keeps a function's plans for the
session, and the pinned ``search_path`` keeps them valid while an attempt confines its
transaction to a tenant's schema. The statements are the ones ``tenantfleet.runs`` sent
before, unchanged.

Revision ID: 20251205_000000
Revises: 20251204_000000
Create Date: 2025-12-05 00:00:00
"""

from alembic import op

revision = "20251205_000000"
down_revision = "20251204_000000"
branch_labels = None
depends_on = None

ROW = """
    run_id = p_run_id AND schema_name = p_schema AND to_revision = p_target
    AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = p_run_uid)"""
PENDING_ROW = ROW + " AND status IN ('queued', 'running', 'retrying', 'waiting')"
KEY = "p_run_id bigint, p_run_uid uuid, p_schema text, p_target text"
PINNED = "SET search_path = pg_catalog, public"

FUNCTIONS = {
    f"tenantfleet_mark_running({KEY}, p_worker text) RETURNS void": f"""
    BEGIN
        WITH started AS (
            UPDATE public.migration_run_tenants SET status = 'running',
                attempts = attempts + 1, worker = p_worker,
                started_at = coalesce(started_at, now()), updated_at = now()
            WHERE {PENDING_ROW}
            RETURNING run_id, schema_name, attempts, worker)
        INSERT INTO public.migration_attempts (run_id, schema_name, attempt, worker)
        SELECT run_id, schema_name, attempts, worker FROM started ON CONFLICT DO NOTHING;
    END""",
    f"tenantfleet_still_pending({KEY}, p_max_attempts integer) RETURNS boolean": f"""
    BEGIN
        RETURN EXISTS (SELECT FROM public.migration_run_tenants
                       WHERE {PENDING_ROW} AND attempts <= p_max_attempts);
    END""",
    f"tenantfleet_mark_succeeded({KEY}, p_from_revision text, p_elapsed_ms integer)"
    " RETURNS boolean": f"""
    DECLARE
        marked integer;
    BEGIN
        UPDATE public.migration_run_tenants SET status = 'succeeded',
            from_revision = coalesce(nullif(p_from_revision, p_target), from_revision),
            finished_at = now(), updated_at = now(), error_class = NULL, error_message = NULL,
            duration_ms = p_elapsed_ms
                + (1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()))::integer
        WHERE {PENDING_ROW}
        RETURNING attempts INTO marked;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'TF409',
                MESSAGE = 'the tenant is no longer pending in its run';
        END IF;
        UPDATE public.migration_attempts SET finished_at = clock_timestamp(),
            outcome = 'succeeded'
        WHERE run_id = p_run_id AND schema_name = p_schema AND attempt = marked;
        UPDATE public.tenant_registry SET current_revision = p_target, updated_at = now()
        WHERE schema_name = p_schema;
        RETURN true;
    END""",
    f"tenantfleet_any_waiting({KEY}, p_database text,"
    " OUT waiting boolean, OUT attempts integer)": f"""
    BEGIN
        waiting := EXISTS (SELECT FROM public.migration_run_tenants AS t
                           WHERE t.run_id = p_run_id AND t.status = 'waiting'
                           AND t.database IS NOT DISTINCT FROM p_database);
        SELECT t.attempts INTO attempts FROM public.migration_run_tenants AS t
        WHERE {ROW};
    END""",
}


def upgrade() -> None:
    for signature, body in FUNCTIONS.items():
        op.execute(
            f"CREATE FUNCTION public.{signature} LANGUAGE plpgsql VOLATILE {PINNED}"
            f" AS $body${body}\n$body$"
        )


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION public.tenantfleet_mark_running(bigint, uuid, text, text, text),"
        " public.tenantfleet_still_pending(bigint, uuid, text, text, integer),"
        " public.tenantfleet_mark_succeeded(bigint, uuid, text, text, text, integer),"
        " public.tenantfleet_any_waiting(bigint, uuid, text, text, text)"
    )
