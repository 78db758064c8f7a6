"""The two Alembic environments: exact registry columns, models = migrations, Alembic's own CLI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, db, models, sql, states, versions
from tenantfleet.manager import MigrationManager
from tenantfleet.migrations.tenant.models import TenantBase

REGISTRY_COLUMNS = [
    "id",
    "tenant_name",
    "schema_name",
    "email",
    "phone",
    "tenant_address",
    "tenant_city",
    "tenant_state",
    "tenant_country",
    "tenant_country_code",
    "zip",
    "tenant_timezone",
    "api_key",
    "is_active",
    "created_at",
    "updated_at",
]
# The names before the rename, spelled in pieces so that this file does not contain them.
OLD_NAMES = [
    "contact" + "_email",
    "contact" + "_phone",
    "address",
    "city",
    "state",
    "country",
    "country" + "_code",
    "postal" + "_code",
    "timezone",
]


def columns(engine: Engine, table: str) -> list[str]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema ="
                    " 'public' AND table_name = :t ORDER BY ordinal_position"
                ),
                {"t": table},
            ).scalars()
        )


def test_first_public_revision_creates_the_registry_with_exactly_the_renamed_columns(
    empty_database_url: str,
) -> None:
    engine = db.make_engine(empty_database_url)
    MigrationManager(engine=engine).upgrade_public("20250102_000000")
    assert columns(engine, "tenant_registry") == REGISTRY_COLUMNS
    with engine.connect() as connection:
        nullable: dict[str, str] = dict(
            connection.execute(
                sa.text(
                    "SELECT column_name, is_nullable FROM information_schema.columns"
                    " WHERE table_name = 'tenant_registry'"
                )
            ).all()
        )
        uniques = set(
            connection.execute(
                sa.text(
                    "SELECT a.attname FROM pg_constraint c JOIN pg_attribute a"
                    " ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
                    " WHERE c.conrelid = 'public.tenant_registry'::regclass AND c.contype = 'u'"
                )
            ).scalars()
        )
    assert nullable["tenant_name"] == "NO" and nullable["schema_name"] == "NO"
    assert uniques == {"schema_name", "api_key"}
    engine.dispose()


def test_the_old_column_names_appear_nowhere(engine: Engine, repo_root: Path) -> None:
    quoted = re.compile(r"""["'](""" + "|".join(OLD_NAMES) + r""")["']""")
    for path in sorted((repo_root / "migrations").rglob("*.py")):
        assert not quoted.search(path.read_text()), path
    with engine.connect() as connection:
        names = set(
            connection.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public'"
                )
            ).scalars()
        )
    assert names.isdisjoint(OLD_NAMES)
    assert all(not set(t.columns.keys()) & set(OLD_NAMES) for t in models.metadata.sorted_tables)
    flags = subprocess.run(
        [sys.executable, "-m", "tenantfleet", "tenant", "create", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--tenant-address" in flags and "--zip" in flags
    assert not re.search(r"--(" + "|".join(n.replace("_", "-") for n in OLD_NAMES) + r")\b", flags)


def test_public_models_match_the_migrations(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts=alembic_runtime.public_context_options()
        )
        assert compare_metadata(context, models.metadata) == []


def test_tenant_models_match_the_migrations(database_url: str) -> None:
    MigrationManager().init_tenant("acme", "Acme")
    tenant_engine = db.make_engine(database_url, connect_args={"options": "-c search_path=acme"})
    with tenant_engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts=alembic_runtime.tenant_context_options()
        )
        assert compare_metadata(context, TenantBase.metadata) == []
    tenant_engine.dispose()


def alembic(repo_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plain_alembic_upgrades_public_and_a_tenant_as_alembic_users_expect(
    empty_database_url: str, repo_root: Path
) -> None:
    assert alembic(repo_root, "upgrade", "head").returncode == 0
    engine = db.make_engine(empty_database_url)
    with engine.begin() as connection:
        connection.execute(sa.schema.CreateSchema("demo"))
    tenant = ["-c", "migrations/tenant/alembic.ini", "-x", "schema=demo"]
    upgraded = alembic(repo_root, *tenant, "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    current = alembic(repo_root, *tenant, "current")
    assert str(alembic_runtime.tenant_script().get_current_head()) in current.stdout
    with engine.connect() as connection:
        tables = set(
            connection.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'demo'")
            ).scalars()
        )
        public_tables = set(
            connection.execute(
                sa.text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            ).scalars()
        )
    assert tables == {"alembic_version", "users", "orders", "audit_log"}
    assert public_tables == {
        "tenantfleet_version",
        "tenant_registry",
        "migration_runs",
        "migration_run_tenants",
        "migration_attempts",
        "migration_backfills",
    }
    # autogenerate finds nothing to do on an up-to-date tenant and on public
    assert alembic(repo_root, *tenant, "check").returncode == 0
    assert alembic(repo_root, "check").returncode == 0
    engine.dispose()


def test_tenant_environment_refuses_to_run_without_a_valid_schema(
    empty_database_url: str, repo_root: Path
) -> None:
    missing = alembic(repo_root, "-c", "migrations/tenant/alembic.ini", "upgrade", "head")
    assert missing.returncode != 0
    assert "FAILED: the tenant environment needs a schema" in missing.stdout
    assert "Traceback" not in missing.stderr
    hostile = alembic(
        repo_root, "-c", "migrations/tenant/alembic.ini", "-x", "schema=x;drop", "upgrade", "head"
    )
    assert hostile.returncode != 0
    assert "FAILED: invalid schema name 'x;drop'" in hostile.stdout
    assert "Traceback" not in hostile.stderr


def test_offline_sql_is_confined_to_the_schema(repo_root: Path) -> None:
    sql = alembic(
        repo_root,
        "-c",
        "migrations/tenant/alembic.ini",
        "-x",
        "schema=demo",
        "upgrade",
        "head",
        "--sql",
    )
    assert sql.returncode == 0, sql.stderr
    assert "set_config('search_path', quote_ident('demo'), true)" in sql.stdout
    assert "demo." not in sql.stdout.replace("quote_ident('demo')", "")


def test_revision_ids_are_the_file_name_prefixes() -> None:
    for script in (alembic_runtime.tenant_script(), alembic_runtime.public_script()):
        for revision in script.walk_revisions():
            assert revision.path is not None
            assert Path(revision.path).name.startswith(revision.revision + "_")
    tenant_chain = [r.revision for r in alembic_runtime.tenant_script().walk_revisions()]
    assert tenant_chain[-2:] == ["20250301_000000", "20250102_000001"]
    assert len(tenant_chain) >= 3


def test_an_apps_own_public_history_is_left_alone(empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url)
    with engine.begin() as connection:  # the app's own public Alembic history
        connection.execute(sa.text("CREATE TABLE public.alembic_version (version_num text)"))
        connection.execute(sa.text("INSERT INTO public.alembic_version VALUES ('app_0001')"))
        connection.execute(sa.text("CREATE TABLE public.accounts (id int)"))
    status = MigrationManager().upgrade_public()
    assert status.up_to_date
    with engine.connect() as connection:
        app_rows = connection.execute(sa.text("SELECT version_num FROM public.alembic_version"))
        assert app_rows.scalars().all() == ["app_0001"]
    engine.dispose()


def test_a_database_of_an_older_tenantfleet_moves_its_revision_to_its_own_table(
    empty_database_url: str,
) -> None:
    engine = db.make_engine(empty_database_url)
    MigrationManager(engine=engine).upgrade_public("20251126_000000")
    with engine.begin() as connection:  # how versions before 0.2 kept it
        connection.execute(
            sa.text("ALTER TABLE public.tenantfleet_version RENAME TO alembic_version")
        )
        connection.execute(
            sa.text(
                "ALTER TABLE public.alembic_version"
                " RENAME CONSTRAINT tenantfleet_version_pkc TO alembic_version_pkc"
            )
        )
    assert MigrationManager(engine=engine).status_public().current == "20251126_000000"
    assert MigrationManager(engine=engine).upgrade_public().up_to_date
    with engine.connect() as connection:
        legacy = connection.execute(sa.text("SELECT to_regclass('public.alembic_version')"))
        assert legacy.scalar() is None
    engine.dispose()


def test_the_public_history_goes_down_to_base_and_up_again(empty_database_url: str) -> None:
    engine = db.make_engine(empty_database_url)
    MigrationManager(engine=engine).upgrade_public()
    with db.begin(engine) as connection:
        command.downgrade(alembic_runtime.public_config(connection), "base")
    with engine.connect() as connection:
        left = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_proc WHERE proname LIKE 'tenantfleet%'"
                " UNION ALL SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'tenantfleet_version'"
            )
        )
        assert left.scalars().all() == [0, 0]
    assert MigrationManager(engine=engine).upgrade_public().up_to_date
    engine.dispose()


def test_the_functions_file_spells_the_pending_states_as_states_does() -> None:
    """functions.sql spells the pending states in SQL: a state added later needs a revision."""
    for name, definition in sql.functions().items():
        for spelled in re.findall(r"status IN \(([^)]*)\)", definition):
            assert tuple(re.findall(r"'(\w+)'", spelled)) == states.TENANT_PENDING, name


def test_a_database_at_head_holds_exactly_the_functions_of_the_functions_file(
    engine: Engine,
) -> None:
    with db.connect(engine) as connection:
        found: dict[str, str] = dict(
            connection.execute(
                sa.text(
                    "SELECT proname, pg_get_functiondef(p.oid) FROM pg_proc AS p"
                    " JOIN pg_namespace AS n ON n.oid = p.pronamespace"
                    " WHERE n.nspname = 'public' AND proname LIKE 'tenantfleet%'"
                )
            ).all()
        )
    assert {name: text.strip() for name, text in found.items()} == sql.functions()


def test_the_versions_function_reads_what_the_union_reads(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Public revision 20251206_000000's ``tenantfleet_versions`` and the UNION ALL sent to
    databases without it give the same answer: several rows joined, an empty or missing
    version table None, a schema that does not exist left out."""
    with db.begin(engine) as connection:
        connection.execute(
            sa.text(
                "CREATE SCHEMA two_rows; CREATE TABLE two_rows.alembic_version"
                " (version_num varchar(32)); INSERT INTO two_rows.alembic_version"
                " VALUES ('a1'), ('b''2');"
                " CREATE SCHEMA empty_table; CREATE TABLE empty_table.alembic_version"
                " (version_num varchar(32)); CREATE SCHEMA no_table;"
            )
        )
    names = ["two_rows", "empty_table", "no_table", "missing", *(f"n{i}" for i in range(300))]
    with db.connect(engine) as connection:
        assert connection.execute(versions.HAS_VERSIONS_FUNCTION_SQL).scalar_one()
        by_function = versions.read_versions(connection, names)
    monkeypatch.setattr(versions, "HAS_VERSIONS_FUNCTION_SQL", sa.text("SELECT false"))
    with db.connect(engine) as connection:
        by_union = versions.read_versions(connection, names)
    assert by_function == by_union == {"two_rows": "a1,b'2", "empty_table": None, "no_table": None}
