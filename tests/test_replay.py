"""Replay is right or it is not used: a tenant migrated by the fleet ends exactly where
``alembic upgrade`` on that schema would leave it (catalog and data), whatever the revision does.

Each case migrates tenants the way a worker does (``attempt.begin`` + ``attempt.apply``) and
compares them with tenants upgraded by plain Alembic (``command.upgrade``, env.py and all).
"""

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection, Engine

from tenantfleet import alembic_runtime, attempt, config, db, fleet_setup, planning, runs
from tenantfleet.errors import UnsupportedRevision
from tenantfleet.manager import MigrationManager
from tests import helpers

R1 = fleet_setup.R1
HEAD = helpers.SEED_HEAD

PERCENT = """
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("UPDATE users SET full_name = 'discount 50% off'")
    op.add_column("users", sa.Column("promo", sa.String(32), server_default="10% off"))
    op.create_table_comment("orders", "100% of the orders")


def downgrade() -> None:
    op.drop_table_comment("orders")
    op.drop_column("users", "promo")
"""

BY_SCHEMA_NAME = """
def upgrade() -> None:
    if context.config.attributes["schema"].endswith("7"):
        op.add_column("users", sa.Column("seven", sa.Integer()))


def downgrade() -> None:
    pass
"""

READS_THE_DATABASE = """
tenantfleet_replay = True  # wrongly: it reads the database


def upgrade() -> None:
    res = op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar()
    if res is not None:
        op.execute("UPDATE users SET full_name = 'counted'")


def downgrade() -> None:
    pass
"""

UNBOUND_PARAMETER = """
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("UPDATE users SET full_name = :name")


def downgrade() -> None:
    pass
"""


CONCURRENT_INDEX = """
def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index("ix_users_email_c", "users", ["email"], postgresql_concurrently=True)


def downgrade() -> None:
    op.drop_index("ix_users_email_c", "users")
"""


@pytest.fixture
def revisions(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Install a tenant environment: the seed's revisions, then the given ones."""

    def install(*added: tuple[str, str]) -> None:
        ini = helpers.tenant_env(tmp_path, list(added))
        monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
        alembic_runtime.forget_scripts()

    yield install
    monkeypatch.delenv("TENANTFLEET_TENANT_ALEMBIC", raising=False)
    alembic_runtime.forget_scripts()


def provision_at_seed_head(engine: Engine, schemas: list[str]) -> None:
    fleet_setup.provision(engine, schemas, R1)
    for schema in schemas:
        MigrationManager(engine=engine).upgrade_tenant(schema, HEAD)


def by_worker(engine: Engine, connection: Connection, schemas: list[str], target: str) -> None:
    with db.begin(engine) as setup:
        run_id = runs.create_run(setup, target, [(s, HEAD) for s in schemas])
        uid = runs.get_run(setup, run_id).uid
    settings = config.load_settings()
    for schema in schemas:
        task = runs.TenantTask(run_id, uid, schema, target)
        found = attempt.begin(connection, task, "w1", settings)
        assert attempt.apply(connection, found, task, since=time.monotonic())


def by_alembic(schemas: list[str], target: str) -> None:
    for schema in schemas:
        command.upgrade(alembic_runtime.tenant_config(schema), target)


def picture(engine: Engine, schema: str) -> tuple[object, ...]:
    """Catalog (without the schema's name) and data of one tenant."""
    catalog = {(kind, *rest) for kind, _, *rest in helpers.snapshot(engine, [schema])}
    with engine.connect() as connection:
        names = sorted(
            connection.execute(sa.text(f'SELECT full_name FROM "{schema}".users')).scalars()
        )
        comment = connection.execute(
            sa.text("SELECT obj_description(to_regclass(:t), 'pg_class')"),
            {"t": f"{schema}.orders"},
        ).scalar()
    return (catalog, names, comment)


def test_a_percent_sign_reaches_every_tenant_once(
    engine: Engine, autocommit: Connection, revisions: Callable[..., None]
) -> None:
    revisions(("r_pct", PERCENT))
    provision_at_seed_head(engine, ["fleet1", "fleet2", "plain1"])
    assert alembic_runtime.replayable_sql(HEAD, "r_pct") is None  # raw SQL text: online
    by_worker(engine, autocommit, ["fleet1", "fleet2"], "r_pct")
    by_alembic(["plain1"], "r_pct")
    assert picture(engine, "fleet1") == picture(engine, "plain1") == picture(engine, "fleet2")
    with engine.connect() as connection:
        stored = connection.execute(sa.text("SELECT DISTINCT full_name FROM fleet1.users"))
        assert stored.scalars().all() == ["discount 50% off"]
        assert connection.execute(sa.text("SELECT promo FROM fleet1.users LIMIT 1")).scalar() == (
            "10% off"
        )


def test_revisions_that_branch_or_read_run_online_and_match_alembic(
    engine: Engine, autocommit: Connection, revisions: Callable[..., None]
) -> None:
    revisions(("r_name", BY_SCHEMA_NAME), ("r_read", READS_THE_DATABASE))
    fleet = ["t17", "t27", "t30", "t41"]
    plain = ["p17", "p30"]
    provision_at_seed_head(engine, fleet + plain)
    assert alembic_runtime.replayable_sql(HEAD, "r_name") is None  # not opted in
    assert alembic_runtime.replayable_sql("r_name", "r_read") is None  # reads the database
    by_worker(engine, autocommit, fleet, "r_read")
    by_alembic(plain, "r_read")
    assert picture(engine, "t17") == picture(engine, "t27") == picture(engine, "p17")
    assert picture(engine, "t30") == picture(engine, "t41") == picture(engine, "p30")
    assert picture(engine, "t17") != picture(engine, "t30")  # "seven" only where it ends in 7
    with engine.connect() as connection:
        names = connection.execute(sa.text("SELECT DISTINCT full_name FROM t41.users"))
        assert names.scalars().all() == ["counted"]


def test_an_unbound_parameter_fails_as_alembic_would_not_as_null(
    engine: Engine, revisions: Callable[..., None]
) -> None:
    revisions(("r_colon", UNBOUND_PARAMETER))
    provision_at_seed_head(engine, ["colon"])
    assert alembic_runtime.replayable_sql(HEAD, "r_colon") is None
    with pytest.raises(Exception, match="name"):
        MigrationManager(engine=engine).upgrade_tenant("colon", "r_colon")
    assert helpers.revision_of(engine, "colon") == HEAD
    with engine.connect() as connection:
        nulls = "SELECT count(*) FROM colon.users WHERE full_name IS NULL"
        assert connection.execute(sa.text(nulls)).scalar() == 0


def test_downgrade_to_base_then_upgrade_works_on_every_path(engine: Engine) -> None:
    manager = MigrationManager(engine=engine)
    manager.init_tenant("fresh1")
    manager.downgrade_tenant("fresh1", "base")
    assert helpers.revision_of(engine, "fresh1") is None
    step = manager.upgrade_tenant("fresh1")
    assert (step.from_revision, step.to_revision) == (None, HEAD)
    assert helpers.revision_of(engine, "fresh1") == HEAD


def test_create_at_base_stays_at_base(engine: Engine) -> None:
    status = MigrationManager(engine=engine).init_tenant("atbase", revision="base")
    assert status.current is None
    assert helpers.revision_of(engine, "atbase") is None


def test_an_autocommit_block_fails_the_tenant_with_a_clear_message(
    engine: Engine, revisions: Callable[..., None]
) -> None:
    revisions(("r_conc", CONCURRENT_INDEX))
    provision_at_seed_head(engine, ["conc"])
    with pytest.raises(UnsupportedRevision, match="autocommit_block"):
        MigrationManager(engine=engine).upgrade_tenant("conc", "r_conc")
    assert helpers.revision_of(engine, "conc") == HEAD


X_SCHEMA = """
tenantfleet_replay = True


def upgrade() -> None:
    schema = context.get_x_argument(as_dictionary=True).get("schema")
    op.add_column("users", sa.Column("tenant_note", sa.String(64)))
    if schema is not None:
        op.add_column("users", sa.Column("x_seen", sa.Boolean(), server_default=sa.true()))


def downgrade() -> None:
    pass
"""

INTERVAL_ROW = """
tenantfleet_replay = True
import datetime


def upgrade() -> None:
    waits = op.create_table("waits", sa.Column("d", sa.Interval()))
    op.bulk_insert(waits, [{"d": datetime.timedelta(days=1, seconds=3661, microseconds=5)}])


def downgrade() -> None:
    op.drop_table("waits")
"""

COMMENTED = """
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("UPDATE users SET full_name = 'renamed' -- a trailing comment")
    op.execute("UPDATE orders SET status = 'checked'")


def downgrade() -> None:
    pass
"""

SLEEPS = """
def upgrade() -> None:
    op.execute("SELECT pg_sleep(0.3)")


def downgrade() -> None:
    pass
"""


def by_alembic_cli(ini: Path, engine: Engine, schemas: list[str], target: str) -> None:
    """``alembic -c INI -x schema=S upgrade TARGET`` (docs/how-to/one-tenant.md)."""
    url = engine.url.render_as_string(hide_password=False)
    for schema in schemas:
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "-c", str(ini), "-x", f"schema={schema}"]
            + ["upgrade", target],
            env={**os.environ, "TENANTFLEET_DATABASE_URL": url},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def test_a_revision_sees_the_same_x_arguments_on_a_worker_as_under_plain_alembic(
    engine: Engine, autocommit: Connection, tmp_path: Path, revisions: Callable[..., None]
) -> None:
    revisions(("r_x", X_SCHEMA))
    provision_at_seed_head(engine, ["xfleet", "xplain"])
    assert alembic_runtime.replayable_sql(HEAD, "r_x") is not None  # one column either way
    said = planning.replay_paths(planning.Plan("r_x", [("xfleet", HEAD)]))
    assert said == {"replayed": ["r_x"], "online": []}
    by_worker(engine, autocommit, ["xfleet"], "r_x")
    by_alembic_cli(tmp_path / "tenant_env" / "alembic.ini", engine, ["xplain"], "r_x")
    assert picture(engine, "xfleet") == picture(engine, "xplain")
    with engine.connect() as connection:
        seen = connection.execute(sa.text("SELECT bool_and(x_seen) FROM xfleet.users")).scalar()
    assert seen is True  # the branch plain Alembic takes, not the other one


def test_data_and_raw_sql_run_online_even_when_the_revision_opts_in(
    engine: Engine, autocommit: Connection, revisions: Callable[..., None]
) -> None:
    """Offline rendering is not faithful for data values (a timedelta of a day became an
    interval of 25 hours) nor for raw SQL text (a trailing comment swallowed the ``;``): those
    revisions run online, and store what plain Alembic stores."""
    revisions(("r_interval", INTERVAL_ROW), ("r_comment", COMMENTED))
    provision_at_seed_head(engine, ["dfleet", "dplain"])
    assert alembic_runtime.replayable_sql(HEAD, "r_interval") is None
    assert alembic_runtime.replayable_sql("r_interval", "r_comment") is None
    said = planning.replay_paths(planning.Plan("r_comment", [("dfleet", HEAD)]))
    assert said == {"replayed": [], "online": ["r_comment", "r_interval"]}  # dry run, run record
    by_worker(engine, autocommit, ["dfleet"], "r_comment")
    by_alembic(["dplain"], "r_comment")
    assert picture(engine, "dfleet") == picture(engine, "dplain")
    with engine.connect() as connection:
        for schema in ("dfleet", "dplain"):
            stored = connection.execute(sa.text(f"SELECT d::text FROM {schema}.waits")).scalar()
            assert stored == "1 day 01:01:01.000005"
            renamed = connection.execute(sa.text(f"SELECT DISTINCT full_name FROM {schema}.users"))
            assert renamed.scalars().all() == ["renamed"]


def test_the_recorded_duration_covers_the_migration_on_every_path(
    engine: Engine,
    autocommit: Connection,
    pg_admin_url: str,
    revisions: Callable[..., None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Online (a revision that sleeps 0.3 s), replayed (SQL that sleeps, sent with the mark),
    and a tenant of another database: the row's duration is the migration's, not the
    bookkeeping's few milliseconds."""
    revisions(("r_sleep", SLEEPS))
    provision_at_seed_head(engine, ["online", "replayed"])
    by_worker(engine, autocommit, ["online"], "r_sleep")
    with monkeypatch.context() as patch:
        patch.setattr(alembic_runtime, "upgrade_sql", lambda *_: "SELECT pg_sleep(0.3)")
        by_worker(engine, autocommit, ["replayed"], "r_sleep")
    other_url = helpers.create_database(pg_admin_url, prefix="tf_shard")
    other = db.make_engine(other_url)
    try:
        fleet_setup.provision(other, ["remote"], HEAD, control=engine, database="s1")
        with db.begin(engine) as setup:
            run_id = runs.create_run(
                setup, "r_sleep", [("remote", HEAD)], placement={"remote": "s1"}
            )
            uid = runs.get_run(setup, run_id).uid
        task = runs.TenantTask(run_id, uid, "remote", "r_sleep", "s1", HEAD)
        since = time.monotonic()
        with (
            db.make_engine(other_url, isolation_level="AUTOCOMMIT").connect() as tenant,
        ):
            pair = attempt.Pair(autocommit, tenant)
            found = attempt.remote_begin(pair, task, "w1", config.load_settings())
            assert attempt.remote_apply(pair, found, task, since)
        assert helpers.revision_of(other, "remote") == "r_sleep"
    finally:
        other.dispose()
        helpers.drop_database(pg_admin_url, other_url)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT schema_name, duration_ms FROM public.migration_run_tenants"
                " WHERE status = 'succeeded'"
            )
        ).all()
    durations: dict[str, int] = {schema: ms for schema, ms in rows}
    assert set(durations) == {"online", "replayed", "remote"}
    assert all(ms >= 300 for ms in durations.values()), durations
