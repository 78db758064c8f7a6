"""Replay is right or it is not used: a tenant migrated by the fleet ends exactly where
``alembic upgrade`` on that schema would leave it (catalog and data), whatever the revision does.

Each case migrates tenants the way a worker does (``attempt.begin`` + ``attempt.apply``) and
compares them with tenants upgraded by plain Alembic (``command.upgrade``, env.py and all).
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection, Engine

from tenantfleet import alembic_runtime, attempt, config, db, fleet_setup, runs
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
        assert attempt.apply(connection, found, task, elapsed_ms=1)


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
    sql = alembic_runtime.replayable_sql(HEAD, "r_pct")
    assert sql and "50% off" in sql and "50%% off" not in sql  # replayed, rendered once
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
