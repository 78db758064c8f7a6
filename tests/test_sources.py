"""Tenant sources other than the registry, and a tenant environment written by ``init``."""

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import config, fleet_setup, scaffold, tenants
from tenantfleet.databases import Placed
from tenantfleet.errors import ConfigError, UnknownTenant, UsageError
from tenantfleet.manager import MigrationManager
from tests import helpers

R1 = fleet_setup.R1
R3 = helpers.SEED_HEAD


def settings(**values: str) -> config.Settings:
    return config.load_settings({f"TENANTFLEET_{k.upper()}": v for k, v in values.items()})


def test_discover_lists_every_schema_with_a_version_table(engine: Engine) -> None:
    fleet_setup.provision(engine, ["d1", "d2"], R1)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA plain_data"))  # no version table: not a tenant
        connection.execute(sa.text('CREATE SCHEMA "Odd"'))
        connection.execute(sa.text('CREATE TABLE "Odd".alembic_version (version_num text)'))
    with engine.connect() as connection:
        found = tenants.select(connection, settings(tenants="discover"))
        assert found == [Placed("d1"), Placed("d2")]  # "Odd" is not a name tenantfleet accepts
        only = tenants.select(connection, settings(tenants="discover"), exclude=["d1"])
        assert only == [Placed("d2")]


def test_the_apps_query_is_read_only_and_its_rows_are_validated(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE public.accounts (schema_name text, active bool)"))
        connection.execute(
            sa.text("INSERT INTO public.accounts VALUES ('q1', true), ('q2', true), ('q3', false)")
        )
    query = "SELECT schema_name FROM public.accounts WHERE active"
    with engine.connect() as connection:
        assert tenants.select(connection, settings(tenants="query", tenants_query=query)) == [
            Placed("q1"),
            Placed("q2"),
        ]
        with pytest.raises(UnknownTenant, match="not listed by the tenant source"):
            tenants.select(
                connection, settings(tenants="query", tenants_query=query), include=["q3"]
            )
        writes = settings(  # a SELECT calling a function that writes: the transaction says no
            tenants="query",
            tenants_query="SELECT schema_name FROM public.accounts, LATERAL"
            " (SELECT nextval('public.accounts_seq')) AS n",
        )
        connection.execute(sa.text("CREATE SEQUENCE IF NOT EXISTS public.accounts_seq"))
        connection.commit()
        with pytest.raises(ConfigError, match="read-only transaction"):
            tenants.select(connection, writes)
        odd = settings(tenants="query", tenants_query="SELECT 'Robert''); DROP TABLE x;--'")
        accepted, refused = tenants.split_refused(tenants.select(connection, odd))
        assert accepted == [] and "invalid schema name" in refused[0][1]  # skipped, not run
        for several in (
            "SELECT 'q1'; COMMIT; INSERT INTO public.accounts VALUES ('x', true) RETURNING 'x'",
            "WITH d AS (DELETE FROM public.accounts RETURNING schema_name) SELECT * FROM d",
            "INSERT INTO public.accounts VALUES ('x', true) RETURNING schema_name",
        ):
            with pytest.raises(ConfigError, match="one SELECT"):
                tenants.select(connection, settings(tenants="query", tenants_query=several))
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM public.accounts")).scalar() == 3


def test_the_apps_query_may_give_each_tenant_a_size_hint(engine: Engine) -> None:
    """A ``size_hint`` column: bytes (NULL: none, a fraction rounded); anything else, or a
    negative number, is refused with the rows named."""
    query = (
        "SELECT * FROM (VALUES ('h1', 5000::bigint), ('h2', NULL), ('h3', 12.6))"
        " AS t (schema_name, size_hint)"
    )
    with engine.connect() as connection:
        found = tenants.select(connection, settings(tenants="query", tenants_query=query))
        assert [(p.schema, p.size_hint) for p in found] == [
            ("h1", 5000),
            ("h2", None),
            ("h3", 13),
        ]
        for wrong in ("'big'", "-1", "'NaN'::float"):
            bad = settings(
                tenants="query", tenants_query=f"SELECT 'h1' AS schema_name, {wrong} AS size_hint"
            )
            with pytest.raises(ConfigError, match="invalid database keys or size hints"):
                tenants.select(connection, bad)


def test_plain_alembic_on_an_environment_written_by_init(
    tmp_path: Path, database_url: str, engine: Engine
) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "app"\n')
    scaffold.init(tmp_path, tmp_path / "tenant_env")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA acme"))

    def alembic(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "alembic", "-c", "tenant_env/alembic.ini", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    made = alembic("-x", "schema=acme", "revision", "-m", "first")
    assert made.returncode == 0, made.stderr
    upgraded = alembic("-x", "schema=acme", "upgrade", "head")
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Running upgrade" in upgraded.stderr  # env.py sets up the ini's logging
    assert helpers.revision_of(engine, "acme") is not None
    refused = alembic("upgrade", "head")
    assert refused.returncode != 0 and "-x schema=NAME" in refused.stdout + refused.stderr


def test_single_tenant_commands_work_with_the_query_source_or_say_why_not(
    engine: Engine,
) -> None:
    """``tenant status`` and ``tenant upgrade`` find the tenant through the query; activation
    and ``tenants list`` are the registry's, and say so in one line."""
    fleet_setup.provision(engine, ["qs1"], R1)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM public.tenant_registry"))  # the query decides
    query = "SELECT 'qs1' AS schema_name"
    manager = MigrationManager(settings(tenants="query", tenants_query=query), engine=engine)
    assert manager.status_tenant("qs1").current == R1
    manager.upgrade_tenant("qs1", R3)
    assert manager.status_tenant("qs1").current == R3
    with pytest.raises(UnknownTenant, match="not listed by the tenant source"):
        manager.status_tenant("qs2")
    with pytest.raises(UsageError, match="tenants = query: your query decide"):
        manager.set_active("qs1", False, "gone")
    with pytest.raises(UsageError, match="`tenants list` works on public.tenant_registry"):
        manager.list_tenants()
