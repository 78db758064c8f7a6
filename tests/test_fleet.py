"""The fleet migration end to end: real Redis, PostgreSQL, worker processes and Flower."""

import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from tenantfleet import fleet_setup, planning, producer, registry, runs
from tests import helpers
from tests.stack import Stack

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


@pytest.fixture(autouse=True)
def fresh_registry(stack: Stack) -> Iterator[None]:
    """Each test migrates only the tenants it provisions."""
    stack.deactivate_all()
    yield


def break_tenants(stack: Stack, schemas: list[str]) -> None:
    """The next revision creates audit_log; a table of that name already exists."""
    quote = stack.engine.dialect.identifier_preparer.quote
    with stack.engine.begin() as connection:
        for schema in schemas:
            connection.execute(sa.text(f"CREATE TABLE {quote(schema)}.audit_log (id int)"))


def repair_tenants(stack: Stack, schemas: list[str]) -> None:
    quote = stack.engine.dialect.identifier_preparer.quote
    with stack.engine.begin() as connection:
        for schema in schemas:
            connection.execute(sa.text(f"DROP TABLE {quote(schema)}.audit_log"))


def migrate(stack: Stack, *args: str) -> helpers.Result:
    return helpers.run_cli(
        "migrate", *args, env={"TENANTFLEET_DATABASE_URL": stack.database_url}, timeout=300
    )


def test_broken_tenants_fail_alone_are_recorded_and_show_in_flower(stack: Stack) -> None:
    schemas = fleet_setup.fleet_names(50, prefix="f")
    fleet_setup.provision(stack.engine, schemas, R1)
    broken = ["f00003", "f00017", "f00029", "f00041", "f00050"]
    break_tenants(stack, broken)
    pristine_r1 = helpers.snapshot(stack.engine, ["f00003"])

    result = migrate(stack, "--wait", "--json")
    assert result.code == 1, result.err
    report = json.loads(result.out)
    assert report["status"] == "partial"
    assert report["counts"] == {
        "total": 50,
        "succeeded": 45,
        "failed": 5,
        "skipped": 0,
        "pending": 0,
        "up_to_date": 0,
        "queued": 0,
        "running": 0,
        "retrying": 0,
        "waiting": 0,
        "cancelled": 0,
    }
    per_run = {k: v for k, v in report["counts"].items() if k != "up_to_date"}
    assert report["databases"] == {"default": per_run}
    by_schema = {t["schema"]: t for t in report["tenants"]}
    assert set(by_schema) == set(schemas)
    for schema in broken:
        assert by_schema[schema]["status"] == "failed"
        assert by_schema[schema]["error"].startswith("DuplicateTable: ")
    assert all(by_schema[s]["status"] == "succeeded" for s in set(schemas) - set(broken))

    revisions = stack.revisions(schemas)
    assert {s: revisions[s] for s in broken} == dict.fromkeys(broken, R1)
    assert all(revisions[s] == R3 for s in set(schemas) - set(broken))
    assert helpers.snapshot(stack.engine, ["f00003"]) == pristine_r1  # rolled back whole

    with stack.engine.connect() as connection:
        rows = {t.schema_name: t for t in registry.list_tenants(connection) if t.is_active}
    assert {s: rows[s].last_migration_status for s in broken} == dict.fromkeys(broken, "failed")
    assert rows["f00001"].current_revision == R3 and rows["f00003"].current_revision == R1
    assert {rows[s].last_run_id for s in schemas} == {report["run_id"]}

    in_flower = stack.failed_in_flower(report["run_id"], expected=len(broken))
    assert set(in_flower) == set(broken)
    assert all("DuplicateTable" in exception for exception in in_flower.values())
    with urllib.request.urlopen(stack.flower_url + "/tasks", timeout=10) as listed:
        assert 'data-column="args"' in listed.read().decode()  # the list names each tenant

    repair_tenants(stack, broken)
    again = migrate(stack, "--wait", "--json")
    assert again.code == 0, again.err
    assert json.loads(again.out)["counts"]["succeeded"] == len(broken)
    assert set(stack.revisions(schemas).values()) == {R3}

    tasks_before = len(stack.flower("/api/tasks?taskname=tenantfleet.migrate_tenant"))
    nothing = migrate(stack, "--wait", "--json")
    assert nothing.code == 0
    report = json.loads(nothing.out)
    assert report["status"] == "nothing_to_do"
    assert report["counts"]["total"] == 0 and report["counts"]["up_to_date"] == 50
    time.sleep(0.5)
    assert len(stack.flower("/api/tasks?taskname=tenantfleet.migrate_tenant")) == tasks_before


def test_the_chord_callback_closes_the_run_without_the_producer(stack: Stack) -> None:
    """Without --wait nobody but the chord body or its errback can close the run."""
    schemas = fleet_setup.fleet_names(6, prefix="cb")
    fleet_setup.provision(stack.engine, schemas, R1)
    break_tenants(stack, ["cb00002"])
    result = migrate(stack, "--revision", R2)
    assert result.code == 0 and result.out.startswith("run ")
    run_id = int(result.out.split()[1])
    deadline = time.monotonic() + 60
    while True:
        with stack.engine.connect() as connection:
            run = runs.get_run(connection, run_id)
        if run.finished_at is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (run.status, run.succeeded, run.failed, run.target_revision) == ("partial", 5, 1, R2)


def test_the_run_rows_are_analyzed_before_the_first_task_goes(stack: Stack) -> None:
    """The planner knows how many rows the new run has (``runs.refresh_estimates``): without
    statistics, each attempt found its own row by reading every row of its run."""
    schemas = fleet_setup.fleet_names(3, prefix="an")
    fleet_setup.provision(stack.engine, schemas, R1)
    result = migrate(stack, "--revision", R2)
    assert result.code == 0, result.err
    with stack.engine.connect() as connection:
        estimated, rows = connection.execute(
            sa.text(
                "SELECT reltuples, (SELECT count(*) FROM public.migration_run_tenants)"
                " FROM pg_class WHERE oid = 'public.migration_run_tenants'::regclass"
            )
        ).one()
    assert estimated == rows


def test_timeout_exits_3_and_a_locked_tenant_retries_until_the_lock_goes(stack: Stack) -> None:
    schemas = fleet_setup.fleet_names(4, prefix="lk")
    fleet_setup.provision(stack.engine, schemas, R1)
    with stack.engine.connect() as blocker:
        transaction = blocker.begin()
        blocker.execute(sa.text("LOCK TABLE lk00002.users IN ACCESS EXCLUSIVE MODE"))
        result = migrate(stack, "--wait", "--timeout", "1")
        assert result.code == 3, result.err
        assert "--timeout of 1 s reached" in result.err
        run_id = int(result.out.split()[1].rstrip(":"))
        # the condition meant: the tenant met the lock and went back to wait for a retry
        wait_for_row(stack, run_id, "lk00002", lambda t: t.status == "retrying")
        transaction.rollback()
    closed = stack.until_closed(run_id)
    assert closed is not None and closed.status == "succeeded"
    with stack.engine.connect() as connection:
        locked = {t.schema_name: t for t in runs.tenants_of(connection, run_id)}["lk00002"]
    assert locked.attempts >= 2 and locked.status == "succeeded"


def wait_for_row(
    stack: Stack,
    run_id: int,
    schema: str,
    condition: Callable[[runs.RunTenant], bool],
    timeout: float = 120,
) -> runs.RunTenant:
    """Poll the tenant's run row until ``condition`` holds (no fixed sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        with stack.engine.connect() as connection:
            found = {t.schema_name: t for t in runs.tenants_of(connection, run_id)}[schema]
        if condition(found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.05)


def test_a_duplicate_delivery_never_migrates_a_schema_twice(stack: Stack) -> None:
    from tenantfleet.manager import MigrationManager

    schemas = fleet_setup.fleet_names(1, prefix="dup")
    fleet_setup.provision(stack.engine, schemas, R1)
    run_id = producer.start(MigrationManager(engine=stack.engine), planning.MigrateOptions())
    copies = [stack.send_by_hand(run_id, "dup00001", R3) for _ in range(3)]
    outcomes = [copy.get(timeout=60) for copy in copies]
    assert stack.until_closed(run_id) is not None
    assert set(outcomes) <= {"succeeded", "duplicate"} and "duplicate" in outcomes
    with stack.engine.connect() as connection:
        [row] = runs.tenants_of(connection, run_id)
        ran = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_orders_status'"
                " AND schemaname = 'dup00001'"
            )
        ).scalar()
    assert row.status == "succeeded" and ran == 1
    assert stack.revisions(["dup00001"]) == {"dup00001": R3}


def test_a_task_for_a_run_this_database_does_not_know_fails_loudly(stack: Stack) -> None:
    copy = stack.send_by_hand(999999, "nobody", R3, uid=str(uuid.uuid4()))
    with pytest.raises(Exception, match="has no such tenant in this worker's database"):
        copy.get(timeout=60)


def test_bad_migrate_requests_are_refused_before_anything_changes(stack: Stack) -> None:
    fleet_setup.provision(stack.engine, ["bad00001"], R1)
    with stack.engine.begin() as connection:
        registry.register(connection, "bad00002", "no schema")
    before = helpers.snapshot(stack.engine, ["bad00001", "public"])
    cases = [
        (["--revision", "nope"], "unknown revision 'nope'"),
        (["--revision", "base"], "only upgrades"),
        (["--tenant", "x;drop"], "invalid schema name"),
        (["--tenant", "ghost"], "not in public.tenant_registry: ghost"),
        (["--tenant", "bad00002", "--strict"], "cannot be migrated (--strict): bad00002"),
        (["--timeout", "5"], "--timeout goes with --wait"),
    ]
    for args, message in cases:
        result = migrate(stack, *args)
        assert result.code == 2, (args, result.err)
        assert message in result.err and result.err.count("\n") == 1
    assert helpers.snapshot(stack.engine, ["bad00001", "public"]) == before
