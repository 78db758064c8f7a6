"""Real servers for the tests: PostgreSQL and Redis, never stand-ins.

PostgreSQL: the server at ``TENANTFLEET_TEST_DATABASE_URL`` when set (the tests create and drop
their own databases there and touch no other), else the embedded one from the wheel, private to
this session. Redis: a private server on a socket, started and stopped by the session. A template
database with the public schema at head is built once and cloned for each test that needs one.
"""

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection, Engine

from tenantfleet import db, embedded
from tests import helpers
from tests.stack import Stack

FAST_RETRIES = {
    "TENANTFLEET_LOCK_TIMEOUT": "1",
    "TENANTFLEET_RETRY_BACKOFF": "0.2",
    "TENANTFLEET_RETRY_BACKOFF_MAX": "1",
    "TENANTFLEET_MAX_RETRIES": "3",
    "TENANTFLEET_POLL_INTERVAL": "0.1",
}


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("TENANTFLEET_TEST_DATABASE_URL")
    if given:
        yield given
        return
    state = tmp_path_factory.mktemp("pg")
    yield embedded.postgres_url(state)
    embedded.stop(state)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("redis")
    yield embedded.redis_url(state)
    embedded.stop(state)


NO_SERVER = "redis://127.0.0.1:1/0"
"""The broker a unit test sees: nothing listens there, so a test that reaches for one fails."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/unit/ is of the unit tier (``pytest -m unit``): pure logic, no
    server started."""
    unit = Path(__file__).resolve().parent / "unit"
    for item in items:
        if unit in item.path.parents:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session", autouse=True)
def session_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """Point everything at the test servers; nothing may touch the developer's own stack. The
    private Redis starts only when a test outside the unit tier was collected."""
    if "tenantfleet.workers.app" in sys.modules:  # made before the test broker was set
        pytest.fail(
            "a test module imports tenantfleet's Celery app at collection: import it in the test"
        )
    servers = any(item.get_closest_marker("unit") is None for item in request.session.items)
    broker = request.getfixturevalue("redis_url") if servers else NO_SERVER
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENANTFLEET_BROKER_URL", broker)
        patch.setenv("TENANTFLEET_RESULT_BACKEND", broker)
        patch.setenv("TENANTFLEET_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        patch.delenv("TENANTFLEET_DATABASE_URL", raising=False)
        for name, value in FAST_RETRIES.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> Iterator[str]:
    from tenantfleet.manager import MigrationManager

    url = helpers.create_database(pg_admin_url, prefix="tf_template")
    engine = db.make_engine(url)
    MigrationManager(engine=engine).upgrade_public()
    engine.dispose()
    yield url
    helpers.drop_database(pg_admin_url, url)


@pytest.fixture
def database_url(
    pg_admin_url: str, template_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A fresh database, public schema at head, set as TENANTFLEET_DATABASE_URL."""
    url = helpers.create_database(pg_admin_url, template=helpers.database_name(template_url))
    monkeypatch.setenv("TENANTFLEET_DATABASE_URL", url)
    yield url
    helpers.drop_database(pg_admin_url, url)


@pytest.fixture
def empty_database_url(pg_admin_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh database with nothing in it, set as TENANTFLEET_DATABASE_URL."""
    url = helpers.create_database(pg_admin_url)
    monkeypatch.setenv("TENANTFLEET_DATABASE_URL", url)
    yield url
    helpers.drop_database(pg_admin_url, url)


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = db.make_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def autocommit(database_url: str) -> Iterator[Connection]:
    """A connection as the workers hold it: autocommit at the driver level."""
    engine = db.make_engine(database_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stack(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator["Stack"]:
    """A running fleet (database, two worker processes, Flower) shared by one test module."""
    from tests.stack import running_fleet

    with running_fleet(pg_admin_url, template_url, tmp_path_factory.mktemp("fleet")) as fleet:
        yield fleet
