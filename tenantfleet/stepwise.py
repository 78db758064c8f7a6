"""Revisions that cannot run in one transaction: ``op.get_context().autocommit_block()``.

``CREATE INDEX CONCURRENTLY`` (and a few other statements) refuse to run inside a transaction,
so a span holding such a revision cannot be the tenant's one transaction. It runs here instead,
the way Alembic runs it: one transaction per revision, the block in autocommit between them,
on a connection of its own that holds the schema's lock (a session lock) throughout. When every
revision of the span opted in to replay (``tenantfleet.replay``), its SQL is rendered once per
process and sent in those same transactions and statements (or, when its blocks only build
indexes concurrently on tables of at most ``small_index_rows`` rows, as one transaction with
the indexes built in it: all or nothing again); else Alembic runs it online.

The guarantee is weaker, and honest about it: each revision before the block commits; the
block commits statement by statement; what follows it commits with the version row. When the
span fails part way, the tenant is left at the last revision that committed (``reached``),
an ``INVALID`` index left by a failed concurrent build is dropped (a retry can build it
again), and the worker records the tenant ``failed`` with the revision it reached. A retry
runs the rest. A block that succeeded before a later statement of the same revision failed
has committed: write such blocks so that they can run twice (``IF NOT EXISTS``).
"""

from collections.abc import Collection, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from alembic.runtime.environment import EnvironmentContext
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantfleet import alembic_runtime, db, locks, replay
from tenantfleet.config import Settings

_SESSION_CONFINE = sa.text(
    "SELECT set_config('search_path', quote_ident(:schema), false),"
    " set_config('lock_timeout', :lock_timeout, false),"
    " set_config('statement_timeout', :statement_timeout, false),"
    " set_config('synchronous_commit', 'off', false),"
    f" pg_advisory_lock({locks.key_sql(':schema')})"
)
"""Confine the session (not a transaction) to the schema and take its lock for the session.
Its commits (a revision's, each phase of a concurrent index build's) do not wait for the WAL
to reach the disk: the success mark that follows on the attempt's own connection does, and
flushes them with it (the WAL is one sequence). A crash before the mark leaves the tenant at a
revision of its span, not marked, which the next attempt goes on from."""
UNDEFINED_TABLE = "42P01"
_RELEASE = sa.text(f"SELECT pg_advisory_unlock({locks.key_sql(':schema')}); RESET ALL")
_INVALID_INDEXES = sa.text(
    "SELECT c.relname FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
    " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
    " WHERE n.nspname = :schema AND NOT i.indisvalid ORDER BY c.relname"
)


@dataclass
class Outcome:
    """How the span went: from where, to where it reached, and what was cleaned up."""

    from_revision: str | None
    reached: str | None
    error: Exception | None = None
    dropped: list[str] = field(default_factory=list)
    """Invalid indexes a failed concurrent build left, dropped."""
    moved: bool = False
    """The schema was not at a revision the span may start from: nothing was run."""


def run(
    engine: Engine,
    schema: str,
    target: str,
    settings: Settings,
    starts: Collection[str | None],
    run_id: int | None = None,
) -> Outcome:
    """Bring ``schema`` to ``target`` one revision at a time, holding its lock for the session,
    if it is at one of ``starts``; the ``Outcome`` (its ``error`` set when a revision failed:
    the tenant stays at ``reached``; ``moved`` when it was elsewhere: nothing ran). With
    ``run_id`` (the ledger is in this database), the span's backfills are entered in the ledger
    with the triggers, small tables filled there (``alembic_runtime.backfill_entries_sql``)."""
    params = alembic_runtime.confine_params(schema, settings)
    with engine.connect() as plain:  # in autocommit: one round trip a statement, no BEGIN
        connection = plain.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(_SESSION_CONFINE, params)
        try:
            return _steps(connection, schema, target, starts, run_id, settings.small_index_rows)
        finally:
            connection.execute(_RELEASE, params)
            connection.commit()  # ends SQLAlchemy's own bookkeeping (nothing is open)


def _steps(
    connection: Connection,
    schema: str,
    target: str,
    starts: Collection[str | None],
    run_id: int | None,
    small_index_rows: int,
) -> Outcome:
    """On the session's autocommit ``connection``: each transaction says BEGIN and COMMIT."""
    from_revision = _current(connection)
    if from_revision not in starts:
        return Outcome(from_revision, from_revision, moved=True)
    invalid_before = _invalid_indexes(connection, schema)
    outcome = Outcome(from_revision, from_revision)
    try:
        closing = _closing(from_revision, target, run_id)
        binds = {"run_id": run_id, "schema": schema}
        rendered = alembic_runtime.replayable_steps(from_revision, target)
        if rendered is not None and _small(connection, rendered, small_index_rows):
            whole = replay.in_one_transaction(rendered)
            sql = ";\n".join([*(replay.driver_sql(w) for w in whole), *closing])
            connection.exec_driver_sql(f"BEGIN;\n{sql};\nCOMMIT", binds)  # all or nothing
        else:
            if rendered is None:
                _migrate(connection, schema, target)
            else:
                _replay(connection, rendered)
            if closing:
                sql = ";\n".join(closing)
                connection.exec_driver_sql(f"BEGIN;\n{sql};\nCOMMIT", binds)
    except Exception as exc:
        with suppress(DBAPIError):  # a lost connection has nothing to roll back
            connection.exec_driver_sql("ROLLBACK")
        outcome.error = exc
        outcome.dropped = _drop_new_invalid(connection, schema, invalid_before)
    outcome.reached = _current(connection)
    return outcome


def _closing(from_revision: str | None, target: str, run_id: int | None) -> list[str]:
    """What ends the span, in a transaction of its own (or the span's one): its backfills'
    triggers, before a backfill reads its key range, so every later write is covered, and,
    with ``run_id`` (the ledger is in this database), their ledger entries, small tables filled
    there (``alembic_runtime.backfill_entries_sql``). Binds ``run_id`` and ``schema``."""
    triggers = alembic_runtime.backfill_triggers_sql(from_revision, target)
    if not triggers:
        return []
    entries = alembic_runtime.backfill_entries_sql(from_revision, target) if run_id else []
    return [replay.driver_sql(triggers), *entries]


def _small(connection: Connection, segments: Sequence[replay.Segment], rows: int) -> bool:
    """Whether the span can be one transaction: every statement of its autocommit blocks is a
    concurrent index build on a table of at most ``rows`` rows (``replay.small_check_sql``; a
    table the span creates is not there yet: no)."""
    check = replay.small_check_sql(segments, rows)
    if check is None:
        return False
    try:
        return bool(connection.exec_driver_sql(f"SELECT {check}").scalar())
    except DBAPIError as exc:
        if db.sqlstate(exc) == UNDEFINED_TABLE:
            return False
        raise


def _migrate(connection: Connection, schema: str, target: str) -> None:
    """Alembic online, a transaction per revision: what ``autocommit_block()`` expects (the
    connection in its default isolation while Alembic runs, in autocommit again after)."""
    script = alembic_runtime.tenant_script()
    down = alembic_runtime.goes_down(_current(connection), target)
    connection.commit()
    connection.execution_options(isolation_level=connection.default_isolation_level)

    def steps(rev: Any, _context: object) -> Any:
        if down:
            return script._downgrade_revs(target, rev)
        return script._upgrade_revs(target, rev)

    try:
        cfg = alembic_runtime.tenant_config(schema, connection)
        options = {
            **alembic_runtime.tenant_context_options(schema),
            "transaction_per_migration": True,
        }
        with EnvironmentContext(cfg, script, fn=steps, destination_rev=target) as env:
            env.configure(connection=connection, **options)
            with env.begin_transaction():
                env.run_migrations()
        connection.commit()
    finally:
        connection.rollback()
        connection.execution_options(isolation_level="AUTOCOMMIT")


def _replay(connection: Connection, segments: Sequence[replay.Segment]) -> None:
    """The span's SQL rendered once (``alembic_runtime.replayable_steps``), run as Alembic
    online runs it: each transaction in one round trip (``BEGIN`` ... ``COMMIT``), each
    statement of an autocommit block alone. An error is raised with its transaction left
    open (``_steps`` rolls it back): what committed before it stays, as online."""
    for segment in segments:
        sql = segment.sql if segment.autocommit else f"BEGIN;\n{segment.sql};\nCOMMIT"
        connection.exec_driver_sql(replay.driver_sql(sql), ())


def _current(connection: Connection) -> str | None:
    has_table, versions = alembic_runtime.version_rows(connection)
    return alembic_runtime.current_revision(versions) if has_table else None


def _invalid_indexes(connection: Connection, schema: str) -> set[str]:
    return set(connection.execute(_INVALID_INDEXES, {"schema": schema}).scalars())


def _drop_new_invalid(connection: Connection, schema: str, before: set[str]) -> list[str]:
    """Drop the invalid indexes that were not there before the attempt (a concurrent build that
    failed leaves one behind: it costs writes and blocks the retry's build)."""
    new = sorted(_invalid_indexes(connection, schema) - before)
    quote = connection.dialect.identifier_preparer.quote
    for name in new:  # the session is in autocommit, as DROP INDEX CONCURRENTLY must be
        connection.exec_driver_sql(
            f"DROP INDEX CONCURRENTLY IF EXISTS {quote(schema)}.{quote(name)}"
        )
    return new
