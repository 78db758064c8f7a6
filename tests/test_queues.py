"""Each database's queues are named after what the server says it is (``queues.py``)."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from tenantfleet import db, embedded
from tenantfleet.queues import of_database


def test_the_queues_name_the_cluster_unless_the_role_may_not_ask_it(engine: Engine) -> None:
    """Where an administrator revoked ``pg_control_system()``, the queues are named after the
    server's address, decided by asking the privilege. All in one transaction, rolled back:
    the role and the revoke too."""
    role = f"tf_queues_{uuid.uuid4().hex[:8]}"
    with engine.connect() as connection:
        cluster = of_database(connection)
        connection.execute(sa.text(f'CREATE ROLE "{role}"'))
        connection.execute(sa.text(f'SET ROLE "{role}"'))
        assert of_database(connection) == cluster  # PUBLIC may call it, as initdb leaves it
        connection.execute(sa.text("RESET ROLE"))
        connection.execute(
            sa.text("REVOKE EXECUTE ON FUNCTION pg_catalog.pg_control_system() FROM PUBLIC")
        )
        assert of_database(connection) == cluster  # a superuser still may
        connection.execute(sa.text(f'SET ROLE "{role}"'))
        by_address = of_database(connection)
        assert by_address != cluster and of_database(connection) == by_address
        connection.rollback()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[Path]:
    """A PostgreSQL of this test's own, in ``tmp_path/server/pg``."""
    state = tmp_path / "server"
    state.mkdir()
    try:
        yield state
    finally:
        state.chmod(0o755)
        embedded.stop(state)


def test_a_passing_failure_to_read_the_cluster_is_raised_not_a_queue_nobody_consumes(
    private_server: Path,
) -> None:
    """What a test run met: the data directory's parent unreadable for a moment (pytest makes
    its base directory private again at each start), so the server could not open its control
    file by its full path. Naming the queues after the address then sent a run's tasks where no
    worker listened; the error is raised instead, and the next call names them as before."""
    engine = db.make_engine(embedded.postgres_url(private_server))
    try:
        with engine.connect() as connection:
            cluster = of_database(connection)
            connection.rollback()
            private_server.chmod(0o000)  # the server keeps working in its data directory
            try:
                with pytest.raises(DBAPIError, match="pg_control"):
                    of_database(connection)
            finally:
                private_server.chmod(0o755)
            connection.rollback()
            assert of_database(connection) == cluster
    finally:
        engine.dispose()
