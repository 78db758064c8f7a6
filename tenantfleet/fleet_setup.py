"""Provisioning tenants of workload W1 (``shared/WORKLOAD.md``) for the demo, tests and bench.

Each tenant: a schema, a registry row, its tables at a given revision, 50 users and 200 orders.
One transaction per tenant, on the fast Alembic path.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tenantfleet import db, registry
from tenantfleet.config import Settings

R1 = "20250102_000001"
R2 = "20250301_000000"

SEED_USERS = sa.text(
    "INSERT INTO users (email, full_name)"
    " SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, 50) AS g"
)
SEED_ORDERS = sa.text(
    "INSERT INTO orders (user_id, amount, status)"
    " SELECT (SELECT min(id) FROM users) + (g % 50), (g * 7 % 1000) + 0.99,"
    " (ARRAY['new', 'paid', 'shipped', 'refunded'])[1 + g % 4]"
    " FROM generate_series(1, 200) AS g"
)


@contextmanager
def _registrar(connection: Connection, control: Engine | None) -> Iterator[Connection]:
    """Where the registry rows go: ``connection`` itself, or a transaction of ``control``."""
    if control is None:
        yield connection
        return
    with db.begin(control) as registrar:
        yield registrar


def fleet_names(count: int, prefix: str = "t") -> list[str]:
    """``t00001`` ... as W1 names them."""
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


def provision(
    engine: Engine,
    schemas: Iterable[str],
    revision: str,
    settings: Settings | None = None,
    on_done: Callable[[int], None] | None = None,
    *,
    control: Engine | None = None,
    database: str | None = None,
) -> None:
    """Create (or reset) each schema at ``revision`` with W1's seed rows; ``on_done`` is told
    how many are ready after each one. With ``control`` and ``database``, the schemas are made
    in ``engine``'s database and registered in ``control``'s under the key ``database``.

    A schema that exists already is dropped and created again, so a second demo starts afresh.
    """
    from tenantfleet import alembic_runtime

    for done, schema in enumerate(schemas, start=1):
        with db.begin(engine) as connection, _registrar(connection, control) as registrar:
            connection.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
            connection.execute(sa.schema.CreateSchema(schema))
            if not registry.is_registered(registrar, schema):
                registry.register(registrar, schema, f"Tenant {schema}", database=database)
            alembic_runtime.confine_to_schema(connection, schema, settings)
            alembic_runtime.migrate_tenant(connection, schema, revision)
            connection.execute(SEED_USERS)
            connection.execute(SEED_ORDERS)
            registry.record_revision(registrar, schema, revision)
        if on_done is not None:
            on_done(done)
