"""Faults inflicted for real on private servers: nothing half-migrated, nothing unaccounted for.

Each scenario migrates a fleet of at least 100 W1 tenants from r1 to r2 and ends with the same
three checks: (a) every tenant fully at r2 or untouched at r1 (catalog compared), (b) the run
record gives every tenant a final state, (c) the exit code and message say what happened.
"""

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import db, fleet_setup, runs
from tenantfleet.errors import UsageError
from tests import helpers
from tests.helpers import wait_for
from tests.private import (
    R1,
    R2,
    Private,
    check_all_or_nothing,
    check_run_accounts_for_everyone,
    finish,
    kill_hard,
    reference_structures,
    worker_children,
)

FLEET = 100
RESULTS: dict[str, dict[str, object]] = {}


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    servers = Private(
        tmp_path_factory.mktemp("private"),
        extra_env={
            "TENANTFLEET_LOCK_TIMEOUT": "30",
            "TENANTFLEET_RETRY_BACKOFF": "0.2",
            "TENANTFLEET_RETRY_BACKOFF_MAX": "1",
            "TENANTFLEET_MAX_RETRIES": "8",
            "TENANTFLEET_POLL_INTERVAL": "0.1",
        },
    )
    servers.start()
    yield servers
    servers.stop()
    report = os.environ.get("TENANTFLEET_RELIABILITY_REPORT")
    if report:
        Path(report).write_text(json.dumps(RESULTS, indent=2, default=str))


@dataclass
class Fleet:
    url: str
    engine: Engine
    schemas: list[str]
    references: dict[str, set[tuple[str, ...]]]


@pytest.fixture
def fleet(private: Private) -> Iterator[Fleet]:
    url = private.new_database()
    engine = db.make_engine(url)
    references = reference_structures(engine)
    schemas = fleet_setup.fleet_names(FLEET)
    fleet_setup.provision(engine, schemas, R1)
    yield Fleet(url, engine, schemas, references)
    for worker in private.workers:
        from tenantfleet import processes

        processes.stop(worker, timeout=10)
    private.workers.clear()
    engine.dispose()
    helpers.drop_database(private.admin_url, url)


class TableLock:
    """Another session holding ACCESS EXCLUSIVE on some tenants' ``users`` tables."""

    def __init__(self, engine: Engine, schemas: list[str]) -> None:
        self.connection = engine.connect()
        self.transaction = self.connection.begin()
        quote = engine.dialect.identifier_preparer.quote
        for schema in schemas:
            self.connection.execute(
                sa.text(f"LOCK TABLE {quote(schema)}.users IN ACCESS EXCLUSIVE MODE")
            )

    def release(self) -> None:
        self.transaction.rollback()
        self.connection.close()


def migrate_with_a_locked_tenant(
    private: Private, fleet: Fleet, schema: str, **worker_env: str
) -> dict[str, Any]:
    """Workers with ``worker_env``, ``schema``'s users table locked throughout a
    ``migrate --wait --json``; the report of a run that must end with exit 1."""
    private.start_worker(fleet.url, 2, **worker_env)
    lock = TableLock(fleet.engine, [schema])
    try:
        result = private.cli(fleet.url, "migrate", "--wait", "--json", "--revision", R2)
    finally:
        lock.release()
    assert result.code == 1, result.err
    report: dict[str, Any] = json.loads(result.out)
    return report


def waiting_on_advisory_locks(engine: Engine) -> int:
    """Sessions of this database waiting for an advisory lock (a schema's, here)."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    " AND database = (SELECT oid FROM pg_database"
                    " WHERE datname = current_database())"
                )
            ).scalar_one()
        )


def tally(engine: Engine, run_id: int) -> runs.Counts:
    with engine.connect() as connection:
        return runs.counts(connection, run_id)


def latest_run(engine: Engine) -> int:
    with engine.connect() as connection:
        return runs.latest_run_id(connection)


def run_so_far(engine: Engine) -> int:
    """The latest run's id; 0 before the first."""
    try:
        return latest_run(engine)
    except UsageError:
        return 0


def three_checks(fleet: Fleet, run_id: int) -> tuple[dict[str, str], dict[str, str]]:
    structures = check_all_or_nothing(fleet.engine, fleet.schemas, fleet.references)
    states = check_run_accounts_for_everyone(fleet.engine, run_id, fleet.schemas)
    for schema, state in states.items():
        assert (state == "succeeded") == (structures[schema] == "r2"), schema
    return structures, states


def statuses(engine: Engine, run_id: int, schemas: list[str]) -> set[str]:
    with engine.connect() as connection:
        return {t.status for t in runs.tenants_of(connection, run_id) if t.schema_name in schemas}


def attempts(engine: Engine, run_id: int) -> dict[str, int]:
    with engine.connect() as connection:
        return {t.schema_name: t.attempts for t in runs.tenants_of(connection, run_id)}


# -- 1. worker crashes -------------------------------------------------------------------


def test_kill_9_of_a_worker_child_mid_run(private: Private, fleet: Fleet) -> None:
    worker = private.start_worker(fleet.url)
    lock = TableLock(fleet.engine, ["t00001", "t00002"])
    started = time.monotonic()
    producer = private.cli_background(fleet.url, "migrate", "--wait", "--revision", R2)
    wait_for(lambda: (latest_run(fleet.engine) if _has_run(fleet.engine) else None) is not None)
    run_id = latest_run(fleet.engine)
    wait_for(lambda: statuses(fleet.engine, run_id, ["t00001", "t00002"]) == {"running"})
    victim = worker_children(worker)[0]  # both children are held by the locked tenants
    kill_hard(victim.pid)
    killed_at = time.monotonic()
    # The victim sent its whole attempt in one statement string: its orphaned session would
    # finish the tenant itself once the lock is gone. Keep the lock until the requeued task
    # has begun its own attempt, so the test shows the redelivery.
    wait_for(lambda: max(attempts(fleet.engine, run_id).values()) >= 2)
    lock.release()
    result = finish(producer)
    recovered = time.monotonic() - killed_at
    assert result.code == 0, result.err
    assert f"run {run_id}: succeeded - {FLEET} succeeded" in result.out
    structures, _ = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"}
    assert max(attempts(fleet.engine, run_id).values()) >= 2  # the interrupted tenant ran again
    RESULTS["kill -9 worker child"] = {
        "tenants": FLEET,
        "lost_or_half": 0,
        "recovered_s": round(recovered, 1),
        "total_s": round(time.monotonic() - started, 1),
    }


def test_kill_9_of_a_whole_worker_mid_run(private: Private, fleet: Fleet) -> None:
    worker = private.start_worker(fleet.url)
    lock = TableLock(fleet.engine, ["t00001", "t00002"])
    fast = {"TENANTFLEET_STALL_RESUME": "3"}
    producer = private.cli_background(fleet.url, "migrate", "--wait", "--revision", R2, **fast)
    wait_for(lambda: _has_run(fleet.engine))
    run_id = latest_run(fleet.engine)
    wait_for(lambda: tally(fleet.engine, run_id).running >= 2)
    for process in [*worker_children(worker), worker]:
        kill_hard(process.pid)
    killed_at = time.monotonic()
    private.start_worker(fleet.url)  # a replacement comes up, as an orchestrator would do
    # Until the orphaned sessions give up on the lock, they could finish the two tenants
    # themselves (scenario 1a); keep it until the producer has re-sent them.
    wait_for(lambda: max(attempts(fleet.engine, run_id).values()) >= 2)
    lock.release()
    result = finish(producer)
    recovered = time.monotonic() - killed_at
    assert result.code == 0, result.err
    assert "sent again" in result.err  # the waiting producer re-sent the orphans
    structures, _ = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"}
    RESULTS["kill -9 whole worker"] = {
        "tenants": FLEET,
        "lost_or_half": 0,
        "recovered_s": round(recovered, 1),
        "stall_resume_s": 3,
    }


def _has_run(engine: Engine) -> bool:
    with engine.connect() as connection:
        return bool(runs.list_runs(connection, 1))


# -- 2. the broker loses everything ------------------------------------------------------


def test_redis_restarted_empty_mid_run_then_resume(private: Private, fleet: Fleet) -> None:
    private.start_worker(fleet.url)
    lock = TableLock(fleet.engine, ["t00001", "t00002"])
    started = private.cli(fleet.url, "migrate", "--revision", R2)
    assert started.code == 0
    run_id = int(started.out.split()[1])
    wait_for(lambda: tally(fleet.engine, run_id).running >= 2)
    private.restart_redis_empty()
    lost_at = time.monotonic()
    lock.release()
    time.sleep(2)
    assert tally(fleet.engine, run_id).queued > 0  # those tasks are gone with Redis
    resumed = private.cli(fleet.url, "resume", str(run_id), "--wait")
    recovered = time.monotonic() - lost_at
    assert resumed.code == 0, resumed.err
    assert f"run {run_id}: succeeded - {FLEET} succeeded" in resumed.out
    structures, _ = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"}
    assert set(attempts(fleet.engine, run_id).values()) == {1}  # nobody migrated twice
    RESULTS["redis restarted empty"] = {
        "tenants": FLEET,
        "lost_or_half": 0,
        "recovered_s": round(recovered, 1),
        "by": "tenantfleet resume RUN --wait",
    }


# -- 3. the database restarts ------------------------------------------------------------


def test_postgres_restarted_mid_run(private: Private, fleet: Fleet) -> None:
    extra = fleet_setup.fleet_names(FLEET + 200)[FLEET:]
    fleet_setup.provision(fleet.engine, extra, R1)
    fleet.schemas.extend(extra)
    private.start_worker(fleet.url)
    producer = private.cli_background(fleet.url, "migrate", "--wait", "--revision", R2)
    wait_for(lambda: _has_run(fleet.engine))
    run_id = latest_run(fleet.engine)
    wait_for(lambda: tally(fleet.engine, run_id).done >= 20, every=0.02)
    pending_at_restart = tally(fleet.engine, run_id).pending
    fleet.engine.dispose()
    private.restart_postgres(down_for=1.0)
    restarted_at = time.monotonic()
    result = finish(producer)
    assert result.code == 0, result.err
    assert pending_at_restart > 0
    structures, _ = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"}
    RESULTS["postgres restarted"] = {
        "tenants": len(fleet.schemas),
        "pending_at_restart": pending_at_restart,
        "lost_or_half": 0,
        "recovered_s": round(time.monotonic() - restarted_at, 1),
    }


def test_a_database_outage_longer_than_the_retry_budget_is_ridden_out(
    private: Private, fleet: Fleet
) -> None:
    """Down for longer than the workers' retries of other errors would last (8 here): a lost
    connection is retried without limit, the producer keeps following, nothing is left without
    a task."""
    private.start_worker(fleet.url)
    producer = private.cli_background(fleet.url, "migrate", "--wait", "--revision", R2)
    wait_for(lambda: _has_run(fleet.engine))
    run_id = latest_run(fleet.engine)
    wait_for(lambda: tally(fleet.engine, run_id).done >= 20, every=0.02)
    fleet.engine.dispose()
    private.restart_postgres(down_for=20.0)
    result = finish(producer)
    assert result.code == 0, result.err
    assert "the database is unreachable" in result.err and "answers again" in result.err
    structures, states = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"} and set(states.values()) == {"succeeded"}


# -- 4. lock contention ------------------------------------------------------------------


def test_a_locked_tenant_backs_off_and_succeeds_once_released(
    private: Private, fleet: Fleet
) -> None:
    """The lock is released once the tenant was tried again while locked (its attempts in
    the run table, not a timer: on a slow machine the fleet may not reach it for a while)."""
    private.start_worker(fleet.url, TENANTFLEET_LOCK_TIMEOUT="0.5", TENANTFLEET_MAX_RETRIES="20")
    lock = TableLock(fleet.engine, ["t00050"])
    before = run_so_far(fleet.engine)
    producer = private.cli_background(fleet.url, "migrate", "--wait", "--revision", R2)
    try:

        def retried_while_locked() -> int | None:
            run_id = run_so_far(fleet.engine)
            if run_id > before and attempts(fleet.engine, run_id).get("t00050", 0) >= 2:
                return run_id
            return None

        run_id = helpers.wait_for(
            retried_while_locked, "t00050 to be tried again while locked", timeout=300
        )
    finally:
        lock.release()
    result = finish(producer)
    assert result.code == 0, result.err
    structures, _ = three_checks(fleet, run_id)
    assert set(structures.values()) == {"r2"}


def test_a_lock_outlasting_the_retry_budget_fails_that_tenant_alone(
    private: Private, fleet: Fleet
) -> None:
    report = migrate_with_a_locked_tenant(
        private, fleet, "t00050", TENANTFLEET_LOCK_TIMEOUT="0.3", TENANTFLEET_MAX_RETRIES="2"
    )
    failed = [t for t in report["tenants"] if t["status"] == "failed"]
    assert [t["schema"] for t in failed] == ["t00050"]
    assert failed[0]["error"].startswith(
        "LockNotAvailable: canceling statement due to lock timeout"
    )
    assert failed[0]["attempts"] == 3
    structures, states = three_checks(fleet, report["run_id"])
    assert structures["t00050"] == "r1" and list(states.values()).count("succeeded") == FLEET - 1


# -- 5. long tasks and duplicated deliveries -----------------------------------------------


def test_a_duplicate_delivery_waits_for_the_lock_and_never_migrates_twice(
    private: Private, fleet: Fleet
) -> None:
    private.start_worker(fleet.url, concurrency=3)
    lock = TableLock(fleet.engine, ["t00001"])
    started = private.cli(fleet.url, "migrate", "--revision", R2, "--tenant", "t00001")
    run_id = int(started.out.split()[1])
    wait_for(lambda: tally(fleet.engine, run_id).running == 1)
    env = private.env(fleet.url)
    send = (
        "from tenantfleet.tasks.tenant import migrate_tenant\n"
        "from tenantfleet import config, db, queues, runs\n"
        "engine = db.make_engine(config.database_url(config.load_settings()))\n"
        "with engine.connect() as c:\n"
        f"    q, uid = queues.of_database(c), runs.get_run(c, {run_id}).uid\n"
        f"sent = migrate_tenant.apply_async(({run_id}, 't00001', '{R2}'), {{'run_uid': uid}},"
        " queue=q.tenants, ignore_result=False)\n"
        "print(sent.get(timeout=120))\n"
    )
    import subprocess
    import sys

    duplicate = subprocess.Popen(
        [sys.executable, "-c", send],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the condition meant: the duplicate waits for the schema's lock, held by the first
    wait_for(lambda: waiting_on_advisory_locks(fleet.engine) >= 1)
    lock.release()
    out, err = duplicate.communicate(timeout=120)
    assert out.strip() == "duplicate", err
    finished = private.cli(fleet.url, "status", str(run_id), "--json")
    report = json.loads(finished.out)
    assert report["status"] == "succeeded" and report["counts"]["succeeded"] == 1
    with fleet.engine.connect() as connection:
        indexes = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = 't00001'"
                " AND indexname = 'ix_orders_status'"
            )
        ).scalar()
    assert indexes == 1


def test_a_migration_past_the_time_limit_rolls_back_and_is_not_redelivered(
    private: Private, fleet: Fleet
) -> None:
    # The limit is the worker's own: the producer runs with the default (900 s).
    report = migrate_with_a_locked_tenant(
        private,
        fleet,
        "t00007",
        TENANTFLEET_TASK_TIME_LIMIT="4",
        TENANTFLEET_VISIBILITY_TIMEOUT="5",
    )
    [failed] = [t for t in report["tenants"] if t["status"] == "failed"]
    assert failed["schema"] == "t00007" and failed["error"].startswith("SoftTimeLimitExceeded")
    time.sleep(16)  # past the visibility timeout and Kombu's restore check: no redelivery
    structures, _ = three_checks(fleet, report["run_id"])
    assert structures["t00007"] == "r1"
    assert attempts(fleet.engine, report["run_id"])["t00007"] == 1


# -- 6. racing deploy hooks ----------------------------------------------------------------


def test_two_migrates_started_at_the_same_instant_make_one_run(
    private: Private, fleet: Fleet
) -> None:
    private.start_worker(fleet.url)
    lock = TableLock(fleet.engine, ["t00001"])
    racers = [private.cli_background(fleet.url, "migrate", "--revision", R2) for _ in range(2)]
    results = [finish(r) for r in racers]
    lock.release()
    assert sorted(r.code for r in results) == [0, 2]
    assert any("is active" in r.err for r in results)
    with fleet.engine.connect() as connection:
        assert len(runs.list_runs(connection, 10)) == 1
    run_id = latest_run(fleet.engine)
    assert private.cli(fleet.url, "resume", str(run_id), "--wait").code == 0
    three_checks(fleet, run_id)


# -- 9. load -------------------------------------------------------------------------------


def test_load_with_a_fifth_of_the_fleet_failing(private: Private, fleet: Fleet) -> None:
    size = int(os.environ.get("TENANTFLEET_LOAD_TENANTS", "2000"))
    extra = fleet_setup.fleet_names(size)[FLEET:]
    fleet_setup.provision(fleet.engine, extra, R1)
    fleet.schemas.extend(extra)
    broken = fleet.schemas[::5]
    quote = fleet.engine.dialect.identifier_preparer.quote
    with fleet.engine.begin() as connection:
        for schema in broken:
            connection.execute(sa.text(f"CREATE TABLE {quote(schema)}.audit_log (id int)"))
    fleet.references["r1"] = fleet.references["r1"]  # broken tenants are checked apart below
    private.start_worker(fleet.url)
    started = time.monotonic()
    result = private.cli(fleet.url, "migrate", "--wait", "--json", "--revision", R2)
    elapsed = time.monotonic() - started
    assert result.code == 1
    report = json.loads(result.out)
    assert report["counts"]["failed"] == len(broken)
    assert report["counts"]["succeeded"] == size - len(broken)
    states = check_run_accounts_for_everyone(fleet.engine, report["run_id"], fleet.schemas)
    assert {s for s, state in states.items() if state == "failed"} == set(broken)
    healthy = [s for s in fleet.schemas if s not in set(broken)]
    assert set(check_all_or_nothing(fleet.engine, healthy, fleet.references).values()) == {"r2"}
    with fleet.engine.connect() as connection:
        from tenantfleet import versions

        assert set(versions.read_versions(connection, broken).values()) == {R1}
    RESULTS["load"] = {
        "tenants": size,
        "failing": len(broken),
        "lost_or_half": 0,
        "seconds": round(elapsed, 1),
    }
