"""MigrationManager and the single-schema commands, through the API, the CLI and migrate.py."""

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, planning, registry
from tenantfleet.errors import (
    ConfigError,
    DuplicateTenant,
    MigrationFailed,
    TenantStateError,
    UnknownRevision,
    UnknownTenant,
)
from tenantfleet.manager import MigrationManager
from tests import helpers

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


def test_init_public_on_a_new_database_then_status(empty_database_url: str) -> None:
    manager = MigrationManager()
    before = manager.status_public()
    all_revisions = list(alembic_runtime.public_script().walk_revisions())
    assert before.current is None and len(before.pending) == len(all_revisions) == 15
    after = manager.init_public()
    assert after.up_to_date and after.current == after.head
    assert manager.init_public() == after  # a second init changes nothing


def test_tenant_commands_need_the_public_schema(empty_database_url: str) -> None:
    with pytest.raises(ConfigError, match="tenantfleet public upgrade"):
        MigrationManager().init_tenant("acme")


def test_init_tenant_creates_registers_and_migrates_as_one_unit(engine: Engine) -> None:
    status = MigrationManager().init_tenant(
        "acme", "Acme Inc", email="ops@acme.test", tenant_country_code="FR", api_key="k-1"
    )
    assert status.current == status.head == R3 and status.up_to_date
    with engine.connect() as connection:
        tenant = registry.get(connection, "acme")
        row = connection.execute(
            sa.text("SELECT tenant_country_code, api_key FROM tenant_registry")
        ).one()
    assert (tenant.tenant_name, tenant.email, tenant.current_revision) == (
        "Acme Inc",
        "ops@acme.test",
        R3,
    )
    assert tuple(row) == ("FR", "k-1")


def test_init_tenant_at_a_revision_and_pending_in_status(engine: Engine) -> None:
    manager = MigrationManager()
    manager.init_tenant("acme", revision=R1)
    status = manager.status_tenant("acme")
    assert (status.current, status.head, status.pending) == (R1, R3, [R2, R3])


def test_a_failed_init_tenant_leaves_neither_schema_nor_registry_row(engine: Engine) -> None:
    """An event trigger makes the second revision fail inside PostgreSQL itself."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE FUNCTION refuse_audit() RETURNS event_trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()"
                " WHERE object_identity LIKE 'doomed.audit_log%') THEN"
                " RAISE EXCEPTION 'refused by test trigger'; END IF; END $$;"
                " CREATE EVENT TRIGGER refuse_audit ON ddl_command_end"
                " EXECUTE FUNCTION refuse_audit()"
            )
        )
    with pytest.raises(MigrationFailed, match="refused by test trigger"):
        MigrationManager().init_tenant("doomed")
    assert "doomed" not in helpers.schema_names(engine)
    with engine.connect() as connection:
        assert not registry.is_registered(connection, "doomed")


def test_upgrade_and_downgrade_one_tenant_touch_no_other_schema(engine: Engine) -> None:
    manager = MigrationManager()
    manager.init_tenant("alpha", revision=R1)
    manager.init_tenant("beta", revision=R1)
    others_before = helpers.snapshot(engine, ["beta", "public"])

    step = manager.upgrade_tenant("alpha", R2)
    assert (step.from_revision, step.to_revision) == (R1, R2)
    assert helpers.snapshot(engine, ["beta", "public"]) == others_before
    assert helpers.revision_of(engine, "alpha") == R2 and helpers.revision_of(engine, "beta") == R1

    manager.upgrade_tenant("alpha")
    manager.downgrade_tenant("alpha", R1)
    assert helpers.snapshot(engine, ["beta", "public"]) == others_before
    assert helpers.revision_of(engine, "alpha") == R1
    alpha_r1 = helpers.snapshot(engine, ["alpha"])
    assert alpha_r1 == {
        item if item[1] != "beta" else (item[0], "alpha", *item[2:])
        for item in helpers.snapshot(engine, ["beta"])
    }
    with engine.connect() as connection:
        assert registry.get(connection, "alpha").current_revision == R1


def test_downgrade_to_base_empties_the_schema(engine: Engine) -> None:
    manager = MigrationManager()
    manager.init_tenant("alpha")
    manager.downgrade_tenant("alpha", "base")
    with engine.connect() as connection:
        tables = connection.execute(
            sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'alpha'")
        ).scalars()
        assert set(tables) == {"alembic_version"}
    assert manager.status_tenant("alpha").current is None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m: m.upgrade_tenant("ghost"), UnknownTenant),
        (lambda m: m.status_tenant("ghost"), UnknownTenant),
        (lambda m: m.upgrade_tenant("acme", "nope"), UnknownRevision),
        (lambda m: m.downgrade_tenant("acme", "nope"), UnknownRevision),
        (lambda m: m.init_tenant("acme"), DuplicateTenant),
        (lambda m: m.init_tenant("other", api_key="k-1"), DuplicateTenant),
        (lambda m: m.init_tenant("other", revision="nope"), UnknownRevision),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(
    engine: Engine, call: object, error: type[Exception]
) -> None:
    manager = MigrationManager()
    manager.init_tenant("acme", api_key="k-1")
    before = helpers.snapshot(engine, ["acme", "public"]), helpers.schema_names(engine)
    with pytest.raises(error):
        call(manager)  # type: ignore[operator]
    assert (helpers.snapshot(engine, ["acme", "public"]), helpers.schema_names(engine)) == before


def test_registered_tenant_without_schema_and_unknown_revision(engine: Engine) -> None:
    manager = MigrationManager()
    manager.init_tenant("acme")
    with engine.begin() as connection:
        registry.register(connection, "lost", "Lost")
        connection.execute(sa.text("UPDATE acme.alembic_version SET version_num = 'ffff'"))
    with pytest.raises(TenantStateError, match="does not exist"):
        manager.upgrade_tenant("lost")
    with pytest.raises(TenantStateError):
        manager.upgrade_tenant("acme")
    status = manager.status_tenant("acme")
    assert status.current == "ffff" and not status.known


# -- the same through the command line ----------------------------------------------------


def test_cli_walk_through(database_url: str) -> None:
    created = helpers.run_cli(
        "tenant",
        "create",
        "demo",
        "--name",
        "Demo Inc",
        "--email",
        "a@demo.test",
        "--revision",
        R1,
    )
    assert created.code == 0, created.err
    assert f"current:  {R1}" in created.out and f"pending:  {R2}, {R3}" in created.out
    upgraded = helpers.run_cli("tenant", "upgrade", "demo")
    assert upgraded.code == 0 and f"demo: {R1} -> {R3}" in upgraded.out
    status = helpers.run_cli("tenant", "status", "demo", "--json")
    assert '"up_to_date": true' in status.out
    listed = helpers.run_cli("tenants", "list")
    assert "demo" in listed.out and "Demo Inc" in listed.out
    public = helpers.run_cli("public", "status")
    assert public.code == 0 and "up to date" in public.out


def test_migrate_py_runs_the_original_commands(empty_database_url: str, repo_root: Path) -> None:
    def legacy(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "migrations/migrate.py", *args],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert legacy("init-public").returncode == 0
    assert legacy("upgrade-public").returncode == 0
    assert "up to date" in legacy("status-public").stdout
    assert legacy("init-tenant", "--schema", "demo", "--revision", R1).returncode == 0
    assert legacy("upgrade-tenant", "--schema", "demo", "--revision", R2).returncode == 0
    assert f"current:  {R2}" in legacy("status", "--schema", "demo").stdout
    assert legacy("downgrade-tenant", "--schema", "demo", "--revision", R1).returncode == 0
    assert f"current:  {R1}" in legacy("status", "--schema", "demo").stdout
    wrong = legacy("frobnicate")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tenant", "create", "Bad-Name"], "invalid schema name"),
        (["tenant", "create", "pg_toast2"], "reserved"),
        (["tenant", "create", "public"], "reserved"),
        (["tenant", "upgrade", "ghost"], "no tenant with schema 'ghost'"),
        (["tenant", "upgrade", "demo", "--revision", "nope"], "unknown revision 'nope'"),
        (["tenant", "create", "demo"], "already exists"),
        (["tenant", "downgrade", "demo"], "--revision"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_cli_errors_are_one_line_with_exit_2(
    database_url: str, args: list[str], message: str
) -> None:
    if args[-1] != "frobnicate":
        assert helpers.run_cli("tenant", "create", "demo").code == 0
    result = helpers.run_cli(*args)
    assert result.code == 2
    assert message in result.err
    assert result.err.count("\n") == 1 and "Traceback" not in result.err


def test_unreachable_database_is_a_one_line_error_without_password() -> None:
    result = helpers.run_cli(
        "tenants",
        "list",
        env={"TENANTFLEET_DATABASE_URL": "postgresql://app:s3cret@127.0.0.1:1/nowhere"},
        timeout=30,
    )
    assert result.code == 2
    assert result.err.startswith("error: cannot connect to the database at 127.0.0.1:1/nowhere: ")
    assert "s3cret" not in result.err and result.err.count("\n") == 1


def test_malformed_settings_are_one_line_errors() -> None:
    result = helpers.run_cli("tenants", "list", env={"TENANTFLEET_LOCK_TIMEOUT": "soon"})
    assert result.code == 2 and "TENANTFLEET_LOCK_TIMEOUT must be a number" in result.err
    result = helpers.run_cli(
        "tenants",
        "list",
        env={"TENANTFLEET_TASK_TIME_LIMIT": "100", "TENANTFLEET_VISIBILITY_TIMEOUT": "50"},
    )
    assert result.code == 2 and "visibility_timeout must exceed task_time_limit" in result.err


def test_the_plan_prepares_sending_while_it_reads_unless_the_registry_says_nothing_is_behind(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the tenants' revisions are read, the producer imports what sending needs; not when
    the registry records every active tenant at the target (a no-op deploy), nor for a dry run.
    The plan reads the schemas either way: the registry is only a hint."""
    manager = MigrationManager()
    manager.init_tenant("acme", revision=R1)
    manager.init_tenant("bolt", revision=R3)
    prepared: list[object] = []
    chosen = planning.plan(manager, planning.MigrateOptions(revision=R3), warm_up=prepared.append)
    assert [s for s, _ in chosen.behind] == ["acme"] and prepared == [manager.settings]
    planning.plan(
        manager, planning.MigrateOptions(revision=R3), dry_run=True, warm_up=prepared.append
    )
    assert len(prepared) == 1
    with engine.begin() as connection:
        assert registry.any_active_not_at(connection, R3)
        # the registry says acme is at R3 (it is not): no preparing, the schema still decides
        registry.record_revision(connection, "acme", R3)
        assert not registry.any_active_not_at(connection, R3)
    chosen = planning.plan(manager, planning.MigrateOptions(revision=R3), warm_up=prepared.append)
    assert [s for s, _ in chosen.behind] == ["acme"] and len(prepared) == 1
    with engine.begin() as connection:  # an inactive tenant's record does not count
        registry.record_revision(connection, "acme", R1)
        registry.set_active(connection, "acme", False, "left")
        assert not registry.any_active_not_at(connection, R3)


def test_a_revision_the_scripts_do_not_know_is_refused_by_the_plan_that_reads_under_it(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan resolves the target while the servers read the tenants' revisions: a bad one is
    refused whether there is much to read (several connections), or nothing at all."""
    from tenantfleet import databases

    manager = MigrationManager()
    for schema in ("acme", "bolt", "coda"):
        manager.init_tenant(schema, revision=R1)
    monkeypatch.setattr(databases, "VERSIONS_PER_CONNECTION", 1)
    with pytest.raises(UnknownRevision, match="unknown revision 'nope'"):
        planning.plan(manager, planning.MigrateOptions(revision="nope"))
    nobody = planning.MigrateOptions(revision="nope", exclude=["acme", "bolt", "coda"])
    with pytest.raises(UnknownRevision, match="unknown revision 'nope'"):
        planning.plan(manager, nobody)
    assert planning.plan(manager, planning.MigrateOptions(revision=R3)).behind == [
        ("acme", R1),
        ("bolt", R1),
        ("coda", R1),
    ]


def test_a_failing_meanwhile_cancels_the_reads_under_way(engine: Engine) -> None:
    """A bad revision found while the plan reads is refused at once: the reads under way are
    cancelled on the server, not waited for (a read here would take ten minutes)."""
    from psycopg2 import errors

    from tenantfleet import databases

    cancelled: list[str] = []

    def read(connection: sa.Connection, schemas: list[str]) -> dict[str, None]:
        try:
            connection.execute(sa.text("SELECT pg_sleep(600), 'tf_long_read'"))
        except sa.exc.DBAPIError as exc:
            cancelled.extend(schemas if isinstance(exc.orig, errors.QueryCanceled) else [])
            raise
        return {}

    def running() -> bool:
        with engine.connect() as connection:
            return bool(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE state = 'active' AND query LIKE '%''tf_long_read''%'"
                        " AND pid <> pg_backend_pid()"
                    )
                ).scalar()
            )

    def meanwhile() -> None:
        helpers.wait_for(running, "the read running on the server")
        raise UnknownRevision("unknown revision 'nope'")

    placed = [databases.Placed("acme")]
    with pytest.raises(UnknownRevision):
        databases.in_each(lambda _: engine, placed, read, meanwhile=meanwhile)
    assert cancelled == ["acme"] and not running()


def test_preparing_to_send_imports_modules_only() -> None:
    """The warm-up imports the transport and Celery's sending modules, never the app (which may
    start the embedded Redis)."""
    script = (
        "import sys; from tenantfleet import config, dispatch;"
        " dispatch.prepare_sending(config.load_settings({}));"
        " print(sorted(m for m in ('kombu.transport.redis', 'celery.canvas',"
        " 'celery.backends.redis', 'tenantfleet.workers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == str(
        ["celery.backends.redis", "celery.canvas", "kombu.transport.redis"]
    )


def test_the_plan_sends_the_largest_tenants_first_unless_told_not_to(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sizes come from the catalog (pages where ANALYZE set them); without them, plan order."""
    manager = MigrationManager()
    for name in ("alpha", "beta", "gamma"):
        manager.init_tenant(name, revision=R1)
    with engine.begin() as connection:
        for name, rows in (("gamma", 20000), ("beta", 2000)):
            connection.execute(
                sa.text(
                    f'INSERT INTO "{name}".users (email, full_name) SELECT'
                    " 'u' || g || '@example.com', 'user ' || g FROM generate_series(1, :rows) AS g"
                ),
                {"rows": rows},
            )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for name in ("alpha", "beta", "gamma"):
            connection.execute(sa.text(f'ANALYZE "{name}".users'))
    chosen = planning.plan(manager, planning.MigrateOptions(revision=R3))
    assert [s for s, _ in chosen.behind] == ["alpha", "beta", "gamma"]  # plan order: by name
    assert chosen.sizes["gamma"] > chosen.sizes["beta"] > chosen.sizes["alpha"]
    assert chosen.sending_order() == ["gamma", "beta", "alpha"]
    with engine.begin() as connection:  # the app knows better: a hint wins over the catalog
        connection.execute(
            sa.text("UPDATE public.tenant_registry SET size_hint = 10000000000"
                    " WHERE schema_name = 'alpha'")
        )  # fmt: skip
    hinted = planning.plan(manager, planning.MigrateOptions(revision=R3))
    assert hinted.sizes["alpha"] == 10_000_000_000
    assert hinted.sending_order() == ["alpha", "gamma", "beta"]
    monkeypatch.setenv("TENANTFLEET_SCHEDULE_BY_SIZE", "false")
    unordered = planning.plan(MigrationManager(), planning.MigrateOptions(revision=R3))
    assert unordered.sizes == {}
    assert unordered.sending_order() == ["alpha", "beta", "gamma"]
