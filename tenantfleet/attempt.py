"""One attempt at one tenant: one round trip to PostgreSQL when it goes as expected, else 2-3.

On a busy machine the fleet waited on round trips more than on PostgreSQL's work: an attempt
took seven at first (the raw-SQL floor of the benchmark takes four). The worker's connection is
in autocommit mode at the driver level, so BEGIN and COMMIT travel inside other statements.

``at_once``, the common case: the task's message carries the revision the plan saw the schema
at, and the attempt sends everything in one string: the ``running`` mark, committed at once
(progress, without waiting for the WAL flush); BEGIN; confine the session to the schema and take
its lock; check, under the lock, that the schema is at that revision and the tenant still
pending; the upgrade's SQL (rendered once per process); the success mark; COMMIT. When the check
fails it raises (``runs.NOT_PENDING``, or an undefined table without a version table): the
transaction aborts before the upgrade, and the attempt goes the long way, with its running mark
already in:

1. ``begin``: the running mark (unless ``at_once`` committed it), BEGIN, confine, lock, and read,
   under the lock, the tenant's run row and the schema's version rows; a schema that is no
   longer where the plan saw it (``Started.moved``) is left untouched and the tenant skipped;
2. ``apply``: the upgrade's SQL (or Alembic online when it cannot be replayed), the success mark
   and COMMIT; the mark raises when something else finished the tenant meanwhile, which aborts
   the transaction before the COMMIT, and it is then rolled back.

``open_transaction`` rolls back whatever is open when the block raises.
"""

import time
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
from tenantfleet.sql import query

UNDEFINED_TABLE = "42P01"


def _driver(sql: str) -> str:
    """``sql``'s ``:name`` binds in psycopg2's own form, so rendered SQL can follow it."""
    return str(sa.text(sql).compile(dialect=pg_driver.dialect()))


_MARK_RUNNING = (
    f"{query('take_slot')}; {query('commit_asynchronously')}; {query('mark_running')}; COMMIT"
)
"""A slot of the tenant's database (or ``locks.NO_SLOT``, before anything else), then progress:
the attempt begins."""
_LOCK = f"BEGIN; {query('confine')}"
_BEGIN_SQL = sa.text(f"{_MARK_RUNNING}; {_LOCK}; {query('read_under_lock')}")
_RESTART_SQL = sa.text(f"ROLLBACK; {_LOCK}; {query('read_under_lock')}")
_RESTART_WITHOUT_VERSION_TABLE_SQL = sa.text(
    f"ROLLBACK; {_LOCK}; {query('read_under_lock_without_versions')}"
)
_AT_PLANNED = _driver(f"{_MARK_RUNNING}; {_LOCK}; {query('expect_planned_and_pending')}")
_MARK_AND_COMMIT = _driver(
    f"{query('mark_succeeded')};\nCOMMIT; {query('free_slot')}; {query('any_waiting')}"
)
"""The success mark, then COMMIT, the slot given back, and whether tenants wait for one; the
mark raises instead when the row is no longer pending, so the COMMIT is never reached (``end``
gives the slot back then)."""

_waiting_after_last = True


def someone_waits() -> bool:
    """Whether tenants of the last attempt's run and database waited for a slot when it gave
    its own back: True unless the attempt's last statement, read after the slot was given back,
    said none did (``open_transaction`` and ``open_pair`` start every attempt at True). Only
    then does the worker look for one to take."""
    return _waiting_after_last


_attempt_of_last: int | None = None
_from_of_last: str | None = None


def last_attempt() -> tuple[int | None, str | None]:
    """(number, from revision) of the last attempt that ended through a success mark (None,
    None otherwise): for its log line."""
    return _attempt_of_last, _from_of_last


def _note_from(revision: str | None) -> None:
    global _from_of_last
    _from_of_last = revision


def _note_waiting(seen: Any) -> None:
    """What the attempt's last statement read (``any_waiting`` in ``sql/queries.sql``), or None
    at the start of an attempt."""
    global _waiting_after_last, _attempt_of_last, _from_of_last
    _waiting_after_last = seen is None or seen[0] is not False
    _attempt_of_last = None if seen is None else seen[1]
    if seen is None:
        _from_of_last = None


class Quick(Enum):
    """How ``at_once`` went."""

    DONE = "migrated and recorded"
    MISSED = "the check did not hold: the running mark is committed, the rest rolled back"
    NOT_TRIED = "no planned revision in the message, or a span that cannot be replayed"


@dataclass(frozen=True)
class Started:
    """The tenant as the attempt found it, under the schema's lock."""

    attempts: int | None
    """How many attempts began, this one included; None when the run has no such tenant."""
    status: str | None
    versions: list[str] | None
    """The schema's version rows; None when it has no version table."""
    planned: str | None = None
    """The revision the plan saw the schema at (the run row's ``from_revision``)."""

    @property
    def pending(self) -> bool:
        return self.status in runs.PENDING

    @property
    def from_revision(self) -> str | None:
        """Where the schema is now."""
        return alembic_runtime.current_revision(self.versions)

    def moved(self, task: runs.TenantTask) -> bool:
        """Whether the schema is no longer where the plan saw it, so the attempt must touch
        nothing. Elsewhere is this run's own work only where an earlier attempt of it may have
        committed the schema without its mark: a tenant of another database at the target (its
        schema commits before the control database's mark), or a span that commits part way
        anywhere on its way; otherwise the schema and the mark commit together."""
        now = self.from_revision
        if now == self.planned:
            return False
        if (self.attempts or 0) <= 1:
            return True
        if alembic_runtime.commits_part_way(self.planned, task.target):
            return now not in alembic_runtime.on_the_way(self.planned, task.target)
        return not (now == task.target and task.database is not None)


@contextmanager
def open_transaction(connection: Connection) -> Iterator[None]:
    """Roll back what the block left open if it raises (the driver does not know about it)."""
    _note_waiting(None)
    try:
        yield
    except BaseException:
        with suppress(Exception):  # a broken connection is dropped by the pool anyway
            end(connection, commit=False)
        raise


def _begin_params(task: runs.TenantTask, worker: str, settings: Settings) -> dict[str, Any]:
    """The binds of the slot, the running mark, the confinement and the read under the lock."""
    return {
        **task.binds(),
        **task.slot_binds(settings),
        "worker": worker,
        **alembic_runtime.confine_params(task.schema, settings),
    }


def _planned(task: runs.TenantTask) -> tuple[str, str] | None:
    """(the revision the plan saw the schema at, as the message says, the span's SQL from
    there), when the message says it, the schema had a revision and the span can be
    replayed."""
    revision = task.planned_revision
    if not revision or alembic_runtime.span_requires(revision, task.target):
        return None  # the long way: it checks the backfills the span needs, under the lock
    sql = alembic_runtime.replayable_sql(revision, task.target)
    if sql is None:  # a span that commits part way: in one transaction where its tables are small
        sql = alembic_runtime.small_span_sql(revision, task.target)
    return (revision, sql) if sql else None


def at_once(
    connection: Connection,
    task: runs.TenantTask,
    worker: str,
    settings: Settings,
    max_attempts: int,
) -> Quick:
    """The whole attempt in one round trip, if the schema is where the plan saw it."""
    planned = _planned(task)
    if planned is None:
        return Quick.NOT_TRIED
    revision, sql = planned
    _note_from(revision)
    params = {
        **_begin_params(task, worker, settings),
        "revision": revision,
        "max_attempts": max_attempts,
        "from_revision": revision,
        "elapsed_ms": 0,
    }
    entries = alembic_runtime.backfill_entries_sql(revision, task.target)
    statements = [_AT_PLANNED, replay.driver_sql(sql), *entries, _MARK_AND_COMMIT]
    try:
        result = connection.exec_driver_sql(";\n".join(statements), params)
    except DBAPIError as exc:
        if db.sqlstate(exc) not in (runs.NOT_PENDING, UNDEFINED_TABLE):
            raise
        return Quick.MISSED
    _note_waiting(result.first())
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
        versions = [version for *_, version in rows if version is not None]
    except ProgrammingError as exc:
        if db.sqlstate(exc) != UNDEFINED_TABLE:
            raise
        # no version table (a new tenant): the running mark is committed, the rest rolled back
        rows = connection.execute(_RESTART_WITHOUT_VERSION_TABLE_SQL, params).all()
        versions = None
    attempts, status, planned, _ = rows[0]
    return Started(attempts, status, versions, planned)


def apply(connection: Connection, found: Started, task: runs.TenantTask, since: float) -> bool:
    """Upgrade, mark succeeded, COMMIT. False (all rolled back) when the row was no longer
    pending: another delivery finished this tenant meanwhile. The recorded duration runs from
    ``since`` (``time.monotonic()`` when the attempt began) to the mark, the upgrade included:
    measured after Alembic online ran, or, for replayed SQL sent with the mark, completed by
    the mark itself (the statements of one string share its receipt time)."""
    _note_from(found.from_revision)
    sql = alembic_runtime.upgrade_sql(found.versions, task.target)
    if sql is None:
        alembic_runtime.migrate_online(connection, task.schema, task.target)
    params: dict[str, Any] = {
        **task.binds(),
        "from_revision": found.from_revision,
        "elapsed_ms": ms_since(since),
    }
    statements = [replay.driver_sql(sql)] if sql else []
    statements += alembic_runtime.backfill_entries_sql(found.from_revision, task.target)
    return _then_mark(connection, ";\n".join([*statements, _MARK_AND_COMMIT]), params)


def ms_since(since: float) -> int:
    """Whole milliseconds since ``since`` (``time.monotonic()``)."""
    return int((time.monotonic() - since) * 1000)


def _then_mark(connection: Connection, sql: str, params: dict[str, Any]) -> bool:
    """``sql``, which ends with ``_MARK_AND_COMMIT``; False (rolled back, slot given back) when
    the mark found the row no longer pending."""
    try:
        result = connection.exec_driver_sql(sql, params)
        _note_waiting(result.first())
    except DBAPIError as exc:
        if db.sqlstate(exc) != runs.NOT_PENDING:
            raise
        end(connection, commit=False)
        return False
    return True


def mark_done(
    connection: Connection, task: runs.TenantTask, from_revision: str | None, elapsed_ms: int
) -> bool:
    """After a span ran outside ``begin``'s transaction (``tenantfleet.stepwise``): the success
    mark, COMMIT, the slot given back. False when the row was no longer pending."""
    _note_from(from_revision)
    params = {**task.binds(), "from_revision": from_revision, "elapsed_ms": elapsed_ms}
    return _then_mark(connection, f"BEGIN;\n{_MARK_AND_COMMIT}", params)


def end(connection: Connection, *, commit: bool) -> None:
    """COMMIT or ROLLBACK the transaction ``begin`` opened; give the slot back."""
    connection.exec_driver_sql(f"{'COMMIT' if commit else 'ROLLBACK'}; {query('free_slot')}")


# -- a tenant of another database ----------------------------------------------------------
# Two connections: the control database's (run rows, slot, the tenant's mark lock) and the
# tenant database's (schema lock, version rows, the upgrade). The tenant's transaction commits
# inside the control one that marks it succeeded: if the control commit is lost after the
# tenant's, the row stays pending with the schema at the target, and the next attempt finds it
# there under the lock and only marks it (no two-phase commit needed, nothing migrated twice).
#
# ``remote_at_once``, the common case, in three round trips: (1) control: slot, mark lock,
# running mark (committed), then BEGIN and the succeeded mark, left open; (2) the tenant's
# database: BEGIN, confine and lock, a check that the schema is at the planned revision (a
# division by zero otherwise: the shard databases need no function of ours), the upgrade,
# COMMIT; (3) control: the attempt's duration, COMMIT, slot and mark lock given back. When the
# check does not hold, both sides roll back and the attempt goes the long way
# (``remote_begin``, ``remote_apply``) with its running mark, slot and lock kept.

DIVISION_BY_ZERO = "22012"
_REMOTE_START_SQL = (
    f"{query('take_slot')}; COMMIT; {query('take_mark_lock')};"
    f" {query('commit_asynchronously')}; {query('mark_running')}; COMMIT"
)
"""Control: a slot, the tenant's mark lock (``runs.NOT_PENDING`` when another worker holds it),
the running mark."""
_REMOTE_START = sa.text(f"{_REMOTE_START_SQL}; {query('tenant_row')}")
_REMOTE_ROW = sa.text(query("tenant_row"))
_REMOTE_MARK_SQL = f"BEGIN; {query('commit_asynchronously')}; {query('mark_succeeded')}"
"""Control, inside a transaction left open until the tenant's COMMIT is through. Not durable at
once: a mark lost in a crash is made again by the next attempt, from the schema itself."""
_REMOTE_MARK = _driver(_REMOTE_MARK_SQL)
_REMOTE_AT_ONCE = sa.text(f"{_REMOTE_START_SQL}; {_REMOTE_MARK_SQL}; {query('tenant_row')}")
_REMOTE_AT_PLANNED = _driver(f"{_LOCK}; {query('expect_planned')}")
_REMOTE_LOCK = sa.text(f"{_LOCK}; {query('read_versions_under_lock')}")
_REMOTE_LOCK_WITHOUT_VERSION_TABLE = sa.text(f"ROLLBACK; {_LOCK}")
_REMOTE_RELEASE_SQL = f"{query('free_slot')}; {query('release_mark_lock')}"
_REMOTE_RELEASE = sa.text(_REMOTE_RELEASE_SQL)
_REMOTE_DONE = _driver(
    f"{query('note_duration')}; COMMIT; {_REMOTE_RELEASE_SQL}; {query('any_waiting')}"
)
"""Control, once the tenant's COMMIT is through: the whole attempt's duration, COMMIT, the slot
and the mark lock given back, and whether tenants wait for one."""

BUSY = "busy elsewhere"
"""``Started.status`` of a tenant another worker holds the mark lock of: not pending here."""


@dataclass(frozen=True)
class Pair:
    """A tenant of another database: the control connection and the tenant database's."""

    control: Connection
    tenant: Connection


@contextmanager
def open_pair(pair: Pair, task: runs.TenantTask) -> Iterator[None]:
    """If the block raises, roll back what is open on both and give back the slot and the mark
    lock (a broken connection loses them with its session anyway)."""
    _note_waiting(None)
    try:
        yield
    except BaseException:
        with suppress(Exception):
            pair.tenant.exec_driver_sql("ROLLBACK")
        with suppress(Exception):
            pair.control.exec_driver_sql("ROLLBACK")
            pair.control.execute(_REMOTE_RELEASE, {"label": task.label})
        raise


def _remote_params(task: runs.TenantTask, worker: str, settings: Settings) -> dict[str, Any]:
    return {**task.binds(), **task.slot_binds(settings), "worker": worker, "label": task.label}


def remote_at_once(
    pair: Pair,
    task: runs.TenantTask,
    worker: str,
    settings: Settings,
    max_attempts: int,
    started: float,
) -> Quick | Started:
    """The whole attempt in three round trips if the schema is where the plan saw it. When
    the row is not pending (or not this run's, or past the poison cap) the ``Started`` that
    says so, with both sides rolled back."""
    planned = _planned(task)
    if planned is None:
        return Quick.NOT_TRIED
    revision, sql = planned
    _note_from(revision)
    params = {
        **_remote_params(task, worker, settings),
        "from_revision": revision,
        "elapsed_ms": 0,
    }
    try:
        row = pair.control.execute(_REMOTE_AT_ONCE, params).first()
    except DBAPIError as exc:
        if db.sqlstate(exc) != runs.NOT_PENDING:
            raise
        pair.control.exec_driver_sql("ROLLBACK")
        found = pair.control.execute(_REMOTE_ROW, task.binds()).first()
        return Started(None, None, None) if found is None else Started(0, BUSY, None)
    assert row is not None  # the mark matched the row: it exists
    if row.attempts > max_attempts:  # the poison cap: pending, but given up
        pair.control.exec_driver_sql("ROLLBACK")
        return Started(row.attempts, "running", None)
    confine = {**alembic_runtime.confine_params(task.schema, settings), "revision": revision}
    try:
        pair.tenant.exec_driver_sql(
            f"{_REMOTE_AT_PLANNED};\n{replay.driver_sql(sql)};\nCOMMIT", confine
        )
    except DBAPIError as exc:
        if db.sqlstate(exc) not in (DIVISION_BY_ZERO, UNDEFINED_TABLE):
            raise
        pair.tenant.exec_driver_sql("ROLLBACK")
        pair.control.exec_driver_sql("ROLLBACK")
        return Quick.MISSED
    _finish_remote(pair, task, ms_since(started))
    return Quick.DONE


def _finish_remote(pair: Pair, task: runs.TenantTask, elapsed_ms: int) -> None:
    result = pair.control.exec_driver_sql(
        _REMOTE_DONE, {**task.binds(), "elapsed_ms": elapsed_ms, "label": task.label}
    )
    _note_waiting(result.first())


def remote_begin(
    pair: Pair, task: runs.TenantTask, worker: str, settings: Settings, *, marked: bool = False
) -> Started:
    """Control: slot, mark lock, running mark and the row (unless ``marked``: only the row);
    tenant database: BEGIN, confine, lock, and the version rows read under the lock. A tenant
    another worker is migrating right now reads as not pending."""
    try:
        if marked:
            row = pair.control.execute(_REMOTE_ROW, task.binds()).first()
        else:
            row = pair.control.execute(
                _REMOTE_START, _remote_params(task, worker, settings)
            ).first()
    except DBAPIError as exc:
        if db.sqlstate(exc) != runs.NOT_PENDING:
            raise
        return Started(0, BUSY, None)
    if row is None:
        return Started(None, None, None)
    confine = alembic_runtime.confine_params(task.schema, settings)
    versions: list[str] | None
    try:
        rows = pair.tenant.execute(_REMOTE_LOCK, confine).all()
        versions = [version for (version,) in rows if version is not None]
    except ProgrammingError as exc:
        if db.sqlstate(exc) != UNDEFINED_TABLE:
            raise
        pair.tenant.execute(_REMOTE_LOCK_WITHOUT_VERSION_TABLE, confine)
        versions = None
    return Started(row.attempts, row.status, versions, row.from_revision)


def remote_apply(pair: Pair, found: Started, task: runs.TenantTask, since: float) -> bool:
    """Upgrade in the tenant database; mark succeeded in the control database (its transaction
    open); COMMIT the tenant's, then the control's, and give back slot and mark lock. False
    (both rolled back) when the row was no longer pending. The duration recorded runs from
    ``since`` to the tenant's COMMIT."""
    _note_from(found.from_revision)
    sql = alembic_runtime.upgrade_sql(found.versions, task.target)
    if sql is None:
        alembic_runtime.migrate_online(pair.tenant, task.schema, task.target)
    elif sql:
        pair.tenant.exec_driver_sql(replay.driver_sql(sql))
    if not _remote_mark(pair, task, found.from_revision, ms_since(since)):
        return False
    pair.tenant.exec_driver_sql("COMMIT")
    _finish_remote(pair, task, ms_since(since))
    return True


def remote_mark_done(
    pair: Pair, task: runs.TenantTask, from_revision: str | None, elapsed_ms: int
) -> bool:
    """``mark_done`` for a tenant of another database: the mark, COMMIT, slot and mark lock
    given back."""
    _note_from(from_revision)
    if not _remote_mark(pair, task, from_revision, elapsed_ms):
        return False
    _finish_remote(pair, task, elapsed_ms)
    return True


def _remote_mark(
    pair: Pair, task: runs.TenantTask, from_revision: str | None, elapsed_ms: int
) -> bool:
    """The success mark in the control database, its transaction left open; False (both
    sides rolled back, slot and mark lock given back) when the row was no longer pending."""
    params = {**task.binds(), "from_revision": from_revision, "elapsed_ms": elapsed_ms}
    try:
        pair.control.exec_driver_sql(_REMOTE_MARK, params)
    except DBAPIError as exc:
        if db.sqlstate(exc) != runs.NOT_PENDING:
            raise
        remote_end(pair, task, commit=False)
        return False
    return True


def remote_end(pair: Pair, task: runs.TenantTask, *, commit: bool) -> None:
    """COMMIT or ROLLBACK what ``remote_begin`` opened in both databases (the budget skip
    commits the control side's mark; the tenant's side has changed nothing); give back the slot
    and the mark lock."""
    pair.tenant.exec_driver_sql("ROLLBACK")
    pair.control.exec_driver_sql("COMMIT" if commit else "ROLLBACK")
    pair.control.execute(_REMOTE_RELEASE, {"label": task.label})
