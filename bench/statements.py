"""Where PostgreSQL's time goes in one contender run: ``pg_stat_statements`` of the bench's
database, per tenant.

Only with ``--statements``, on a fresh cluster started with the module preloaded
(``SETTINGS``); top-level statements only, so a function's body counts once, as its call.
Execution time is what the server's backends spend on a statement (CPU, and any wait for
locks or the disk); parsing and the protocol around it are not in it.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantfleet import db

SETTINGS = [
    "shared_preload_libraries=pg_stat_statements",
    "pg_stat_statements.track=top",
    "pg_stat_statements.track_utility=on",
    "pg_stat_statements.max=50000",
]
"""The server settings ``--statements`` starts its cluster with."""

CREATE_SQL = "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"
RESET_SQL = "SELECT pg_stat_statements_reset()"
READ_SQL = sa.text(
    "SELECT regexp_replace(s.query, '\\s+', ' ', 'g'), sum(s.calls), sum(s.total_exec_time)"
    " FROM pg_stat_statements AS s JOIN pg_database AS d ON d.oid = s.dbid"
    " WHERE d.datname = :database GROUP BY 1 ORDER BY 3 DESC"
)
"""By statement text: a statement on a tenant's table is one entry per table (its id covers
the table's oid), the same text for every tenant."""
EVICTED_SQL = sa.text("SELECT dealloc FROM pg_stat_statements_info")
"""Times entries were thrown out since the reset to make room (``max``): then the figures
miss statements, and ``read`` says so (``evicted``)."""
TOP = 8
"""Statements listed per run."""


@contextmanager
def _admin(admin_url: str) -> Iterator[Connection]:
    """An autocommit connection to the cluster's admin database, its engine gone afterwards."""
    engine = db.make_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def install(admin_url: str) -> None:
    with _admin(admin_url) as connection:
        connection.exec_driver_sql(CREATE_SQL)


def reset(admin_url: str) -> None:
    """Forget every statement seen so far: the next ``read`` covers what runs after this."""
    with _admin(admin_url) as connection:
        connection.exec_driver_sql(RESET_SQL)


def read(admin_url: str, database: str, tenants: int) -> dict[str, Any]:
    """The server's execution time in ``database`` since ``reset``, per tenant, and its
    ``TOP`` statements (normalized text, shortened; calls and milliseconds per tenant); with
    ``evicted`` > 0 the sums miss some statements."""
    with _admin(admin_url) as connection:
        rows = connection.execute(READ_SQL, {"database": database}).all()
        evicted = connection.execute(EVICTED_SQL).scalar_one()
    total = sum(float(ms) for _, _, ms in rows)
    return {
        "server_ms_per_tenant": round(total / tenants, 3),
        "evicted": int(evicted),
        "statements_per_tenant": round(sum(int(calls) for _, calls, _ in rows) / tenants, 1),
        "top": [
            {
                "statement": query[:100],
                "calls_per_tenant": round(int(calls) / tenants, 2),
                "ms_per_tenant": round(float(ms) / tenants, 3),
            }
            for query, calls, ms in rows[:TOP]
        ],
    }
