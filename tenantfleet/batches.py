"""Running a tenant's backfills (``tenantfleet.backfill``) in batches, after its DDL committed.

Each batch is one short transaction in the tenant's schema: ``lock_timeout`` bounds how long it
waits for a row the app holds (then it is tried again, half the size), and the next batch's size
follows from how long the last ones took, towards the backfill's ``batch_seconds``. Before each
batch the tenant's database is asked how it is (``health``): while lock waits, long
transactions, connections or a replica's lag are over their limits, the backfill is ``paused``
(said in the ledger, with why) and goes on by itself once they are back under. Progress is in
the ledger (``tenantfleet.ledger``): a batch of a control-database tenant commits its progress
with it; one of another database commits there, then its progress (batches are idempotent).
Past its time budget a worker hands the rest on (``Handed``): a new message goes on from the
ledger.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantfleet import databases, db, ledger, locks
from tenantfleet.backfill import Backfill
from tenantfleet.config import Settings
from tenantfleet.states import BackfillState

LOCK_NOT_AVAILABLE = "55P03"
HEALTH_SQL = sa.text(
    "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),"
    " count(*),"
    " coalesce(max(extract(epoch FROM now() - xact_start))"
    "   FILTER (WHERE state <> 'idle' AND pid <> pg_backend_pid()), 0),"
    " current_setting('max_connections')::int,"
    " (SELECT coalesce(max(extract(epoch FROM greatest(write_lag, flush_lag, replay_lag))), 0)"
    "   FROM pg_stat_replication)"
    " FROM pg_stat_activity WHERE datname = current_database()"
)
"""A cheap look at the tenant's database: sessions waiting for a lock, connections, the
longest open transaction (seconds), the connection limit, and how far its slowest streaming
replica is behind (seconds; 0 without replicas, or for a role that may not see it: grant it
``pg_monitor``)."""
PAUSE_POLL_S = 0.5
HEALTH_EVERY_S = 0.5
"""How often a runner asks its database how it is (before a batch, at most this often)."""
LOST_BATCHES = 5
"""Batches in a row that may fail on a lost connection (or a deadlock) and be tried again."""
CONNECTIONS_SHARE = 0.9
"""A backfill pauses while the database's connections exceed this share of its limit."""


@dataclass(frozen=True)
class Health:
    lock_waits: int
    connections: int
    longest_transaction_s: float
    max_connections: int
    replication_lag_s: float = 0.0

    def trouble(self, settings: Settings) -> str | None:
        """Why batches should wait now (None: they may go)."""
        limit = settings.backfill_max_lock_waits
        if self.lock_waits > limit:
            return f"{self.lock_waits} sessions wait for locks (limit {limit})"
        if self.connections > CONNECTIONS_SHARE * self.max_connections:
            return f"{self.connections} of {self.max_connections} connections in use"
        if self.longest_transaction_s > settings.backfill_max_transaction_s:
            return (
                f"a transaction has been open {self.longest_transaction_s:.0f} s"
                f" (limit {settings.backfill_max_transaction_s:g} s)"
            )
        if self.replication_lag_s > settings.backfill_max_replication_lag_s:
            return (
                f"a replica is {self.replication_lag_s:.1f} s behind"
                f" (limit {settings.backfill_max_replication_lag_s:g} s)"
            )
        return None


PROGRESS_EVERY_S = 1.0
"""How often a runner says how far it is (``progress``), at most."""


@dataclass(frozen=True)
class Progress:
    """How far one backfill of one tenant is, as a runner sees it between batches."""

    schema: str
    name: str
    rows_done: int
    keys_left: int
    eta_s: float | None

    def line(self) -> str:
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None else ""
        return (
            f"{self.schema}: backfill {self.name}: {self.rows_done:,} rows filled,"
            f" {self.keys_left:,} keys left{eta}"
        )


class Handed(Exception):
    """The time budget ran out: the rest goes on in a new message."""


@dataclass(frozen=True)
class Target:
    """Where one backfill of one tenant runs and is recorded."""

    run_id: int
    schema: str
    database: str | None
    revision: str
    backfill: Backfill


def run(
    target: Target,
    control: Engine,
    tenant: Engine,
    settings: Settings,
    deadline: float,
    progress: Callable[[Progress], None] | None = None,
) -> ledger.Entry | None:
    """Fill the backfill's rows, batch after batch, until done (the final entry), or raise
    ``Handed`` at ``deadline`` (``time.monotonic()``); any other error marks it ``failed``
    (with the error) and is raised. None when another worker runs it right now: one runner at a
    time holds its lock (``locks.backfilling``) in the control database. ``progress`` hears how
    far it is every ``PROGRESS_EVERY_S`` while it runs (the ledger has it after every batch)."""
    label = databases.label(target.database, target.schema)
    with db.connect(control) as connection:  # filled in the DDL transaction (a small table)
        entry = ledger.done(connection, target.run_id, target.schema, target.backfill.name)
    if entry is not None:
        return entry
    with db.connect(control) as holder:
        if not locks.hold(holder, locks.backfilling(label, target.backfill.name)):
            return None
        return _run(target, control, tenant, settings, deadline, progress)


def _run(
    target: Target,
    control: Engine,
    tenant: Engine,
    settings: Settings,
    deadline: float,
    progress: Callable[[Progress], None] | None,
) -> ledger.Entry:
    bf = target.backfill
    same = target.database is None
    with db.begin(control) as connection:
        entry = ledger.start(
            connection, target.run_id, target.schema, target.database, target.revision, bf.name
        )
        if same and entry.key_low is None and entry.next_key is None:  # one transaction
            entry = _read_range(connection, entry, target.schema, bf)
    if entry.status == BackfillState.DONE:
        return entry
    if entry.key_low is None and entry.next_key is None:
        with db.begin(tenant) as connection:
            _confine(connection, target.schema, bf)
            low, high = connection.execute(sa.text(bf.range_sql())).one()
        with db.begin(control) as connection:
            entry = ledger.set_range(connection, entry, low, high, bf.first_batch)
    checked = 0.0
    lost = 0
    width = entry.batch_keys or bf.first_batch
    next_key = entry.next_key
    began, first_key, rows, said = time.monotonic(), next_key, entry.rows_done, time.monotonic()
    try:
        while next_key is not None and entry.key_high is not None and next_key <= entry.key_high:
            if time.monotonic() - checked >= HEALTH_EVERY_S:
                _wait_until_healthy(target, control, tenant, settings, deadline)
                checked = time.monotonic()
            if time.monotonic() > deadline:
                raise Handed(f"{target.schema}: backfill {bf.name} goes on in a new message")
            began = time.monotonic()
            try:
                with db.begin(tenant) as connection:
                    _confine(connection, target.schema, bf)
                    done = connection.execute(
                        sa.text(bf.batch_sql()), {"low": next_key, "high": next_key + width}
                    ).rowcount
                    took = time.monotonic() - began
                    following = _next_width(width, took, bf.batch_seconds)
                    if same:
                        ledger.advance(connection, entry, next_key + width, done, following)
                if not same:
                    with db.begin(control) as connection:
                        ledger.advance(connection, entry, next_key + width, done, following)
            except DBAPIError as exc:
                if db.sqlstate(exc) == LOCK_NOT_AVAILABLE:
                    width = max(1, width // 2)  # the app holds a row of it: smaller, again
                    continue
                if not db.is_transient(exc) or (lost := lost + 1) > LOST_BATCHES:
                    raise
                time.sleep(min(2.0**lost * 0.1, 5.0))  # a lost connection: the batch again
                continue
            next_key += width
            width = following
            rows += done
            if progress is not None and time.monotonic() - said >= PROGRESS_EVERY_S:
                said = time.monotonic()
                progress(_progress(target, rows, next_key, first_key, entry.key_high, began))
    except Handed:
        raise
    except Exception as exc:
        with db.begin(control) as connection:
            ledger.mark(connection, entry, BackfillState.FAILED, f"{db.describe_error(exc)[0]}:"
                        f" {db.first_line(exc)}")  # fmt: skip
        raise
    with db.begin(control) as connection:
        ledger.mark(connection, entry, BackfillState.DONE, None)
        return ledger.get(connection, target.run_id, target.schema, bf.name)


def _read_range(
    connection: Connection, entry: ledger.Entry, schema: str, bf: Backfill
) -> ledger.Entry:
    """The key range, read in the tenant's schema on the control database's own connection
    (a control-database tenant), and recorded in the same transaction."""
    _confine(connection, schema, bf)
    low, high = connection.execute(sa.text(bf.range_sql())).one()
    return ledger.set_range(connection, entry, low, high, bf.first_batch)


def _progress(
    target: Target, rows: int, next_key: int, first_key: int | None, high: int, began: float
) -> Progress:
    """How far it is, and when it should end at the speed of this runner so far."""
    left = max(high + 1 - next_key, 0)
    keys_per_s = (next_key - (first_key or next_key)) / max(time.monotonic() - began, 1e-3)
    eta = left / keys_per_s if keys_per_s > 0 else None
    return Progress(target.schema, target.backfill.name, rows, left, eta)


def _next_width(width: int, took: float, wanted: float) -> int:
    """The next batch's keys: towards ``wanted`` seconds, at most doubled or halved at once."""
    if took <= 0:
        return width * 2
    return max(1, min(width * 2, max(width // 2, int(width * wanted / took))))


def _confine(connection: Connection, schema: str, bf: Backfill) -> None:
    connection.execute(
        sa.text(
            "SELECT set_config('search_path', quote_ident(:schema), true),"
            " set_config('lock_timeout', :lock_timeout, true)"
        ),
        {"schema": schema, "lock_timeout": f"{bf.lock_timeout_ms}ms"},
    )


def health(tenant: Engine) -> Health:
    with db.connect(tenant) as connection:
        return Health(*connection.execute(HEALTH_SQL).one())


def _wait_until_healthy(
    target: Target, control: Engine, tenant: Engine, settings: Settings, deadline: float
) -> None:
    """Pause (said in the ledger) while the tenant's database is over its limits; ``Handed``
    when the time budget runs out meanwhile."""
    paused = False
    sleep: Callable[[float], None] = time.sleep
    while (trouble := health(tenant).trouble(settings)) is not None:
        if not paused:
            paused = True
            with db.begin(control) as connection:
                entry = ledger.get(connection, target.run_id, target.schema, target.backfill.name)
                ledger.mark(connection, entry, BackfillState.PAUSED, f"paused: {trouble}")
        if time.monotonic() > deadline:
            raise Handed(f"{target.schema}: backfill {target.backfill.name} paused: {trouble}")
        sleep(PAUSE_POLL_S)
    if paused:
        with db.begin(control) as connection:
            entry = ledger.get(connection, target.run_id, target.schema, target.backfill.name)
            ledger.mark(connection, entry, BackfillState.RUNNING, None)
