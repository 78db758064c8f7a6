"""``public.migration_runs`` and ``public.migration_run_tenants``: the only module that says how
they are written.

These rows are the truth about a run. The broker may forget tasks and the chord may fire early
or never; every reader (the chord callback, ``--wait``, ``status``) reconciles from here. The
functions below write them; so do the statements a tenant's attempt sends for its own row, which
stand whole and by name in ``sql/queries.sql`` (``mark_running``, ``mark_succeeded``, ...) and
call the PL/pgSQL functions of ``sql/functions.sql``: ``tenantfleet.attempt`` only composes
them into its round trips. A final row is never changed again.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantfleet import databases, db, registry, states
from tenantfleet.config import Settings
from tenantfleet.errors import UsageError
from tenantfleet.public_tables import migration_attempts as attempts_table
from tenantfleet.public_tables import migration_run_tenants as run_tenants
from tenantfleet.public_tables import migration_runs as runs
from tenantfleet.states import RunState, TenantState
from tenantfleet.versions import BASE

FINAL = states.TENANT_FINAL
PENDING = states.TENANT_PENDING
ERROR_MESSAGE_MAX = 2000


@dataclass(frozen=True)
class Counts:
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    queued: int = 0
    running: int = 0
    retrying: int = 0
    waiting: int = 0
    """Parked until a slot of their database is free (its cap is reached)."""
    cancelled: int = 0

    @classmethod
    def of(cls, by_status: Mapping[str, int]) -> "Counts":
        return cls(total=sum(by_status.values()), **{str(k): v for k, v in by_status.items()})

    @property
    def pending(self) -> int:
        return self.queued + self.running + self.retrying + self.waiting

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.skipped + self.cancelled


@dataclass(frozen=True)
class Run:
    id: int
    parent_run_id: int | None
    target_revision: str
    status: str
    total: int
    up_to_date: int
    succeeded: int
    failed: int
    skipped: int
    options: dict[str, Any]
    producer: str | None
    created_at: datetime
    finished_at: datetime | None
    uid: str
    dispatched_at: datetime | None
    cancelled_at: datetime | None
    wave: int | None
    continued_wave: int | None


class RunTenant(NamedTuple):
    """A run's tenant row (a tuple: a view of 100,000 tenants builds one a row). Without the
    row's times, which no view shows (each attempt's are in ``Attempt``): turning two
    timestamps into datetimes was a fifth of a ``status --json`` of 100,000 tenants."""

    schema_name: str
    status: str
    from_revision: str | None
    to_revision: str
    attempts: int
    worker: str | None
    duration_ms: int | None
    error_class: str | None
    error_message: str | None
    database: str | None
    wave: int | None
    reached_revision: str | None

    @property
    def label(self) -> str:
        return databases.label(self.database, self.schema_name)


def planned_in_message(from_revision: str | None) -> str:
    """A row's ``from_revision`` as a task message carries it."""
    return from_revision or BASE


@dataclass(frozen=True)
class TenantTask:
    """What one tenant task is about: a run (id and uid), a schema in its database, a target
    revision, and the revision the plan saw the schema at."""

    run_id: int
    run_uid: str
    schema: str
    target: str
    database: str | None = None
    planned: str | None = None
    """The revision the plan saw (``BASE``: none); the task moves the schema only from there.
    None: the message did not say (one sent before tenantfleet carried it): the run row says."""

    @property
    def planned_revision(self) -> str | None:
        """``planned`` as a version row would hold it (None: before the first revision)."""
        return None if self.planned in (None, BASE) else self.planned

    @property
    def label(self) -> str:
        return databases.label(self.database, self.schema)

    def slot_binds(self, settings: Settings) -> dict[str, Any]:
        """The binds of ``take_slot`` (``sql/queries.sql``) for this tenant's database."""
        return {
            "slot_database": databases.shown(self.database),
            "slot_cap": settings.cap(self.database),
        }

    def binds(self) -> dict[str, Any]:
        """The binds of the statements that name this task's row (``sql/queries.sql``)."""
        return {
            "run_id": self.run_id,
            "run_uid": self.run_uid,
            "schema": self.schema,
            "target": self.target,
            "database": self.database,
        }

    def core_binds(self) -> dict[str, Any]:
        """The same, for the Core statements below (``_PENDING_ROW``)."""
        return {"b_run_id": self.run_id, "b_run_uid": self.run_uid, "b_schema": self.schema}


_RUN_COLUMNS = [runs.c[f.name] for f in fields(Run)]
_TENANT_COLUMNS = [run_tenants.c[name] for name in RunTenant._fields]


def create_run(
    connection: Connection,
    target_revision: str,
    behind: Sequence[tuple[str, str | None]],
    *,
    up_to_date: int = 0,
    options: dict[str, Any] | None = None,
    producer: str | None = None,
    parent_run_id: int | None = None,
    uid: str | None = None,
    skipped: Sequence[tuple[str, str | None, str, str]] = (),
    placement: Mapping[str, str] | None = None,
    waves: Mapping[str, int] | None = None,
    targets: Mapping[str, str] | None = None,
) -> int:
    """Write the run and one ``queued`` row per tenant in ``behind`` (schema, from revision), and
    one ``skipped`` row per tenant in ``skipped`` (schema, revision, error class, reason): tenants
    the plan found it cannot migrate. ``placement`` maps the schemas that live in another
    database to its key.

    A run with no tenant is born finished, as ``nothing_to_do``; one with only skipped tenants is
    closed by ``finalize``.
    """
    empty = not behind and not skipped
    placement = placement or {}
    waves = waves or {}
    targets = targets or {}
    extra = {"uid": uid} if uid else {}
    run_id: int = connection.execute(
        runs.insert()
        .values(
            **extra,
            target_revision=target_revision,
            status=RunState.NOTHING_TO_DO if empty else RunState.RUNNING,
            total=len(behind) + len(skipped),
            up_to_date=up_to_date,
            options=options or {},
            producer=producer,
            parent_run_id=parent_run_id,
            finished_at=sa.func.now() if empty else None,
        )
        .returning(runs.c.id)
    ).scalar_one()
    if behind:
        connection.execute(
            sa.text(
                "INSERT INTO public.migration_run_tenants (run_id, schema_name, from_revision,"
                " to_revision, database, wave) SELECT :run_id, s, f, t, d, w FROM unnest("
                "CAST(:schemas AS text[]), CAST(:froms AS text[]), CAST(:targets AS text[]),"
                " CAST(:databases AS text[]), CAST(:waves AS smallint[])) AS u(s, f, t, d, w)"
            ),
            {
                "run_id": run_id,
                "schemas": [schema for schema, _ in behind],
                "froms": [from_revision for _, from_revision in behind],
                "targets": [targets.get(schema, target_revision) for schema, _ in behind],
                "databases": [placement.get(schema) for schema, _ in behind],
                "waves": [waves.get(schema) for schema, _ in behind],
            },
        )
    if skipped:
        connection.execute(
            run_tenants.insert().values(status=TenantState.SKIPPED, finished_at=sa.func.now()),
            [
                {
                    "run_id": run_id,
                    "schema_name": schema,
                    "from_revision": revision,
                    "to_revision": target_revision,
                    "error_class": error_class,
                    "error_message": reason,
                    "database": placement.get(schema),
                }
                for schema, revision, error_class, reason in skipped
            ],
        )
    return run_id


def refresh_estimates(connection: Connection) -> None:
    """The planner's statistics of the run rows, taken once a run's rows are in (``ANALYZE``;
    skipped with a warning when the role does not own the table). Without them (a table never
    analyzed: a database's first run, and every run where autovacuum is off), each
    tenant's own row was found through ``(run_id, status)``, every row of the run read for one:
    at 2,000 tenants, the bookkeeping of an attempt cost its backend 2.0 CPU-ms instead of
    0.8. Skipped when a vacuum of the table holds its lock (``SKIP_LOCKED``): never waited
    for."""
    connection.exec_driver_sql("ANALYZE (SKIP_LOCKED) public.migration_run_tenants")


def mark_dispatched(connection: Connection, run_id: int) -> None:
    """Every task of the run was sent."""
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.dispatched_at.is_(None))
        .values(dispatched_at=sa.func.now())
    )


NOT_PENDING = "TF409"
"""SQLSTATE of the success mark (``sql/queries.sql``: ``mark_succeeded``) when the row is no
longer pending, and of ``public.tenantfleet_expect`` when its check fails: the transaction
aborts, and the COMMIT after it in the same string is never run."""

# The same (run, schema) row for the Core statements below.
_PENDING_ROW = run_tenants.update().where(
    run_tenants.c.run_id == sa.bindparam("b_run_id"),
    run_tenants.c.schema_name == sa.bindparam("b_schema"),
    run_tenants.c.run_id.in_(sa.select(runs.c.id).where(runs.c.uid == sa.bindparam("b_run_uid"))),
    run_tenants.c.status.in_(PENDING),
)
_MARK_ERROR = _PENDING_ROW.values(
    status=sa.bindparam("b_status"),
    finished_at=sa.case((sa.bindparam("b_final", type_=sa.Boolean), sa.func.now())),
    updated_at=sa.func.now(),
    duration_ms=sa.bindparam("b_duration"),
    error_class=sa.bindparam("b_error_class"),
    error_message=sa.bindparam("b_error_message"),
).returning(run_tenants.c.attempts, run_tenants.c.from_revision)


WAITING_FOR_A_WORKER = "RevisionNotOnWorker"
"""``error_class`` of a pending tenant whose task a worker handed back: its scripts do not
define the target revision (a rolling deploy has not reached it), or its configuration has no
URL for the tenant's database."""


def note_handed_back(connection: Connection, task: TenantTask, worker: str, needs: str) -> None:
    """Why the tenant still waits: it needs a worker that ``needs`` (``knows revision R``),
    and ``worker`` does not."""
    connection.execute(
        _PENDING_ROW.values(
            updated_at=sa.func.now(),
            error_class=WAITING_FOR_A_WORKER,
            error_message=f"waiting for a worker that {needs}: {worker} does not (handed back)",
        ),
        task.core_binds(),
    )


def note_reached(connection: Connection, task: TenantTask, reached: str | None) -> None:
    """Where a tenant whose span commits part way (``tenantfleet.stepwise``) stopped."""
    connection.execute(
        _PENDING_ROW.values(reached_revision=reached or "base", updated_at=sa.func.now()),
        task.core_binds(),
    )


WAITING_FOR_A_SLOT = "WaitingForSlot"
"""``error_class`` of a ``waiting`` tenant: every slot of its database was taken."""


def park(connection: Connection, task: TenantTask, cap: int) -> None:
    """The tenant waits for a slot of its database: whoever holds one takes it next
    (``claim_waiting``). Its message is done with: the row is the only record it waits."""
    connection.execute(
        _PENDING_ROW.values(
            status=TenantState.WAITING,
            updated_at=sa.func.now(),
            error_class=WAITING_FOR_A_SLOT,
            error_message=(
                f"waiting for a free slot of database {databases.shown(task.database)}"
                f" (max_concurrent {cap})"
            ),
        ),
        task.core_binds(),
    )


_CLAIM_WAITING = sa.text(
    f"UPDATE public.migration_run_tenants SET status = '{TenantState.QUEUED}', error_class = NULL,"
    " error_message = NULL, updated_at = now()"
    " WHERE run_id = :run_id AND schema_name = ("
    " SELECT schema_name FROM public.migration_run_tenants WHERE run_id = :run_id"
    f" AND status = '{TenantState.WAITING}' AND database IS NOT DISTINCT FROM :database"
    f" ORDER BY schema_name LIMIT 1 FOR UPDATE SKIP LOCKED) AND status = '{TenantState.WAITING}'"
    " RETURNING schema_name, to_revision, from_revision"
)


def claim_waiting(connection: Connection, task: TenantTask) -> TenantTask | None:
    """The next tenant of ``task``'s run and database that waits for a slot, taken off the
    waiting list for this worker (``queued`` again); None when none waits."""
    row = connection.execute(
        _CLAIM_WAITING, {"run_id": task.run_id, "database": task.database}
    ).first()
    if row is None:
        return None
    return TenantTask(
        task.run_id,
        task.run_uid,
        row.schema_name,
        row.to_revision,  # a rollback's tenants each have their own
        task.database,
        planned_in_message(row.from_revision),
    )


def note_unreachable(connection: Connection, task: TenantTask, error: BaseException) -> int:
    """Say on the waiting tenants of ``task``'s run and database that their database cannot be
    reached; how many wait."""
    result = connection.execute(
        run_tenants.update()
        .where(
            run_tenants.c.run_id == task.run_id,
            run_tenants.c.status == TenantState.WAITING,
            run_tenants.c.database.is_not_distinct_from(task.database),
        )
        .values(
            updated_at=sa.func.now(),
            error_message=(
                f"waiting: database {databases.shown(task.database)} cannot be reached"
                f" ({db.first_line(error)[:500]})"
            ),
        )
    )
    return result.rowcount


Marked = tuple[int, str | None] | None
"""(the attempt's number, the tenant's from revision) of a row an error mark matched."""


def mark_failed(
    connection: Connection, task: TenantTask, error: BaseException, duration_ms: int
) -> Marked:
    return _mark_error(connection, task, TenantState.FAILED, error, duration_ms)


def mark_retrying(connection: Connection, task: TenantTask, error: BaseException) -> Marked:
    return _mark_error(connection, task, TenantState.RETRYING, error, None)


def _mark_error(
    connection: Connection,
    task: TenantTask,
    status: str,
    error: BaseException,
    duration_ms: int | None,
) -> Marked:
    error_class, message = db.describe_error(error)
    row = connection.execute(
        _MARK_ERROR,
        {
            **task.core_binds(),
            "b_status": status,
            "b_final": status in FINAL,
            "b_duration": duration_ms,
            "b_error_class": error_class,
            "b_error_message": message[:ERROR_MESSAGE_MAX],
        },
    ).first()
    _end_attempt(connection, task, status, f"{error_class}: {message}", db.sqlstate(error))
    return None if row is None else (int(row.attempts), row.from_revision)


_END_ATTEMPT = sa.text(
    "UPDATE public.migration_attempts SET finished_at = now(), outcome = :outcome,"
    " sqlstate = :sqlstate, error_message = :message WHERE run_id = :run_id"
    " AND schema_name = :schema AND finished_at IS NULL AND attempt = (SELECT attempts FROM"
    " public.migration_run_tenants WHERE run_id = :run_id AND schema_name = :schema)"
)


def _end_attempt(
    connection: Connection,
    task: TenantTask,
    outcome: str,
    message: str | None,
    sqlstate: str | None = None,
) -> None:
    """Close the tenant's current attempt, if it is open, with how it ended."""
    connection.execute(
        _END_ATTEMPT,
        {
            "run_id": task.run_id,
            "schema": task.schema,
            "outcome": outcome,
            "sqlstate": sqlstate,
            "message": message[:ERROR_MESSAGE_MAX] if message else None,
        },
    )


def counts(connection: Connection, run_id: int, schemas: Sequence[str] | None = None) -> Counts:
    """How many tenants of the run (or of ``schemas`` in it) sit in each state, in one query."""
    query = (
        sa.select(run_tenants.c.status, sa.func.count())
        .where(run_tenants.c.run_id == run_id)
        .group_by(run_tenants.c.status)
    )
    if schemas is not None:
        query = query.where(run_tenants.c.schema_name.in_(list(schemas)))
    rows = connection.execute(query).all()
    by_status = {status: int(n) for status, n in rows}
    return Counts.of(by_status)


def counts_by_database(connection: Connection, run_id: int) -> dict[str | None, Counts]:
    """``counts`` for each database the run's tenants live in (None: the control database)."""
    return counts_by_run_and_database(connection, [run_id]).get(run_id, {})


def counts_by_run_and_database(
    connection: Connection, run_ids: Sequence[int]
) -> dict[int, dict[str | None, Counts]]:
    """``counts_by_database`` of several runs, in one query."""
    rows = connection.execute(
        sa.select(
            run_tenants.c.run_id, run_tenants.c.database, run_tenants.c.status, sa.func.count()
        )
        .where(run_tenants.c.run_id.in_(list(run_ids)))
        .group_by(run_tenants.c.run_id, run_tenants.c.database, run_tenants.c.status)
        .order_by(run_tenants.c.run_id, sa.func.coalesce(run_tenants.c.database, ""))
    ).all()
    found: dict[int, dict[str | None, dict[str, int]]] = {}
    for run_id, database, status, n in rows:
        found.setdefault(run_id, {}).setdefault(database, {})[status] = int(n)
    return {
        run_id: {database: Counts.of(by_status) for database, by_status in by_database.items()}
        for run_id, by_database in found.items()
    }


def get_run(connection: Connection, run_id: int) -> Run:
    row = connection.execute(sa.select(*_RUN_COLUMNS).where(runs.c.id == run_id)).first()
    if row is None:
        raise UsageError(f"no run with id {run_id}")
    return Run(*row)


def tenants_of(
    connection: Connection, run_id: int, statuses: Sequence[str] | None = None
) -> list[RunTenant]:
    query = (
        sa.select(*_TENANT_COLUMNS)
        .where(run_tenants.c.run_id == run_id)
        .order_by(run_tenants.c.schema_name)
    )
    if statuses is not None:
        query = query.where(run_tenants.c.status.in_(list(statuses)))
    return [RunTenant(*row) for row in connection.execute(query)]


WORKING_WITHIN_S = 2.0
"""How recently a worker must have ended one of a run's tenants to count as working on it."""


def working_on(connection: Connection, run_id: int) -> list[str]:
    """The Celery node names of the workers running the run's tenants now, or that ended one
    within ``WORKING_WITHIN_S`` (``worker`` is the node name and the pool process's pid:
    ``name@host:pid``). A worker of a fleet of small migrations is between two tenants about
    half the time: found by running tenants alone, none might be, and ``status`` would ask
    every worker (1 s more)."""
    recent = sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, WORKING_WITHIN_S)
    query = (
        sa.select(run_tenants.c.worker)
        .distinct()
        .where(run_tenants.c.run_id == run_id, run_tenants.c.worker.is_not(None))
        .where(
            sa.or_(run_tenants.c.status == TenantState.RUNNING, run_tenants.c.updated_at >= recent)
        )
    )
    return sorted({worker.rpartition(":")[0] or worker for worker in connection.scalars(query)})


MOVED_SINCE = "MovedSince"
"""``error_class`` of a tenant skipped because its schema is no longer where the plan saw it."""
BACKFILL_PENDING = "BackfillPending"
"""``error_class`` of a tenant skipped because a revision of its span needs a backfill that is
not done on it yet (``requires_backfills``)."""
NOT_MIGRATABLE = (
    "SchemaMissing",
    "UnknownRevision",
    "DatabaseUnreachable",
    MOVED_SINCE,
    BACKFILL_PENDING,
)
"""``error_class`` of the tenants skipped because they cannot be migrated: the plan found them
so, or a worker found them moved since the plan or waiting for a backfill. Not a stopped run:
one with these and successes is ``partial``."""


def finalize(connection: Connection, run_id: int) -> Run | None:
    """Close the run from its tenant rows once none is pending; idempotent.

    Returns the closed run, or None while tenants are still pending. Holding the run row's lock
    makes the chord callback, its errback and a waiting producer agree on one close.
    """
    locked = connection.execute(
        sa.select(runs.c.finished_at, runs.c.cancelled_at)
        .where(runs.c.id == run_id)
        .with_for_update()
    ).first()
    if locked is None:
        raise UsageError(f"no run with id {run_id}")
    if locked.finished_at is not None:
        return get_run(connection, run_id)
    tally = counts(connection, run_id)
    if tally.pending:
        return None
    registry.apply_run_outcomes(connection, run_id)
    not_migratable = connection.execute(
        sa.select(sa.func.count()).where(
            run_tenants.c.run_id == run_id, run_tenants.c.error_class.in_(NOT_MIGRATABLE)
        )
    ).scalar_one()
    closing = states.Tally(
        tally.total, tally.succeeded, tally.failed, tally.skipped, not_migratable
    )
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(
            status=states.closing_status(closing, cancelled=locked.cancelled_at is not None),
            succeeded=tally.succeeded,
            failed=tally.failed,
            skipped=tally.skipped,
            finished_at=sa.func.now(),
        )
    )
    return get_run(connection, run_id)


def mark_skipped_if_budget_spent(
    connection: Connection, task: TenantTask, max_failures: int
) -> bool:
    """Skip this tenant, untouched, when the run already has ``max_failures`` failures."""
    failed = connection.execute(
        sa.select(sa.func.count())
        .select_from(run_tenants)
        .where(run_tenants.c.run_id == task.run_id, run_tenants.c.status == TenantState.FAILED)
    ).scalar_one()
    if failed < max_failures:
        return False
    reason = f"skipped: {failed} tenants of the run failed (--max-failures)"
    mark_skipped(connection, task, "MaxFailuresReached", reason)
    return True


def mark_moved(connection: Connection, task: TenantTask, found_at: str | None) -> str:
    """Skip this tenant, untouched: its schema is at ``found_at``, not where the plan saw it
    (another run, ``tenant upgrade``, plain Alembic moved it). The reason, naming who moved it
    when a run recorded the move."""
    by = connection.execute(
        sa.select(run_tenants.c.run_id)
        .where(
            run_tenants.c.schema_name == task.schema,
            run_tenants.c.database.is_not_distinct_from(task.database),
            run_tenants.c.status == TenantState.SUCCEEDED,
            run_tenants.c.to_revision == (found_at or BASE),
            run_tenants.c.run_id != task.run_id,
        )
        .order_by(run_tenants.c.finished_at.desc())
        .limit(1)
    ).scalar()
    who = f"run {by}" if by is not None else "hand (not by a tenantfleet run)"
    reason = (
        f"moved to {found_at or BASE} since the plan saw it at {task.planned_revision or BASE};"
        f" moved by {who}: not touched"
    )
    mark_skipped(connection, task, MOVED_SINCE, reason)
    return reason


def mark_skipped(connection: Connection, task: TenantTask, error_class: str, reason: str) -> None:
    """The tenant is skipped, untouched, for ``reason``; its attempt ends so."""
    connection.execute(
        _PENDING_ROW.values(
            status=TenantState.SKIPPED,
            finished_at=sa.func.now(),
            updated_at=sa.func.now(),
            error_class=error_class,
            error_message=reason[:ERROR_MESSAGE_MAX],
        ),
        task.core_binds(),
    )
    _end_attempt(connection, task, TenantState.SKIPPED, f"{error_class}: {reason}")


def cancel(connection: Connection, run_id: int, reason: str) -> int:
    """Stop the run: every tenant not started is recorded ``cancelled`` (its task, if it comes,
    finds it final and touches nothing); tenants in flight finish. How many were cancelled.
    A closed run is a ``UsageError``."""
    found = connection.execute(
        sa.select(runs.c.status).where(runs.c.id == run_id).with_for_update()
    ).first()
    if found is None:
        raise UsageError(f"no run with id {run_id}")
    refused = states.refusal("cancel", found.status, run_id)
    if refused is not None:
        raise UsageError(refused)
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id)
        .values(cancelled_at=sa.func.coalesce(runs.c.cancelled_at, sa.func.now()))
    )
    result = connection.execute(
        run_tenants.update()
        .where(run_tenants.c.run_id == run_id, run_tenants.c.status.in_(states.NOT_STARTED))
        .values(
            status=TenantState.CANCELLED,
            finished_at=sa.func.now(),
            updated_at=sa.func.now(),
            error_class="Cancelled",
            error_message=reason[:ERROR_MESSAGE_MAX],
        )
    )
    return result.rowcount


def skip_pending(connection: Connection, run_id: int, reason: str) -> int:
    """Mark every tenant of the run that has not started as skipped, untouched."""
    result = connection.execute(
        run_tenants.update()
        .where(run_tenants.c.run_id == run_id, run_tenants.c.status == TenantState.QUEUED)
        .values(
            status=TenantState.SKIPPED,
            finished_at=sa.func.now(),
            updated_at=sa.func.now(),
            error_class="Skipped",
            error_message=reason,
        )
    )
    return result.rowcount


def waves(connection: Connection, run_id: int) -> dict[str, int]:
    """The wave of each tenant of a run with waves (empty without)."""
    rows = connection.execute(
        sa.select(run_tenants.c.schema_name, run_tenants.c.wave).where(
            run_tenants.c.run_id == run_id, run_tenants.c.wave.is_not(None)
        )
    )
    return {schema: wave for schema, wave in rows}


def moves(connection: Connection, run_id: int) -> dict[str, tuple[str | None, str]]:
    """Each tenant's move: (the revision the plan saw it at, its target; targets differ in a
    rollback)."""
    rows = connection.execute(
        sa.select(
            run_tenants.c.schema_name, run_tenants.c.from_revision, run_tenants.c.to_revision
        ).where(run_tenants.c.run_id == run_id)
    )
    return {schema: (planned, target) for schema, planned, target in rows}


def start_wave(connection: Connection, run_id: int, wave: int) -> None:
    """The run is at ``wave``: its tenants are being sent (a held run goes on)."""
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.finished_at.is_(None))
        .values(wave=wave, status=RunState.RUNNING)
    )


def hold(connection: Connection, run_id: int) -> None:
    """The wave the run is at ended within its budget; the next waits (``RunState.HELD``)."""
    connection.execute(
        runs.update()
        .where(runs.c.id == run_id, runs.c.finished_at.is_(None))
        .values(status=RunState.HELD)
    )


def continue_run(connection: Connection, run_id: int) -> int:
    """Let an open run with waves go on past the wave it is at (``tenantfleet continue``);
    that wave. A closed run, or one without waves, is a ``UsageError``."""
    found = connection.execute(
        sa.select(runs.c.status, runs.c.wave).where(runs.c.id == run_id).with_for_update()
    ).first()
    if found is None:
        raise UsageError(f"no run with id {run_id}")
    refused = states.refusal("continue", found.status, run_id, found.wave)
    if refused is not None:
        raise UsageError(refused)
    connection.execute(runs.update().where(runs.c.id == run_id).values(continued_wave=found.wave))
    return int(found.wave)


def counts_by_wave(connection: Connection, run_id: int) -> dict[int, Counts]:
    """``counts`` for each wave of the run (empty without waves)."""
    rows = connection.execute(
        sa.select(run_tenants.c.wave, run_tenants.c.status, sa.func.count())
        .where(run_tenants.c.run_id == run_id, run_tenants.c.wave.is_not(None))
        .group_by(run_tenants.c.wave, run_tenants.c.status)
    ).all()
    found: dict[int, dict[str, int]] = {}
    for wave, status, n in rows:
        found.setdefault(wave, {})[status] = int(n)
    return {wave: Counts.of(by_status) for wave, by_status in sorted(found.items())}


def placement(connection: Connection, run_id: int) -> dict[str, str]:
    """The run's tenants that live in another database than the control one, and its key."""
    rows = connection.execute(
        sa.select(run_tenants.c.schema_name, run_tenants.c.database).where(
            run_tenants.c.run_id == run_id, run_tenants.c.database.is_not(None)
        )
    )
    return {schema: database for schema, database in rows}


def statuses(connection: Connection, run_id: int, schemas: Sequence[str]) -> dict[str, str]:
    rows = connection.execute(
        sa.select(run_tenants.c.schema_name, run_tenants.c.status).where(
            run_tenants.c.run_id == run_id, run_tenants.c.schema_name.in_(list(schemas))
        )
    )
    return {schema: status for schema, status in rows}


def list_runs(connection: Connection, limit: int) -> list[Run]:
    query = sa.select(*_RUN_COLUMNS).order_by(runs.c.id.desc()).limit(limit)
    return [Run(*row) for row in connection.execute(query)]


def latest_run_id(connection: Connection) -> int:
    run_id = connection.execute(sa.select(sa.func.max(runs.c.id))).scalar()
    if run_id is None:
        raise UsageError("no run recorded yet")
    return int(run_id)


def open_runs(connection: Connection) -> list[Run]:
    query = sa.select(*_RUN_COLUMNS).where(runs.c.finished_at.is_(None)).order_by(runs.c.id)
    return [Run(*row) for row in connection.execute(query)]


def idle_seconds(connection: Connection, run_id: int) -> float:
    """Seconds since anything happened to the run (its creation or any tenant row)."""
    last = sa.func.greatest(
        sa.select(runs.c.created_at).where(runs.c.id == run_id).scalar_subquery(),
        sa.select(sa.func.max(run_tenants.c.updated_at))
        .where(run_tenants.c.run_id == run_id)
        .scalar_subquery(),
    )
    seconds = connection.execute(
        sa.select(sa.func.extract("epoch", sa.func.now() - last))
    ).scalar_one()
    return float(seconds)


def quiet_pending(
    connection: Connection, run_id: int, quiet_for: float, retry_due_within: float = 0.0
) -> list[RunTenant]:
    """The run's pending tenants whose row has not changed for ``quiet_for`` seconds; a
    ``retrying`` one only once its next attempt, due within ``retry_due_within`` seconds of
    its row's last change, is overdue too."""

    def before(seconds: float) -> Any:
        return sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, seconds)

    retrying = run_tenants.c.status == TenantState.RETRYING
    rows = connection.execute(
        sa.select(*_TENANT_COLUMNS)
        .where(
            run_tenants.c.run_id == run_id,
            run_tenants.c.status.in_(PENDING),
            run_tenants.c.updated_at <= before(quiet_for),
            sa.or_(~retrying, run_tenants.c.updated_at <= before(quiet_for + retry_due_within)),
        )
        .order_by(run_tenants.c.schema_name)
    )
    return [RunTenant(*row) for row in rows]


class Attempt(NamedTuple):
    """One attempt at one tenant (``migration_attempts``); no end: its worker died, or is at it.
    A tuple: a report reads 100,000 of them."""

    attempt: int
    worker: str | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    sqlstate: str | None
    error_message: str | None


def attempts_of(connection: Connection, run_id: int, schema: str) -> list[Attempt]:
    """Every attempt at ``schema`` in the run, first first."""
    query = (
        sa.select(*[attempts_table.c[name] for name in Attempt._fields])
        .where(attempts_table.c.run_id == run_id, attempts_table.c.schema_name == schema)
        .order_by(attempts_table.c.attempt)
    )
    return [Attempt(*row) for row in connection.execute(query)]


def attempts_of_run(connection: Connection, run_id: int) -> list[tuple[str, Attempt]]:
    """Every attempt of the run: (tenant label, attempt), in the order they began."""
    query = (
        sa.select(
            run_tenants.c.database,
            attempts_table.c.schema_name,
            *[attempts_table.c[name] for name in Attempt._fields],
        )
        .join(
            run_tenants,
            sa.and_(
                run_tenants.c.run_id == attempts_table.c.run_id,
                run_tenants.c.schema_name == attempts_table.c.schema_name,
            ),
        )
        .where(attempts_table.c.run_id == run_id)
        .order_by(attempts_table.c.started_at)
    )
    return [
        (databases.label(database, schema), Attempt(*rest))
        for database, schema, *rest in connection.execute(query).all()
    ]


def slowest(connection: Connection, run_id: int, limit: int = 5) -> list[RunTenant]:
    query = (
        sa.select(*_TENANT_COLUMNS)
        .where(run_tenants.c.run_id == run_id, run_tenants.c.duration_ms.is_not(None))
        .order_by(run_tenants.c.duration_ms.desc())
        .limit(limit)
    )
    return [RunTenant(*row) for row in connection.execute(query)]
