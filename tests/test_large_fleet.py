"""What keeps a worker fast and small among 100,000 schemas (bench/scale.py): its database
sessions are replaced after a number of uses (a PostgreSQL backend keeps every relation it
touched cached for its whole life), and Alembic online looks for the version table in the
tenant's schema (without one, its check asks ``pg_table_is_visible()`` of every table of that
name in the database: 0.2-0.35 s a tenant at 100,000)."""

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, db, fleet_setup, versions


def test_a_session_is_replaced_after_its_uses_and_the_next_checkout_just_works(
    database_url: str,
) -> None:
    engine = db.make_engine(database_url, pool_size=1, max_overflow=0)
    db.retire_after(engine, 3)
    try:
        pids = []
        for _ in range(7):
            with engine.connect() as connection:
                pids.append(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        assert pids[0] == pids[1] == pids[2]
        assert pids[3] == pids[4] == pids[5] != pids[0]
        assert pids[6] not in (pids[0], pids[3])
    finally:
        engine.dispose()


def test_the_workers_engines_retire_their_sessions(database_url: str) -> None:
    """(``database_url``: the settings name a test database, never the embedded one.)"""
    from tenantfleet.workers import resources  # the Celery app: imported in the test

    engine = resources.attempt_engine()
    assert len(engine.pool.dispatch.checkout) == 1  # db.retire_after's listener
    assert resources.SESSION_USES == 1000


def test_alembic_online_never_asks_every_schema_for_its_version_table(engine: Engine) -> None:
    fleet_setup.provision(engine, ["lf00001"], fleet_setup.R2)
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with db.begin(engine) as connection:  # an online run: a downgrade, then back up
            alembic_runtime.confine_to_schema(connection, "lf00001")
            alembic_runtime.migrate_online(connection, "lf00001", fleet_setup.R1, downgrade=True)
            alembic_runtime.migrate_online(connection, "lf00001", fleet_setup.R2)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert any("alembic_version" in statement for statement in seen)
    assert not [s for s in seen if "pg_table_is_visible" in s]  # a lookup confined to no schema
    with engine.connect() as connection:
        assert versions.read_versions(connection, ["lf00001"]) == {"lf00001": fleet_setup.R2}


def test_the_producer_does_not_keep_the_sessions_that_read_every_schema(engine: Engine) -> None:
    from tenantfleet.manager import MigrationManager

    manager = MigrationManager(engine=engine)
    with engine.connect() as connection:  # as the plan's reads leave a session in the pool
        connection.execute(sa.text("SELECT 1"))
    assert engine.pool.checkedin() == 1  # type: ignore[attr-defined]
    manager.close_sessions()
    assert engine.pool.checkedin() == 0  # type: ignore[attr-defined]
    with engine.connect() as connection:  # and the next use opens a new one
        assert connection.execute(sa.text("SELECT 1")).scalar_one() == 1
