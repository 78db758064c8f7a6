"""One tenant attempt against a real PostgreSQL: one round trip when the schema is where the plan
saw it, two or three when it is not, and every way they can end."""

import dataclasses
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2.extensions
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tenantfleet import alembic_runtime, attempt, config, db, fleet_setup, locks, runs
from tests import helpers

R1, R2 = fleet_setup.R1, fleet_setup.R2


def start_run(engine: Engine, schemas: list[str], revision: str | None = R1) -> int:
    with db.begin(engine) as connection:
        return runs.create_run(connection, R2, [(schema, revision) for schema in schemas])


def task(
    engine: Engine, run_id: int, schema: str, target: str = R2, *, planned: bool = True
) -> runs.TenantTask:
    """The task a worker would get for ``schema`` in run ``run_id`` (``planned``: its message
    carries the revision the plan saw; messages of older producers did not)."""
    with engine.connect() as connection:
        uid = runs.get_run(connection, run_id).uid
        moves = runs.moves(connection, run_id)
    said = runs.planned_in_message(moves[schema][0]) if planned else None
    return runs.TenantTask(run_id, uid, schema, target, None, said)


def provisioned_and_begun(
    engine: Engine, connection: Connection, schema: str
) -> tuple[int, attempt.Started]:
    """A W1 tenant at r1, a run for it, and an attempt begun on ``connection``."""
    fleet_setup.provision(engine, [schema], R1)
    run_id = start_run(engine, [schema])
    return run_id, attempt.begin(
        connection, task(engine, run_id, schema), "w1", config.load_settings()
    )


def row(engine: Engine, run_id: int, schema: str) -> runs.RunTenant:
    with engine.connect() as connection:
        (found,) = [t for t in runs.tenants_of(connection, run_id) if t.schema_name == schema]
    return found


def no_transaction_open(connection: Connection) -> bool:
    dbapi = connection.connection.dbapi_connection
    assert dbapi is not None
    return bool(dbapi.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE)


def structure(engine: Engine, schema: str) -> set[tuple[str, ...]]:
    """The schema's catalog entries without the schema's name, to compare two tenants."""
    return {(kind, *rest) for kind, _, *rest in helpers.snapshot(engine, [schema])}


def test_an_attempt_upgrades_records_and_leaves_no_transaction_open(
    engine: Engine, autocommit: Connection
) -> None:
    run_id, found = provisioned_and_begun(engine, autocommit, "a1")
    assert found == attempt.Started(attempts=1, status="running", versions=[R1], planned=R1)
    assert attempt.apply(autocommit, found, task(engine, run_id, "a1", R2), since=time.monotonic())
    assert no_transaction_open(autocommit)
    assert helpers.revision_of(engine, "a1") == R2
    recorded = row(engine, run_id, "a1")
    assert (recorded.status, recorded.from_revision, recorded.worker) == ("succeeded", R1, "w1")


def test_a_tenant_is_recorded_as_finished_when_its_migration_ends(
    engine: Engine, autocommit: Connection
) -> None:
    """Not when its transaction began (``now()``): the row's interval covers the migration."""
    run_id, found = provisioned_and_begun(engine, autocommit, "slow")
    began = autocommit.exec_driver_sql("SELECT now()").scalar_one()
    autocommit.exec_driver_sql("SELECT pg_sleep(0.05)")  # the migration's work, in its transaction
    assert attempt.apply(
        autocommit, found, task(engine, run_id, "slow", R2), since=time.monotonic()
    )
    finished = helpers.tenant_times(engine, run_id)["slow"].finished_at
    assert finished is not None and (finished - began).total_seconds() >= 0.05


def test_replayed_sql_and_alembic_online_build_the_same_schema(
    engine: Engine, autocommit: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet_setup.provision(engine, ["replayed", "online"], R1)
    run_id = start_run(engine, ["replayed", "online"])
    settings = config.load_settings()
    for schema, replay in (("replayed", "true"), ("online", "false")):
        monkeypatch.setenv("TENANTFLEET_REPLAY_SQL", replay)
        alembic_runtime.replayable_sql.cache_clear()
        found = attempt.begin(autocommit, task(engine, run_id, schema), "w1", settings)
        assert attempt.apply(
            autocommit,
            found,
            task(engine, run_id, schema),
            since=time.monotonic(),
        )
    alembic_runtime.replayable_sql.cache_clear()
    assert helpers.revision_of(engine, "replayed") == helpers.revision_of(engine, "online")
    assert structure(engine, "replayed") == structure(engine, "online")
    assert no_transaction_open(autocommit)


def test_a_schema_without_a_version_table_is_migrated_from_base(
    engine: Engine, autocommit: Connection
) -> None:
    with db.begin(engine) as connection:
        connection.execute(sa.schema.CreateSchema("fresh"))
    run_id = start_run(engine, ["fresh"], revision=None)
    found = attempt.begin(autocommit, task(engine, run_id, "fresh"), "w1", config.load_settings())
    assert (found.attempts, found.versions) == (1, None)
    assert attempt.apply(
        autocommit, found, task(engine, run_id, "fresh", R2), since=time.monotonic()
    )
    assert helpers.revision_of(engine, "fresh") == R2


def test_a_finished_tenant_is_seen_as_such_and_left_alone(
    engine: Engine, autocommit: Connection
) -> None:
    fleet_setup.provision(engine, ["done"], R1)
    run_id = start_run(engine, ["done"])
    with db.begin(engine) as connection:
        runs.mark_failed(connection, task(engine, run_id, "done"), RuntimeError("boom"), 1)
    found = attempt.begin(autocommit, task(engine, run_id, "done"), "w1", config.load_settings())
    assert (found.status, found.pending, found.attempts) == ("failed", False, 0)
    attempt.end(autocommit, commit=False)
    assert no_transaction_open(autocommit)


def test_a_row_finished_meanwhile_rolls_the_upgrade_back(
    engine: Engine, autocommit: Connection
) -> None:
    run_id, found = provisioned_and_begun(engine, autocommit, "raced")
    with db.begin(engine) as connection:  # e.g. a duplicate delivery gave up on the lock
        runs.mark_failed(connection, task(engine, run_id, "raced"), RuntimeError("lock timeout"), 1)
    assert not attempt.apply(
        autocommit, found, task(engine, run_id, "raced", R2), since=time.monotonic()
    )
    assert helpers.revision_of(engine, "raced") == R1
    assert row(engine, run_id, "raced").status == "failed"
    assert no_transaction_open(autocommit)


def test_an_error_inside_the_attempt_releases_the_lock_and_the_transaction(
    engine: Engine, autocommit: Connection
) -> None:
    with pytest.raises(RuntimeError), attempt.open_transaction(autocommit):
        run_id, _ = provisioned_and_begun(engine, autocommit, "held")
        with engine.connect() as other:
            assert locks.held(other, ["held"]) == {"held"}
        raise RuntimeError("the task failed")
    assert no_transaction_open(autocommit)
    with engine.connect() as other:
        assert locks.held(other, ["held"]) == set()
    assert row(engine, run_id, "held").attempts == 1  # the running mark was committed first


def test_an_unknown_run_tenant_reads_as_none(engine: Engine, autocommit: Connection) -> None:
    fleet_setup.provision(engine, ["stray"], R1)
    stray = runs.TenantTask(424242, str(uuid.uuid4()), "stray", R2)
    found = attempt.begin(autocommit, stray, "w1", config.load_settings())
    assert (found.attempts, found.status) == (None, None)
    attempt.end(autocommit, commit=False)


@contextmanager
def statements_sent(connection: Connection) -> Iterator[list[str]]:
    """Every statement string sent on ``connection`` in the block: one per round trip."""
    sent: list[str] = []

    def record(_conn: Connection, _cursor: object, statement: str, *_: object) -> None:
        sent.append(statement)

    sa.event.listen(connection, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        sa.event.remove(connection, "before_cursor_execute", record)


def quick(connection: Connection, tenant: runs.TenantTask) -> attempt.Quick:
    return attempt.at_once(connection, tenant, "w1", config.load_settings(), max_attempts=8)


def test_a_tenant_where_the_plan_saw_it_is_migrated_in_one_round_trip(
    engine: Engine, autocommit: Connection
) -> None:
    fleet_setup.provision(engine, ["first", "second"], R1)
    run_id = start_run(engine, ["first", "second"])
    unsaid = task(engine, run_id, "first", planned=False)
    assert quick(autocommit, unsaid) is attempt.Quick.NOT_TRIED  # the message did not say
    found = attempt.begin(autocommit, unsaid, "w1", config.load_settings())
    assert found.planned == R1 and not found.moved(unsaid)  # the row says
    assert attempt.apply(autocommit, found, unsaid, since=time.monotonic())
    with statements_sent(autocommit) as sent:
        assert quick(autocommit, task(engine, run_id, "second")) is attempt.Quick.DONE
    assert len(sent) == 1
    assert no_transaction_open(autocommit)
    assert helpers.revision_of(engine, "second") == R2
    recorded = row(engine, run_id, "second")
    assert (recorded.status, recorded.from_revision, recorded.attempts) == ("succeeded", R1, 1)
    assert structure(engine, "first") == structure(engine, "second")


def test_a_schema_moved_since_the_plan_changes_nothing_but_the_running_mark(
    engine: Engine, autocommit: Connection
) -> None:
    fleet_setup.provision(engine, ["ahead"], R2)  # planned at R1, moved to R2 by hand since
    run_id = start_run(engine, ["ahead"], revision=R1)
    moved = task(engine, run_id, "ahead")
    assert quick(autocommit, moved) is attempt.Quick.MISSED
    found = attempt.begin(autocommit, moved, "w1", config.load_settings(), marked=True)
    assert found == attempt.Started(attempts=1, status="running", versions=[R2], planned=R1)
    assert found.moved(moved)  # at the target, but not by this run: its mark commits with it
    with db.begin(engine) as connection:
        reason = runs.mark_moved(connection, moved, found.from_revision)
    attempt.end(autocommit, commit=False)
    assert reason == f"moved to {R2} since the plan saw it at {R1}; moved by hand" + (
        " (not by a tenantfleet run): not touched"
    )
    recorded = row(engine, run_id, "ahead")
    assert (recorded.status, recorded.error_class, recorded.attempts) == (
        "skipped",
        "MovedSince",
        1,
    )
    assert helpers.revision_of(engine, "ahead") == R2


def test_a_finished_tenant_or_a_schema_without_versions_is_missed_at_once(
    engine: Engine, autocommit: Connection
) -> None:
    fleet_setup.provision(engine, ["over"], R1)
    with db.begin(engine) as connection:
        connection.execute(sa.schema.CreateSchema("bare"))
    run_id = start_run(engine, ["over", "bare"])
    with db.begin(engine) as connection:
        runs.mark_failed(connection, task(engine, run_id, "over"), RuntimeError("boom"), 1)
    settings = config.load_settings()
    assert quick(autocommit, task(engine, run_id, "over")) is attempt.Quick.MISSED
    found = attempt.begin(autocommit, task(engine, run_id, "over"), "w1", settings, marked=True)
    assert (found.status, found.attempts) == ("failed", 0)
    attempt.end(autocommit, commit=False)
    assert helpers.revision_of(engine, "over") == R1
    bare = dataclasses.replace(task(engine, run_id, "bare"), planned=R1)  # as planned, then gone
    assert quick(autocommit, bare) is attempt.Quick.MISSED
    found = attempt.begin(autocommit, bare, "w1", settings, marked=True)
    assert (found.status, found.attempts, found.versions) == ("running", 1, None)
    attempt.end(autocommit, commit=False)
    assert no_transaction_open(autocommit)
