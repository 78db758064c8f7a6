"""PostgreSQL advisory locks: the one place that knows their keys.

A schema's key is ``hashtextextended('tenantfleet:' || schema, 0)``: different schemas migrate in
parallel, two runs of one schema never do. A tenant of another database is locked in its own
database by its schema name, and marked in the control database by its label (``KEY/schema``,
``tenantfleet.databases``). A database's concurrency slots are two-key locks
``(hashtext('tenantfleet-slot:' || KEY), n)`` (``objsubid = 2``). PostgreSQL shows a bigint
key in ``pg_locks`` as ``classid`` (high 32 bits), ``objid`` (low 32 bits) and ``objsubid = 1``.
"""

from collections.abc import Sequence

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


TAKE_SLOT_SQL = "SELECT public.tenantfleet_take_slot(:slot_database, :slot_cap)"
"""Take one of the database's ``:slot_cap`` slots for this session, or raise ``NO_SLOT``
(public migration 20251201_000000). A slot is a session lock in the control database, so the cap
holds across every worker on every host, whatever database the tenant lives in."""
FREE_SLOT_SQL = "SELECT public.tenantfleet_free_slot()"
"""Give back the slot this session holds, if any."""
NO_SLOT = "TF503"
"""SQLSTATE of ``TAKE_SLOT_SQL`` when every slot of the database is taken."""


def dispatching(run_uid: str) -> str:
    """The lock a producer holds while it sends a run's tasks (not a valid schema name)."""
    return f"dispatch:{run_uid}"


def hold(connection: Connection, name: str) -> bool:
    """Take a session-level lock on ``name`` if free: held until the connection closes."""
    taken = connection.execute(
        sa.text(f"SELECT pg_try_advisory_lock({key_sql(':name')})"), {"name": name}
    ).scalar()
    connection.commit()
    return bool(taken)
