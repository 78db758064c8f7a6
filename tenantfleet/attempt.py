"""One attempt at one tenant: one round trip to PostgreSQL when it goes as expected, else 2-3.

On a busy machine the fleet waited on round trips more than on PostgreSQL's work: an attempt
took seven at first (the raw-SQL floor of the benchmark takes four). The worker's connection is
in autocommit mode at the driver level, so BEGIN and COMMIT travel inside other statements.

``at_once``, the common case: most tenants of a run start from the same revision, so a process
guesses the revision the last tenant it migrated to the same target started from, and sends
everything in one string: the ``running`` mark, committed at once (progress, without waiting for
the WAL flush); BEGIN; confine the session to the schema and take its lock; check, under the
lock, that the schema is at the guessed revision and the tenant still pending; the upgrade's SQL
(rendered once per process); the success mark; COMMIT. When the check fails it raises
(``runs.NOT_PENDING``, or an undefined table without a version table): the transaction aborts
before the upgrade, and the attempt goes the long way, with its running mark already in:

1. ``begin``: the running mark (unless ``at_once`` committed it), BEGIN, confine, lock, and read,
   under the lock, the tenant's run row and the schema's version rows;
2. ``apply``: the upgrade's SQL (or Alembic online when it cannot be replayed), the success mark
   and COMMIT; the mark raises when something else finished the tenant meanwhile, which aborts
   the transaction before the COMMIT, and it is then rolled back.

``open_transaction`` rolls back whatever is open when the block raises.
"""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2 as pg_driver
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, ProgrammingError

from tenantfleet import alembic_runtime, db, replay, runs
from tenantfleet.config import Settings

UNDEFINED_TABLE = "42P01"


def _read_under_lock(versions: str) -> str:
    """The run row (one row, NULLs when the run has no such tenant) with the version rows."""
    return (
        f"SELECT r.attempts, r.status, {versions} FROM (SELECT 1) AS one"
        f" LEFT JOIN ({runs.TENANT_ROW_SQL}) AS r ON true"
    )


def _driver(sql: str) -> str:
    """``sql``'s ``:name`` binds in psycopg2's own form, so rendered SQL can follow it."""
    return str(sa.text(sql).compile(dialect=pg_driver.dialect()))


_MARK_RUNNING = (
    f"SELECT set_config('synchronous_commit', 'off', true); {runs.MARK_RUNNING_SQL}; COMMIT"
)
_LOCK = f"BEGIN; {alembic_runtime.CONFINE}"
_READ_WITH_VERSIONS = (
    _read_under_lock("v.version_num") + f" LEFT JOIN {alembic_runtime.VERSION_TABLE} AS v ON true"
)
_BEGIN_SQL = sa.text(f"{_MARK_RUNNING}; {_LOCK}; {_READ_WITH_VERSIONS}")
_RESTART_SQL = sa.text(f"ROLLBACK; {_LOCK}; {_READ_WITH_VERSIONS}")
_RESTART_WITHOUT_VERSION_TABLE_SQL = sa.text(f"ROLLBACK; {_LOCK}; " + _read_under_lock("NULL"))
_AS_GUESSED = _driver(
    f"{_MARK_RUNNING}; {_LOCK}; SELECT public.tenantfleet_expect("
    f"{alembic_runtime.AT_REVISION_SQL} AND {runs.STILL_PENDING_SQL},"
    " 'the schema is not at the guessed revision, or the tenant is no longer pending')"
)
_MARK_AND_COMMIT = _driver(runs.MARK_SUCCEEDED_SQL) + ";\nCOMMIT"
"""The success mark, then COMMIT; the mark raises instead when the row is no longer pending, so
the COMMIT is never reached."""

_last_from_revision: dict[str, str] = {}
"""Per target, the revision the last tenant this process migrated to it started from."""


class Quick(Enum):
    """How ``at_once`` went."""

    DONE = "migrated and recorded"
    MISSED = "the guess did not hold: the running mark is committed, the rest rolled back"
    NOT_TRIED = "nothing to guess from, or a span that cannot be replayed: nothing sent"


@dataclass(frozen=True)
class Started:
    """The tenant as the attempt found it, under the schema's lock."""

    attempts: int | None
    """How many attempts began, this one included; None when the run has no such tenant."""
    status: str | None
    versions: list[str] | None
    """The schema's version rows; None when it has no version table."""

    @property
    def pending(self) -> bool:
        return self.status in runs.PENDING

    @property
    def from_revision(self) -> str | None:
        return alembic_runtime.current_revision(self.versions)


@contextmanager
def open_transaction(connection: Connection) -> Iterator[None]:
    """Roll back what the block left open if it raises (the driver does not know about it)."""
    try:
        yield
    except BaseException:
        with suppress(Exception):  # a broken connection is dropped by the pool anyway
            end(connection, commit=False)
        raise


def _begin_params(task: runs.TenantTask, worker: str, settings: Settings) -> dict[str, Any]:
    """The binds of the running mark, the confinement and the read under the lock."""
    return {
        **task.binds(),
        "worker": worker,
        **alembic_runtime.confine_params(task.schema, settings),
    }


def at_once(
    connection: Connection,
    task: runs.TenantTask,
    worker: str,
    settings: Settings,
    max_attempts: int,
) -> Quick:
    """The whole attempt in one round trip, if the schema is at the guessed revision."""
    guess = _last_from_revision.get(task.target)
    sql = alembic_runtime.replayable_sql(guess, task.target) if guess else None
    if not sql:
        return Quick.NOT_TRIED
    params = {
        **_begin_params(task, worker, settings),
        "revision": guess,
        "max_attempts": max_attempts,
        "from_revision": guess,
        "elapsed_ms": 0,
    }
    statements = [_AS_GUESSED, replay.driver_sql(sql), _MARK_AND_COMMIT]
    try:
        connection.exec_driver_sql(";\n".join(statements), params)
    except DBAPIError as exc:
        if db.sqlstate(exc) not in (runs.NOT_PENDING, UNDEFINED_TABLE):
            raise
        return Quick.MISSED
    return Quick.DONE


def begin(
    connection: Connection,
    task: runs.TenantTask,
    worker: str,
    settings: Settings,
    *,
    marked: bool = False,
) -> Started:
    """The running mark (unless ``marked``: committed already), then BEGIN, confine, lock, and
    read under the lock."""
    params = _begin_params(task, worker, settings)
    versions: list[str] | None
    try:
        rows = connection.execute(_RESTART_SQL if marked else _BEGIN_SQL, params).all()
        versions = [version for _, _, version in rows if version is not None]
    except ProgrammingError as exc:
        if db.sqlstate(exc) != UNDEFINED_TABLE:
            raise
        # no version table (a new tenant): the running mark is committed, the rest rolled back
        rows = connection.execute(_RESTART_WITHOUT_VERSION_TABLE_SQL, params).all()
        versions = None
    attempts, status, _ = rows[0]
    return Started(attempts, status, versions)


def apply(connection: Connection, started: Started, task: runs.TenantTask, elapsed_ms: int) -> bool:
    """Upgrade, mark succeeded, COMMIT. False (all rolled back) when the row was no longer
    pending: another delivery finished this tenant meanwhile."""
    params: dict[str, Any] = {
        **task.binds(),
        "from_revision": started.from_revision,
        "elapsed_ms": elapsed_ms,
    }
    sql = alembic_runtime.upgrade_sql(started.versions, task.target)
    if sql is None:
        alembic_runtime.migrate_online(connection, task.schema, task.target)
    statements = [replay.driver_sql(sql)] if sql else []
    try:
        connection.exec_driver_sql(";\n".join([*statements, _MARK_AND_COMMIT]), params)
    except DBAPIError as exc:
        if db.sqlstate(exc) != runs.NOT_PENDING:
            raise
        end(connection, commit=False)
        return False
    if started.versions is not None and len(started.versions) == 1:
        _last_from_revision[task.target] = started.versions[0]
    return True


def end(connection: Connection, *, commit: bool) -> None:
    """COMMIT or ROLLBACK the transaction ``begin`` opened."""
    connection.exec_driver_sql("COMMIT" if commit else "ROLLBACK")
