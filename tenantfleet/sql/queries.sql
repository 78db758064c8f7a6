-- The statements of a tenant's attempt, whole and by name (tenantfleet.sql.query). An attempt
-- sends several of them in one string, one round trip (tenantfleet.attempt composes them, with
-- BEGIN, COMMIT and ROLLBACK between them). Binds are :name. A tenant's row is named by its run
-- id and uid (ids repeat across databases that share a broker) and its target revision (a
-- message for another target never touches it). Lines that start with "--" inside a block are
-- its documentation and are not sent.

-- name: take_slot --
-- One of the :slot_cap slots of the tenant's database for this session (a session lock in the
-- control database, so the cap holds for every worker on every host), or SQLSTATE TF503.
SELECT public.tenantfleet_take_slot(:slot_database, :slot_cap)

-- name: free_slot --
-- Give back the slot this session holds, if any.
SELECT public.tenantfleet_free_slot()

-- name: commit_asynchronously --
-- This transaction's COMMIT does not wait for the WAL flush (progress marks: a mark lost in a
-- crash is made again by the next attempt).
SELECT set_config('synchronous_commit', 'off', true)

-- name: mark_running --
-- The attempt begins: the row is running, its attempts + 1, an attempt row opened.
SELECT public.tenantfleet_mark_running(:run_id, CAST(:run_uid AS uuid), :schema, :target, :worker)

-- name: confine --
-- Confine the transaction to the tenant's schema with its timeouts, then take the schema's lock
-- (waiting at most lock_timeout). The lock key is locks.key_sql's.
SELECT set_config('search_path', quote_ident(:schema), true),
    set_config('lock_timeout', :lock_timeout, true),
    set_config('statement_timeout', :statement_timeout, true);
SELECT pg_advisory_xact_lock(hashtextextended('tenantfleet:' || :schema, 0))

-- name: expect_planned_and_pending --
-- Under the lock: the schema is at :revision alone (where the plan saw it) and the row is
-- pending with at most :max_attempts attempts begun; else SQLSTATE TF409 aborts the rest of the
-- string (no version table: SQLSTATE 42P01).
SELECT public.tenantfleet_expect(
    (SELECT count(*) = 1 AND bool_and(version_num = :revision) FROM alembic_version)
    AND public.tenantfleet_still_pending(
        :run_id, CAST(:run_uid AS uuid), :schema, :target, :max_attempts),
    'the schema is not where the plan saw it, or the tenant is no longer pending')

-- name: tenant_row --
-- The row as the attempt sees it: the attempt's number, its status, and the revision the plan
-- saw the schema at (the only one the attempt moves it from).
SELECT attempts, status, from_revision FROM public.migration_run_tenants
WHERE run_id = :run_id AND schema_name = :schema AND to_revision = :target
    AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = CAST(:run_uid AS uuid))

-- name: read_under_lock --
-- The row (one row of NULLs when the run has no such tenant) beside each version row of the
-- confined schema (42P01 without a version table).
SELECT r.attempts, r.status, r.from_revision, v.version_num
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT attempts, status, from_revision FROM public.migration_run_tenants
    WHERE run_id = :run_id AND schema_name = :schema AND to_revision = :target
        AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = CAST(:run_uid AS uuid))
) AS r ON true
LEFT JOIN alembic_version AS v ON true

-- name: read_under_lock_without_versions --
-- read_under_lock for a schema without a version table.
SELECT r.attempts, r.status, r.from_revision, NULL
FROM (SELECT 1) AS one
LEFT JOIN (
    SELECT attempts, status, from_revision FROM public.migration_run_tenants
    WHERE run_id = :run_id AND schema_name = :schema AND to_revision = :target
        AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = CAST(:run_uid AS uuid))
) AS r ON true

-- name: mark_succeeded --
-- The outcome, sent after the upgrade's SQL in the same transaction, before its COMMIT: the
-- registry's current_revision changes with the schema. When the row is no longer pending it
-- raises SQLSTATE TF409, and the transaction aborts before the COMMIT.
SELECT public.tenantfleet_mark_succeeded(
    :run_id, CAST(:run_uid AS uuid), :schema, :target, :from_revision, :elapsed_ms)

-- name: any_waiting --
-- After the slot was given back: whether tenants of the run and database wait for one (only
-- then does the worker look for one to take), and the attempt's number (for its log line).
SELECT * FROM public.tenantfleet_any_waiting(
    :run_id, CAST(:run_uid AS uuid), :schema, :target, :database)

-- name: take_mark_lock --
-- A tenant of another database: the session lock named after its label in the control
-- database (so resume, the watchdog and the guard see from there who is migrating it), or
-- SQLSTATE TF409 when another worker holds it.
SELECT public.tenantfleet_expect(
    pg_try_advisory_lock(hashtextextended('tenantfleet:' || :label, 0)),
    'another worker is migrating this tenant right now')

-- name: release_mark_lock --
SELECT pg_advisory_unlock(hashtextextended('tenantfleet:' || :label, 0))

-- name: expect_planned --
-- expect_planned_and_pending in a tenant's own database, which has no function of ours: a
-- division by zero (SQLSTATE 22012) when the schema is not at :revision alone.
SELECT 1 / (SELECT count(*) = 1 AND bool_and(version_num = :revision) FROM alembic_version)::integer

-- name: read_versions_under_lock --
-- The confined schema's version rows (one NULL row when the table is empty; 42P01 without one).
SELECT v.version_num FROM (SELECT 1) AS one LEFT JOIN alembic_version AS v ON true

-- name: note_duration --
-- A tenant of another database, once its COMMIT is through: the whole attempt's duration.
UPDATE public.migration_run_tenants SET duration_ms = :elapsed_ms
WHERE run_id = :run_id AND schema_name = :schema AND to_revision = :target
    AND run_id IN (SELECT id FROM public.migration_runs WHERE uid = CAST(:run_uid AS uuid))
