"""A worker's database sessions are replaced after a number of uses (``db.retire_after``): a
PostgreSQL backend keeps every relation it touched cached for its whole life."""

import sqlalchemy as sa

from tenantfleet import db


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


def test_the_workers_engines_retire_their_sessions() -> None:
    from tenantfleet.workers import resources  # the Celery app: imported in the test

    engine = resources.attempt_engine()
    assert len(engine.pool.dispatch.checkout) == 1  # db.retire_after's listener
    assert resources.SESSION_USES == 1000
