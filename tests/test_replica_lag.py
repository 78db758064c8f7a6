"""A backfill pauses while a streaming replica of its database falls behind, and goes on by
itself once the replica catches up: a private primary and standby of the machine's PostgreSQL
binaries (``bench/fresh_cluster.py``), the real batch runner against them."""

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import batches, db, fleet_setup, ledger, runs
from tenantfleet.backfill import Backfill
from tenantfleet.config import Settings
from tenantfleet.manager import MigrationManager
from tests import helpers

SCHEMA = "rl00001"
CENTS = Backfill(
    "orders_amount_cents",
    table="orders",
    set={"amount_cents": "(amount * 100)::bigint"},
    first_batch=200,
    batch_seconds=0.02,
)


@pytest.fixture
def primary_and_standby(repo_root: Path) -> Iterator[tuple[str, str]]:
    sys.path.insert(0, str(repo_root / "bench"))
    import fresh_cluster

    try:
        fresh_cluster.bin_dir()
    except SystemExit:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    with fresh_cluster.primary_and_standby() as urls:
        yield urls


def _wal_traffic(engine: Engine, stop: threading.Event) -> None:
    """The app's writes elsewhere on the primary: WAL the paused standby cannot replay."""
    with engine.connect() as connection:
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS public.traffic (at timestamptz)"))
        connection.commit()
        while not stop.is_set():
            connection.execute(sa.text("INSERT INTO public.traffic VALUES (now())"))
            connection.commit()
            stop.wait(0.05)


def test_a_lagging_replica_pauses_a_backfill_which_goes_on_once_it_catches_up(
    primary_and_standby: tuple[str, str],
) -> None:
    primary_admin, standby_admin = primary_and_standby
    engine = db.make_engine(primary_admin)
    standby = db.make_engine(standby_admin)
    MigrationManager(engine=engine).upgrade_public()
    fleet_setup.provision(engine, [SCHEMA], helpers.SEED_HEAD)
    with engine.begin() as connection:  # the revision's DDL step, and rows to fill
        connection.execute(sa.text(f"ALTER TABLE {SCHEMA}.orders ADD COLUMN amount_cents bigint"))
        connection.execute(
            sa.text(
                f"INSERT INTO {SCHEMA}.orders (user_id, amount, status) SELECT"
                f" (SELECT min(id) FROM {SCHEMA}.users), g % 1000 + 0.37, 'new'"
                " FROM generate_series(1, 3000) AS g"
            )
        )
        run_id = runs.create_run(connection, "bf0001", [(SCHEMA, helpers.SEED_HEAD)])
    stop = threading.Event()
    traffic = threading.Thread(target=_wal_traffic, args=(engine, stop), daemon=True)
    traffic.start()
    outcome: dict[str, object] = {}
    try:
        with standby.connect() as connection:
            connection.execute(sa.text("SELECT pg_wal_replay_pause()"))
        helpers.wait_for(
            lambda: batches.health(engine).replication_lag_s > 1.0 or None,
            "the standby to be more than 1 s behind",
            timeout=60,
        )
        settings = Settings(backfill_max_replication_lag_s=1.0)
        target = batches.Target(run_id, SCHEMA, None, "bf0001", CENTS)

        def fill() -> None:
            deadline = time.monotonic() + 600
            outcome["entry"] = batches.run(target, engine, engine, settings, deadline)

        runner = threading.Thread(target=fill, daemon=True)
        runner.start()

        def paused() -> ledger.Entry | None:
            with engine.connect() as connection:
                found = ledger.of_run(connection, run_id)
            return found[0] if found and found[0].status == "paused" else None

        held = helpers.wait_for(paused, "the backfill to pause", timeout=60)
        assert held.reason is not None and "a replica is" in held.reason, held.reason
        assert held.rows_done == 0  # not one batch while the replica was behind
        with standby.connect() as connection:
            connection.execute(sa.text("SELECT pg_wal_replay_resume()"))
        runner.join(timeout=300)
    finally:
        stop.set()
        traffic.join(timeout=10)
        engine.dispose()
        standby.dispose()
    done = outcome.get("entry")
    assert isinstance(done, ledger.Entry) and done.status == "done", done
    assert done.rows_done >= 3000
