"""Batched backfills on live tenants (tenantfleet.backfill), with real PostgreSQL, Redis and
worker processes: the app writes to a tenant during its backfill and is never blocked, rows it
writes with old code end correct, a revision that needs the backfill waits for it, a database
made unhealthy pauses the batches, a failed batch is resumed by ``retry``.
"""

import json
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import db, ledger, processes, runs
from tests import helpers
from tests.stack import Stack, running_fleet

HEAD = helpers.SEED_HEAD

FILLS = """
from tenantfleet.backfill import Backfill

backfills = [
    Backfill(
        "orders_amount_cents",
        table="orders",
        key="id",
        set={"amount_cents": "(amount * 100)::bigint"},
        first_batch=100,
        batch_seconds=0.05,
    )
]


def upgrade() -> None:
    op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))


def downgrade() -> None:
    op.drop_column("orders", "amount_cents")
"""
NEEDS_IT = """
requires_backfills = ["orders_amount_cents"]


def upgrade() -> None:
    op.alter_column("orders", "amount_cents", nullable=False)


def downgrade() -> None:
    op.alter_column("orders", "amount_cents", nullable=True)
"""


@pytest.fixture(scope="module")
def fleet(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("backfills")
    ini = helpers.tenant_env(root, [("bf0001", FILLS), ("bf0002", NEEDS_IT)])
    with (
        pytest.MonkeyPatch.context() as patch,
        running_fleet(
            pg_admin_url,
            template_url,
            root / "fleet",
            TENANTFLEET_TENANT_ALEMBIC=str(ini),
            TENANTFLEET_BACKFILL_MAX_TRANSACTION_S="2",
        ) as stack,
    ):
        patch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
        yield stack


def grow(stack: Stack, schema: str, orders: int) -> None:
    """``orders`` more rows in the tenant's orders table."""
    with stack.engine.begin() as connection:
        connection.execute(
            sa.text(
                f'INSERT INTO "{schema}".orders (user_id, amount, status)'
                f" SELECT (SELECT min(id) FROM \"{schema}\".users), g % 1000 + 0.37, 'new'"
                " FROM generate_series(1, :n) AS g"
            ),
            {"n": orders},
        )


def wrong_rows(engine: Engine, schema: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    f'SELECT count(*) FROM "{schema}".orders'
                    " WHERE amount_cents IS DISTINCT FROM (amount * 100)::bigint"
                )
            ).scalar_one()
        )


def entries(stack: Stack, run_id: int) -> list[ledger.Entry]:
    with stack.engine.connect() as connection:
        return ledger.of_run(connection, run_id)


def backfilled(stack: Stack, run_id: int, count: int) -> list[ledger.Entry]:
    def all_done() -> list[ledger.Entry] | None:
        found = entries(stack, run_id)
        done = [e for e in found if e.status == "done"]
        return found if len(done) == count else None

    return helpers.wait_for(all_done, f"{count} backfills of run {run_id} done", timeout=300)


@dataclass
class Writers:
    """The app, with old code: threads that each update a random order and insert one without
    amount_cents, one transaction an iteration, under a 5 s lock_timeout; every latency and
    error kept."""

    engine: Engine
    schema: str
    stop: threading.Event = field(default_factory=threading.Event)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self, count: int = 3) -> None:
        for n in range(count):
            thread = threading.Thread(target=self._loop, args=(n,), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _loop(self, seed: int) -> None:
        chance = random.Random(seed)
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                with self.engine.begin() as connection:
                    connection.execute(sa.text("SET LOCAL lock_timeout = '5s'"))
                    connection.execute(
                        sa.text(
                            f'UPDATE "{self.schema}".orders SET status = :s WHERE id = ('
                            f' SELECT min(id) + :k FROM "{self.schema}".orders)'
                        ),
                        {"s": f"s{chance.randrange(8)}", "k": chance.randrange(2000)},
                    )
                    connection.execute(
                        sa.text(
                            f'INSERT INTO "{self.schema}".orders (user_id, amount, status)'
                            f" SELECT min(id), 12.34, 'live' FROM \"{self.schema}\".users"
                        )
                    )
            except Exception as exc:  # counted, as W3 counts them
                self.errors.append(db.first_line(exc))
            self.latencies.append(time.monotonic() - began)
            time.sleep(0.002)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_a_backfill_under_writes_blocks_no_writer_and_leaves_every_row_right(
    fleet: Stack,
) -> None:
    schemas = fleet.provision("bw", 2, HEAD)
    grow(fleet, "bw00001", 20_000)
    app = Writers(fleet.engine, "bw00001")
    app.start()
    try:
        helpers.wait_for(lambda: len(app.latencies) > 20, "the app to write")
        ran = fleet.cli("migrate", "--revision", "bf0001", "--wait", "--json")
        assert ran.code == 0, ran.err
        run_id = json.loads(ran.out)["run_id"]
        done = backfilled(fleet, run_id, 2)
    finally:
        app.finish()
    assert app.errors == []
    assert max(app.latencies) < 2.0, max(app.latencies)  # never waited for a migration
    by_schema = {e.schema_name: e for e in done}
    assert by_schema["bw00001"].batches > 3 and by_schema["bw00001"].rows_done >= 20_000
    small = by_schema["bw00002"]  # a few rows: filled in its DDL transaction, done with it
    assert (small.batches, small.attempts, small.key_high) == (1, 1, None), small
    assert small.rows_done > 0 and small.finished_at is not None
    for schema in schemas:
        assert wrong_rows(fleet.engine, schema) == 0  # old rows, and rows the app wrote since
    status = json.loads(fleet.cli("status", str(run_id), "--json").out)
    assert status["backfills"]["counts"]["done"] == 2
    exposed = fleet.cli("metrics").out
    assert 'tenantfleet_run_backfills{state="done"} 2.0' in exposed
    assert "tenantfleet_run_backfill_keys_left 0.0" in exposed
    # the revision that needs the filled column goes on now that it is done
    after = fleet.cli("migrate", "--revision", "bf0002", "--wait")
    assert after.code == 0, after.err
    assert set(fleet.revisions(schemas).values()) == {"bf0002"}


def test_a_revision_that_needs_a_backfill_is_never_applied_before_it_is_done(
    fleet: Stack,
) -> None:
    (schema,) = fleet.provision("bg", 1, HEAD)
    at_once = fleet.cli("migrate", "--revision", "bf0002", "--wait", "--json")
    assert at_once.code == 1, at_once.err
    (tenant,) = json.loads(at_once.out)["tenants"]
    assert tenant["status"] == "skipped"
    assert tenant["error"].startswith("BackfillPending: needs backfill orders_amount_cents")
    assert fleet.revisions([schema])[schema] == HEAD  # untouched
    first = fleet.cli("migrate", "--revision", "bf0001", "--wait", "--json")
    assert first.code == 0, first.err
    backfilled(fleet, json.loads(first.out)["run_id"], 1)
    then = fleet.cli("migrate", "--revision", "bf0002", "--wait")
    assert then.code == 0, then.err
    assert fleet.revisions([schema])[schema] == "bf0002"


def test_a_long_transaction_pauses_the_batches_which_go_on_by_themselves(fleet: Stack) -> None:
    (schema,) = fleet.provision("bp", 1, HEAD)
    grow(fleet, schema, 5_000)
    blocker = fleet.engine.connect()
    blocker.begin()
    pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()  # left open

    def old_enough() -> bool:  # past the 2 s the workers allow
        with fleet.engine.connect() as connection:
            return bool(
                connection.execute(
                    sa.text(
                        "SELECT now() - xact_start > interval '2.5 s' FROM pg_stat_activity"
                        " WHERE pid = :pid"
                    ),
                    {"pid": pid},
                ).scalar()
            )

    helpers.wait_for(old_enough, "the open transaction to be older than the limit")
    try:
        ran = fleet.cli("migrate", "--revision", "bf0001", "--json")
        run_id = json.loads(ran.out)["run_id"]

        def paused() -> ledger.Entry | None:
            found = entries(fleet, run_id)
            return found[0] if found and found[0].status == "paused" else None

        held = helpers.wait_for(paused, "the backfill to pause", timeout=120)
        assert held.reason is not None and "a transaction has been open" in held.reason
        text = fleet.cli("status", str(run_id)).out
        assert "paused" in text and "a transaction has been open" in text
    finally:
        blocker.rollback()
        blocker.close()
    backfilled(fleet, run_id, 1)
    assert wrong_rows(fleet.engine, schema) == 0


def test_a_failed_batch_is_resumed_by_retry_from_where_it_stopped(fleet: Stack) -> None:
    (schema,) = fleet.provision("bf", 1, HEAD)
    grow(fleet, schema, 3_000)
    with fleet.engine.begin() as connection:  # an app rule that breaks a batch, for a while
        connection.execute(
            sa.text(
                f'CREATE FUNCTION "{schema}".not_yet() RETURNS trigger LANGUAGE plpgsql AS $$'
                " BEGIN IF NEW.amount >= 900 THEN RAISE EXCEPTION 'not yet'; END IF;"
                " RETURN NEW; END $$;"
                f' CREATE TRIGGER aa_not_yet BEFORE UPDATE ON "{schema}".orders'
                f' FOR EACH ROW EXECUTE FUNCTION "{schema}".not_yet()'
            )
        )
    ran = fleet.cli("migrate", "--revision", "bf0001", "--wait", "--json")
    assert ran.code == 0, ran.err  # the tenant's upgrade committed; its backfill failed
    run_id = json.loads(ran.out)["run_id"]

    def failed() -> ledger.Entry | None:
        found = entries(fleet, run_id)
        return found[0] if found and found[0].status == "failed" else None

    stopped = helpers.wait_for(failed, "the backfill to fail", timeout=120)
    assert stopped.reason is not None and "RaiseException" in stopped.reason
    assert stopped.rows_done > 0  # the batches before it stay done
    with fleet.engine.begin() as connection:
        connection.execute(sa.text(f'DROP TRIGGER aa_not_yet ON "{schema}".orders'))
    again = fleet.cli("retry", str(run_id))
    assert again.code == 0, again.err
    assert "1 failed backfills go on from where they stopped" in again.err
    (done,) = backfilled(fleet, run_id, 1)
    assert done.attempts == 2 and wrong_rows(fleet.engine, schema) == 0


def test_the_runs_ledger_is_its_tenants_own(fleet: Stack) -> None:
    """Every ledger entry names a tenant of its run (the cascade keeps them together)."""
    with fleet.engine.connect() as connection:
        for run in runs.list_runs(connection, 50):
            names = {t.schema_name for t in runs.tenants_of(connection, run.id)}
            assert {e.schema_name for e in ledger.of_run(connection, run.id)} <= names


def test_a_worker_killed_mid_backfill_loses_at_most_its_batch_and_resume_goes_on(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tenant's rows are slow to update (an app trigger sleeps half a millisecond a row),
    so its backfill takes seconds; its worker is killed (SIGKILL, the whole process group) a few
    batches in. ``resume`` sends it again to a new worker, which goes on from the ledger: every
    row right, the batches before the kill not done again."""
    ini = helpers.tenant_env(tmp_path, [("bf0001", FILLS), ("bf0002", NEEDS_IT)])
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        concurrency=0,
        TENANTFLEET_TENANT_ALEMBIC=str(ini),
    ) as stack:
        (schema,) = stack.provision("bk", 1, HEAD)
        grow(stack, schema, 20_000)
        with stack.engine.begin() as connection:
            connection.execute(
                sa.text(
                    f'CREATE FUNCTION "{schema}".slow() RETURNS trigger LANGUAGE plpgsql AS $$'
                    " BEGIN PERFORM pg_sleep(0.0005); RETURN NEW; END $$;"
                    f' CREATE TRIGGER aa_slow BEFORE UPDATE ON "{schema}".orders'
                    f' FOR EACH ROW EXECUTE FUNCTION "{schema}".slow()'
                )
            )
        worker = stack.start_worker(1)
        ran = stack.cli("migrate", "--revision", "bf0001", "--json")
        assert ran.code == 0, ran.out + ran.err
        run_id = json.loads(ran.out)["run_id"]

        def under_way() -> ledger.Entry | None:
            found = entries(stack, run_id)
            return found[0] if found and found[0].batches >= 3 else None

        helpers.wait_for(under_way, "the backfill to be a few batches in", timeout=120)

        def in_flower() -> str | None:  # the task that runs it says how far it is
            tasks = stack.flower("/api/tasks?taskname=tenantfleet.backfill_tenant&state=PROGRESS")
            said = [str(t.get("result")) for t in tasks.values()]
            return next((line for line in said if "backfill orders_amount_cents" in line), None)

        line = helpers.wait_for(in_flower, "Flower to show the backfill's progress", timeout=60)
        assert re.search(
            r"bk00001: backfill orders_amount_cents: [\d,]+ rows filled, [\d,]+ keys", line
        )
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
        (before,) = entries(stack, run_id)
        assert before.status == "running" and before.next_key is not None
        replacement = stack.start_worker(1)
        try:
            resumed = stack.cli("resume", str(run_id))
            assert resumed.code == 0, resumed.err
            (done,) = backfilled(stack, run_id, 1)
            assert wrong_rows(stack.engine, schema) == 0
        finally:
            processes.stop(replacement)
    assert done.attempts == 2 and done.batches > before.batches
    assert done.rows_done >= 20_000  # each row once, but the one batch the kill cut short


FILLS_AND_INDEX = FILLS.replace(
    """    op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))
""",
    """    op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_created_at", "orders", ["created_at"], postgresql_concurrently=True
        )
""",
)


def test_a_span_that_commits_part_way_fills_small_tables_at_once_and_big_ones_in_batches(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill's revision builds an index concurrently (``tenantfleet.stepwise``): the
    small tenant's rows are filled with the triggers, recorded done at once; the big one's in
    batches; every row right on both, the index valid."""
    ini = helpers.tenant_env(tmp_path, [("bi0001", FILLS_AND_INDEX)])
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    with running_fleet(
        pg_admin_url, template_url, tmp_path / "fleet", TENANTFLEET_TENANT_ALEMBIC=str(ini)
    ) as stack:
        small, big = stack.provision("bi", 2, HEAD)
        grow(stack, big, 5_000)
        ran = stack.cli("migrate", "--revision", "bi0001", "--wait", "--json")
        assert ran.code == 0, ran.err
        by_schema = {e.schema_name: e for e in backfilled(stack, json.loads(ran.out)["run_id"], 2)}
        assert (by_schema[small].batches, by_schema[small].key_high) == (1, None)
        assert by_schema[big].batches > 1 and by_schema[big].key_high is not None
        for schema in (small, big):
            assert wrong_rows(stack.engine, schema) == 0
        with stack.engine.connect() as connection:
            valid = connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_index AS i JOIN pg_class AS c"
                    " ON c.oid = i.indexrelid WHERE c.relname = 'ix_orders_created_at'"
                    " AND i.indisvalid"
                )
            ).scalar_one()
        assert valid == 2
