"""PostgreSQL advisory locks: the one place that knows their keys.

A schema's key is ``hashtextextended('tenantfleet:' || schema, 0)``: different schemas migrate in
parallel, two runs of one schema never do. A tenant of another database is locked in its own
database by its schema name, and marked in the control database by its label (``KEY/schema``,
``tenantfleet.databases``). A database's concurrency slots are two-key locks
``(hashtext('tenantfleet-slot:' || KEY), n)`` (``objsubid = 2``). PostgreSQL shows a bigint
key in ``pg_locks`` as ``classid`` (high 32 bits), ``objid`` (low 32 bits) and ``objsubid = 1``.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def key_sql(name_sql: str) -> str:
    """The SQL expression of the lock key for the name held by ``name_sql`` (a bind or column)."""
    return f"hashtextextended('tenantfleet:' || {name_sql}, 0)"


PUBLIC = "public"
PRODUCER = "run-guard"  # not a valid schema name, so no tenant shares its key


def lock_name(connection: Connection, name: str) -> None:
    """Take a transaction-level lock on ``name`` (waits, up to the session's lock_timeout)."""
    connection.execute(sa.text(f"SELECT pg_advisory_xact_lock({key_sql(':name')})"), {"name": name})


def held(connection: Connection, schemas: Sequence[str]) -> set[str]:
    """Which of ``schemas`` some session holds the lock of right now: a migration in progress."""
    if not schemas:
        return set()
    key = key_sql("s")
    rows = connection.execute(
        sa.text(
            f"SELECT s FROM unnest(CAST(:schemas AS text[])) AS s WHERE EXISTS ("
            " SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.objsubid = 1"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            f" AND l.classid = (({key} >> 32) & 4294967295)::bigint::oid"
            f" AND l.objid = ({key} & 4294967295)::bigint::oid AND l.granted)"
        ),
        {"schemas": list(schemas)},
    )
    return set(rows.scalars())


NO_SLOT = "TF503"
"""SQLSTATE of the slot a tenant's attempt takes first (``sql/queries.sql``: ``take_slot``) when
every slot of its database is taken."""


def dispatching(run_uid: str) -> str:
    """The lock a producer holds while it sends a run's tasks (not a valid schema name)."""
    return f"dispatch:{run_uid}"


def backfilling(label: str, name: str) -> str:
    """The lock a worker holds while it runs backfill ``name`` of tenant ``label`` (not a valid
    schema name): one runner at a time, and a lost one is seen at once."""
    return f"backfill:{label}:{name}"


def hold(connection: Connection, name: str) -> bool:
    """Take a session-level lock on ``name`` if free: held until the connection closes."""
    taken = connection.execute(
        sa.text(f"SELECT pg_try_advisory_lock({key_sql(':name')})"), {"name": name}
    ).scalar()
    connection.commit()
    return bool(taken)


@dataclass(frozen=True)
class Blocked:
    """A tenant being migrated that waits for a lock another session holds, and that session."""

    schema: str
    pid: int
    """The tenant's own session."""
    waits_for: str
    """The lock it waits for: mode and object (``AccessExclusiveLock on acme.users``)."""
    blocker_pid: int
    blocker_application: str
    blocker_state: str
    blocker_seconds: float
    """How long the blocker's transaction (or statement) has been open."""
    blocker_query: str
    """Its current or last statement, cut to 200 characters."""


_BLOCKED = (
    "SELECT s, t.pid, w.mode || ' on ' || coalesce(w.relation::regclass::text, w.locktype),"
    " b.pid, coalesce(b.application_name, ''), coalesce(b.state, ''),"
    " coalesce(extract(epoch FROM now() - coalesce(b.xact_start, b.query_start)), 0)::float,"
    " left(coalesce(b.query, ''), 200)"
    " FROM unnest(CAST(:schemas AS text[])) AS s"
    " JOIN pg_locks t ON t.locktype = 'advisory' AND t.objsubid = 1 AND t.granted"
    " AND t.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND t.classid = (({key} >> 32) & 4294967295)::bigint::oid"
    " AND t.objid = ({key} & 4294967295)::bigint::oid"
    " JOIN pg_locks w ON w.pid = t.pid AND NOT w.granted"
    " CROSS JOIN LATERAL unnest(pg_blocking_pids(t.pid)) AS blocker(pid)"
    " JOIN pg_stat_activity b ON b.pid = blocker.pid"
    " ORDER BY s, b.pid"
)


def blocked(connection: Connection, schemas: Sequence[str]) -> list[Blocked]:
    """Which of ``schemas`` (tenants of this database) are being migrated by a session that
    waits for a lock right now, and who holds it (``pg_locks``, ``pg_blocking_pids``,
    ``pg_stat_activity``): the answer to "why is this tenant still running?"."""
    if not schemas:
        return []
    query = sa.text(_BLOCKED.format(key=key_sql("s")))
    return [Blocked(*row) for row in connection.execute(query, {"schemas": list(schemas)})]
