"""``public.migration_backfills``: the only module that writes it (``entry_with_ddl_sql`` is
its statement that the attempt sends with a tenant's DDL).

One row per run, tenant and backfill (``tenantfleet.backfill``): its key range, the next key to
fill, rows and batches done, attempts, the batch size it learnt, its state and why it paused or
failed. A batch of a tenant in the control database commits its progress here in its own
transaction, so a killed worker loses at most the batch it was in; a batch in another database
commits there first, and is idempotent, so one done twice changes nothing.
"""

from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantfleet.public_tables import migration_backfills as ledger
from tenantfleet.states import BACKFILL_OPEN, BackfillState

if TYPE_CHECKING:  # the views read the ledger without parsing SQL (pglast)
    from tenantfleet.backfill import Backfill

REASON_MAX = 2000


@dataclass(frozen=True)
class Entry:
    run_id: int
    schema_name: str
    name: str
    database: str | None
    revision: str
    status: str
    key_low: int | None
    key_high: int | None
    next_key: int | None
    rows_done: int
    batches: int
    attempts: int
    batch_keys: int | None
    reason: str | None
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None

    @property
    def keys_left(self) -> int:
        if self.key_high is None or self.next_key is None:
            return 0
        return max(self.key_high + 1 - self.next_key, 0)


_COLUMNS = [ledger.c[f.name] for f in fields(Entry)]
_ROW = sa.and_(
    ledger.c.run_id == sa.bindparam("b_run"),
    ledger.c.schema_name == sa.bindparam("b_schema"),
    ledger.c.name == sa.bindparam("b_name"),
)


def _binds(run_id: int, schema: str, name: str) -> dict[str, object]:
    return {"b_run": run_id, "b_schema": schema, "b_name": name}


def start(
    connection: Connection,
    run_id: int,
    schema: str,
    database: str | None,
    revision: str,
    name: str,
) -> Entry:
    """The entry of this backfill of this tenant in the run, made if it is not there, its
    attempts counted (a new attempt of a failed one goes on from where it stopped; a done one
    is left as it is)."""
    connection.execute(
        sa.dialects.postgresql.insert(ledger)
        .values(run_id=run_id, schema_name=schema, name=name, database=database, revision=revision)
        .on_conflict_do_nothing()
    )
    connection.execute(
        ledger.update()
        .where(_ROW, ledger.c.status != BackfillState.DONE)
        .values(
            attempts=ledger.c.attempts + 1,
            status=BackfillState.RUNNING,
            started_at=sa.func.coalesce(ledger.c.started_at, sa.func.now()),
            updated_at=sa.func.now(),
            reason=None,
        ),
        _binds(run_id, schema, name),
    )
    return get(connection, run_id, schema, name)


def entry_with_ddl_sql(revision: str, bf: "Backfill") -> str:
    """For the DDL transaction of a tenant of the control database: the backfill's entry, made
    with the DDL. When the table is small (``Backfill.at_once_sql``) it is filled right there
    and the entry is ``done``; else the entry is ``pending`` (its batches come after, in a
    message of their own). One statement, as a psycopg2 query string (it joins the attempt's):
    binds ``%(run_id)s`` and ``%(schema)s``, every other ``%`` doubled."""
    quoted = revision.replace("'", "''")
    constant = (
        f"WITH {bf.at_once_sql()}"
        " INSERT INTO public.migration_backfills (run_id, schema_name, name, revision, status,"
        "  rows_done, batches, attempts, started_at, finished_at)"
        f" SELECT RUN_ID, SCHEMA, '{bf.name}', '{quoted}',"
        f"  CASE WHEN yes THEN '{BackfillState.DONE}' ELSE '{BackfillState.PENDING}' END,"
        "  CASE WHEN yes THEN (SELECT count(*) FROM filled) ELSE 0 END,"
        "  CASE WHEN yes THEN 1 ELSE 0 END, CASE WHEN yes THEN 1 ELSE 0 END,"
        "  CASE WHEN yes THEN now() END, CASE WHEN yes THEN now() END"
        " FROM small"
        " ON CONFLICT (run_id, schema_name, name) DO NOTHING"
    )
    escaped = constant.replace("%", "%%")
    return escaped.replace("RUN_ID, SCHEMA,", "%(run_id)s, %(schema)s,", 1)


def done(connection: Connection, run_id: int, schema: str, name: str) -> Entry | None:
    """The entry of this backfill of this tenant in the run when it is done (filled at once in
    the DDL transaction, or before); else None."""
    row = connection.execute(
        sa.select(*_COLUMNS).where(_ROW, ledger.c.status == BackfillState.DONE),
        _binds(run_id, schema, name),
    ).one_or_none()
    return None if row is None else Entry(*row)


def get(connection: Connection, run_id: int, schema: str, name: str) -> Entry:
    row = connection.execute(sa.select(*_COLUMNS).where(_ROW), _binds(run_id, schema, name)).one()
    return Entry(*row)


def set_range(
    connection: Connection, entry: Entry, low: int | None, high: int | None, batch_keys: int
) -> Entry:
    """The key range to fill (NULL: the table is empty: nothing to fill)."""
    connection.execute(
        ledger.update()
        .where(_ROW)
        .values(
            key_low=low,
            key_high=high,
            next_key=low,
            batch_keys=batch_keys,
            updated_at=sa.func.now(),
        ),
        _binds(entry.run_id, entry.schema_name, entry.name),
    )
    return get(connection, entry.run_id, entry.schema_name, entry.name)


def advance(
    connection: Connection, entry: Entry, next_key: int, rows: int, batch_keys: int
) -> None:
    """A batch is done: the next key, the rows it changed, the size the next one takes."""
    connection.execute(
        ledger.update()
        .where(_ROW)
        .values(
            next_key=next_key,
            rows_done=ledger.c.rows_done + rows,
            batches=ledger.c.batches + 1,
            batch_keys=batch_keys,
            status=BackfillState.RUNNING,
            reason=None,
            updated_at=sa.func.now(),
        ),
        _binds(entry.run_id, entry.schema_name, entry.name),
    )


def mark(connection: Connection, entry: Entry, state: BackfillState, reason: str | None) -> None:
    """``paused`` (with why), ``running`` again, ``done`` or ``failed`` (with the error)."""
    final = state in (BackfillState.DONE, BackfillState.FAILED)
    connection.execute(
        ledger.update()
        .where(_ROW)
        .values(
            status=state,
            reason=reason[:REASON_MAX] if reason else None,
            updated_at=sa.func.now(),
            finished_at=sa.func.now() if final else None,
        ),
        _binds(entry.run_id, entry.schema_name, entry.name),
    )


def of_run(connection: Connection, run_id: int) -> list[Entry]:
    query = (
        sa.select(*_COLUMNS)
        .where(ledger.c.run_id == run_id)
        .order_by(ledger.c.schema_name, ledger.c.name)
    )
    return [Entry(*row) for row in connection.execute(query)]


def done_names(
    connection: Connection, schema: str, database: str | None, names: list[str]
) -> set[str]:
    """Which of the backfills ``names`` are done for ``schema`` (in any run)."""
    return set(
        connection.execute(
            sa.select(ledger.c.name).where(
                ledger.c.schema_name == schema,
                ledger.c.database.is_not_distinct_from(database),
                ledger.c.name.in_(names),
                ledger.c.status == BackfillState.DONE,
            )
        ).scalars()
    )


def open_of_run(connection: Connection, run_id: int) -> list[Entry]:
    """The run's backfills not done nor failed: pending, running or paused."""
    query = sa.select(*_COLUMNS).where(
        ledger.c.run_id == run_id, ledger.c.status.in_(BACKFILL_OPEN)
    )
    return [Entry(*row) for row in connection.execute(query)]
