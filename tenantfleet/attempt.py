"""One attempt at one tenant, in three round trips to PostgreSQL: begin, apply, commit.

On a busy machine the fleet waited on round trips more than on PostgreSQL's work: an attempt
took seven (the raw-SQL floor of the benchmark takes four). The worker's connection is in
autocommit mode at the driver level, so BEGIN and COMMIT travel inside other statements:

1. ``begin``: mark the tenant ``running`` and commit that at once (progress, committed without
   waiting for the WAL flush), then BEGIN, confine the session to the schema, take the schema's
   lock and read, under it, the tenant's run row and the schema's version rows;
2. ``apply``: the upgrade's SQL (rendered once per process, or Alembic online when it cannot
   be) and the success mark, in the same transaction; the mark matches no row when another
   delivery finished the tenant meanwhile, and then everything is rolled back;
3. ``COMMIT``.

``open_transaction`` rolls back whatever is open when the block raises.
"""

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import psycopg2 as pg_driver
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ProgrammingError

from tenantfleet import alembic_runtime, db, runs
from tenantfleet.config import Settings

UNDEFINED_TABLE = "42P01"


def _read_under_lock(versions: str) -> str:
    """The run row (one row, NULLs when the run has no such tenant) with the version rows."""
    return (
        f"SELECT r.attempts, r.status, {versions} FROM (SELECT 1) AS one"
        f" LEFT JOIN ({runs.TENANT_ROW_SQL}) AS r ON true"
    )


_BEGIN_SQL = sa.text(
    "SELECT set_config('synchronous_commit', 'off', true);"
    f" {runs.MARK_RUNNING_SQL}; COMMIT; BEGIN; {alembic_runtime.CONFINE}; "
    + _read_under_lock("v.version_num")
    + f" LEFT JOIN {alembic_runtime.VERSION_TABLE} AS v ON true"
)
_BEGIN_WITHOUT_VERSION_TABLE_SQL = sa.text(
    f"ROLLBACK; BEGIN; {alembic_runtime.CONFINE}; " + _read_under_lock("NULL")
)


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


def begin(
    connection: Connection, run_id: int, schema: str, worker: str, settings: Settings
) -> Started:
    """Round trip 1: the running mark (committed), then BEGIN, confine, lock, and read."""
    params = {
        "run_id": run_id,
        "worker": worker,
        **alembic_runtime.confine_params(schema, settings),
    }
    versions: list[str] | None
    try:
        rows = connection.execute(_BEGIN_SQL, params).all()
        versions = [version for _, _, version in rows if version is not None]
    except ProgrammingError as exc:
        if db.sqlstate(exc) != UNDEFINED_TABLE:
            raise
        # no version table (a new tenant): the running mark is committed, the rest rolled back
        rows = connection.execute(_BEGIN_WITHOUT_VERSION_TABLE_SQL, params).all()
        versions = None
    attempts, status, _ = rows[0]
    return Started(attempts, status, versions)


def apply(
    connection: Connection,
    started: Started,
    run_id: int,
    schema: str,
    target: str,
    elapsed_ms: int,
) -> bool:
    """Round trips 2 and 3: upgrade, mark succeeded, COMMIT. False (all rolled back) when the
    row was no longer pending: another delivery finished this tenant meanwhile."""
    params: dict[str, Any] = {
        "run_id": run_id,
        "schema": schema,
        "from_revision": started.from_revision,
        "elapsed_ms": elapsed_ms,
    }
    sql = alembic_runtime.upgrade_sql(started.versions, target)
    if sql is None:
        alembic_runtime.migrate_online(connection, schema, target)
        marked = connection.execute(sa.text(runs.MARK_SUCCEEDED_SQL), params)
    else:
        statements = [alembic_runtime.driver_sql(sql)] if sql else []
        marked = connection.exec_driver_sql(
            ";\n".join([*statements, _driver_form(runs.MARK_SUCCEEDED_SQL)]), params
        )
    succeeded = marked.rowcount == 1
    end(connection, commit=succeeded)
    return succeeded


def end(connection: Connection, *, commit: bool) -> None:
    """COMMIT or ROLLBACK the transaction ``begin`` opened."""
    connection.exec_driver_sql("COMMIT" if commit else "ROLLBACK")


@cache
def _driver_form(sql: str) -> str:
    """``sql``'s ``:name`` binds in psycopg2's own form, to follow rendered SQL in one string."""
    return str(sa.text(sql).compile(dialect=pg_driver.dialect()))
