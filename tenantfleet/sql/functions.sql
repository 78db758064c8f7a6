-- The current definitions of tenantfleet's PL/pgSQL functions in the public schema, one block a
-- function under a "-- name: NAME --" line, each written as PostgreSQL prints it back
-- (pg_get_functiondef), so that tests/test_migrations.py can check that a database at head
-- holds exactly these. The public revisions that create or change a function load it from here
-- (tenantfleet.sql.functions); a revision that changes a body keeps the body it replaces in its
-- own module for its downgrade. This file is what is true now; history is in the revisions.
--
-- A run's tenant row (run id and uid: ids repeat across databases that share a broker; its
-- target: a message for another target never marks this row) is pending while its status is
-- one of tenantfleet.states.TENANT_PENDING (a test checks the list here against it).

-- name: tenantfleet_expect --
CREATE OR REPLACE FUNCTION public.tenantfleet_expect(ok boolean, message text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = 'TF409', MESSAGE = message;
    END IF;
    RETURN true;
END
$function$

-- name: tenantfleet_take_slot --
CREATE OR REPLACE FUNCTION public.tenantfleet_take_slot(database text, cap integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
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
$function$

-- name: tenantfleet_free_slot --
CREATE OR REPLACE FUNCTION public.tenantfleet_free_slot()
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
$function$

-- name: tenantfleet_mark_running --
CREATE OR REPLACE FUNCTION public.tenantfleet_mark_running(p_run_id bigint, p_run_uid uuid, p_schema text, p_target text, p_worker text)
 RETURNS void
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
BEGIN
    WITH started AS (
        UPDATE public.migration_run_tenants SET status = 'running',
            attempts = attempts + 1, worker = p_worker,
            started_at = coalesce(started_at, now()), updated_at = now()
        WHERE run_id = p_run_id AND schema_name = p_schema AND to_revision = p_target
            AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = p_run_uid)
            AND status IN ('queued', 'running', 'retrying', 'waiting')
        RETURNING run_id, schema_name, attempts, worker)
    INSERT INTO public.migration_attempts (run_id, schema_name, attempt, worker)
    SELECT run_id, schema_name, attempts, worker FROM started ON CONFLICT DO NOTHING;
END
$function$

-- name: tenantfleet_still_pending --
CREATE OR REPLACE FUNCTION public.tenantfleet_still_pending(p_run_id bigint, p_run_uid uuid, p_schema text, p_target text, p_max_attempts integer)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
BEGIN
    RETURN EXISTS (
        SELECT FROM public.migration_run_tenants
        WHERE run_id = p_run_id AND schema_name = p_schema AND to_revision = p_target
            AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = p_run_uid)
            AND status IN ('queued', 'running', 'retrying', 'waiting')
            AND attempts <= p_max_attempts);
END
$function$

-- name: tenantfleet_mark_succeeded --
CREATE OR REPLACE FUNCTION public.tenantfleet_mark_succeeded(p_run_id bigint, p_run_uid uuid, p_schema text, p_target text, p_from_revision text, p_elapsed_ms integer)
 RETURNS boolean
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
DECLARE
    marked integer;
BEGIN
    -- runs inside the tenant's migration transaction, after the upgrade: clock_timestamp()
    -- is when the migration ended (now() would be when its transaction began)
    UPDATE public.migration_run_tenants SET status = 'succeeded',
        from_revision = coalesce(nullif(p_from_revision, p_target), from_revision),
        finished_at = clock_timestamp(), updated_at = now(),
        error_class = NULL, error_message = NULL,
        duration_ms = p_elapsed_ms
            + (1000 * extract(epoch FROM clock_timestamp() - statement_timestamp()))::integer
    WHERE run_id = p_run_id AND schema_name = p_schema AND to_revision = p_target
        AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = p_run_uid)
        AND status IN ('queued', 'running', 'retrying', 'waiting')
    RETURNING attempts INTO marked;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'TF409',
            MESSAGE = 'the tenant is no longer pending in its run';
    END IF;
    UPDATE public.migration_attempts SET finished_at = clock_timestamp(), outcome = 'succeeded'
    WHERE run_id = p_run_id AND schema_name = p_schema AND attempt = marked;
    UPDATE public.tenant_registry SET current_revision = p_target, updated_at = now()
    WHERE schema_name = p_schema;
    RETURN true;
END
$function$

-- name: tenantfleet_any_waiting --
CREATE OR REPLACE FUNCTION public.tenantfleet_any_waiting(p_run_id bigint, p_run_uid uuid, p_schema text, p_target text, p_database text, OUT waiting boolean, OUT attempts integer)
 RETURNS record
 LANGUAGE plpgsql
 SET search_path TO 'pg_catalog', 'public'
AS $function$
BEGIN
    waiting := EXISTS (SELECT FROM public.migration_run_tenants AS t
                       WHERE t.run_id = p_run_id AND t.status = 'waiting'
                           AND t.database IS NOT DISTINCT FROM p_database);
    SELECT t.attempts INTO attempts FROM public.migration_run_tenants AS t
    WHERE t.run_id = p_run_id AND t.schema_name = p_schema AND t.to_revision = p_target
        AND t.run_id IN (SELECT id FROM public.migration_runs WHERE uid = p_run_uid);
END
$function$

-- name: tenantfleet_versions --
CREATE OR REPLACE FUNCTION public.tenantfleet_versions(p_schemas text[], p_table text)
 RETURNS TABLE(schema_name text, versions text)
 LANGUAGE plpgsql
 STABLE
 SET search_path TO 'pg_catalog', 'public'
AS $function$
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
$function$
