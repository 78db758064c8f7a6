"""Where tenants live: the control database and the tenant databases named in the configuration.

A tenant is a schema name (unique across the fleet) and a database key: None for the control
database (``database_url``: the registry and the run tables live there), else a key of
``[tool.tenantfleet.databases.KEY]``. People and Flower see a tenant as its *label*: the schema
alone in the control database, ``KEY/schema`` elsewhere.

While a tenant of another database migrates, its worker holds, on its control-database
connection, a session lock named after the label (a schema alone is the control database's own
schema lock: the same key either way): the control database alone can then tell which tenants
are being migrated right now, wherever they live (``locks.held`` of the labels).
"""

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tenantfleet import config, db, versions
from tenantfleet.config import CONTROL_DATABASE, DATABASE_KEY, Settings
from tenantfleet.errors import ConfigError
from tenantfleet.names import validate_schema_name

SEPARATOR = "/"


@dataclass(frozen=True, order=True)
class Placed:
    """A tenant and the database that holds its schema; the size hint its source gave, if any
    (bytes its migration will touch: it wins over the catalog's estimate when planning)."""

    schema: str
    database: str | None = None
    size_hint: int | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return label(self.database, self.schema)


def label(database: str | None, schema: str) -> str:
    """``KEY/schema``, or the schema alone in the control database."""
    return schema if database is None else f"{database}{SEPARATOR}{schema}"


def parse_label(text: str) -> Placed:
    """The tenant a label names; schema and key validated."""
    database, _, schema = text.rpartition(SEPARATOR)
    validate_schema_name(schema)
    return Placed(schema, validate_key(database) if database else None)


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not DATABASE_KEY.fullmatch(key):
        raise ConfigError(
            f"invalid database key {key!r}: 1-31 characters of a-z, 0-9 and _, starting with a"
            " letter"
        )
    return key


def normalize(key: str | None) -> str | None:
    """A key as stored: None for the control database (``default`` or nothing)."""
    if key is None or key == "" or key == CONTROL_DATABASE:
        return None
    return validate_key(key)


def url(settings: Settings, database: str | None) -> str:
    """The URL of ``database`` (None: the control database, started embedded if unset)."""
    if database is None:
        return config.database_url(settings)
    found = settings.database(database)
    assert found.url is not None
    return found.url


def make_engine(settings: Settings, database: str | None, **options: Any) -> Engine:
    """An engine for ``database``; a bad URL is a ``ConfigError`` naming its setting."""
    setting = "TENANTFLEET_DATABASE_URL" if database is None else f"databases.{database}.url"
    return db.make_engine(url(settings, database), setting, **options)


def keys(settings: Settings) -> list[str | None]:
    """Every database tenants may live in: the control database first, then the configured."""
    return [None, *sorted(k for k, d in settings.databases.items() if d.url is not None)]


def shown(database: str | None) -> str:
    """The key as people read it: ``default`` for the control database."""
    return database or CONTROL_DATABASE


def check_known(settings: Settings, databases: Iterable[str | None]) -> None:
    """``ConfigError`` when a tenant names a database the configuration does not."""
    for database in sorted({d for d in databases if d is not None}):
        settings.database(database)


EngineFor = Callable[[str | None], Engine]
"""A database key (None: the control database) -> an engine for it."""


@dataclass(frozen=True)
class Versions:
    """Every placed tenant's revision, read in each database at once."""

    found: dict[str, str | None]
    """Schema -> revision (None: no version table); a schema that does not exist is left out."""
    unreachable: dict[str | None, str]
    """The databases that could not be reached, and why (one line): their tenants are unknown."""


T = TypeVar("T")


def in_each(
    engine_for: EngineFor,
    placed: Sequence[Placed],
    read: Callable[[Connection, list[str]], dict[str, T]],
    per_connection: int | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> tuple[dict[str, T], dict[str | None, str]]:
    """``read(connection, schemas)`` in every database that holds some of ``placed``, all at
    once, with at most ``per_connection`` schemas on one connection (None: one connection a
    database); (the results merged, the databases that could not be reached and why).
    ``meanwhile`` runs in the calling thread while the reads wait on their servers (at once when
    there is nothing to read); if it raises, the reads not begun are dropped, those under way
    are cancelled on their servers, and it is raised."""
    by_database: dict[str | None, list[str]] = {}
    for tenant in placed:
        by_database.setdefault(tenant.database, []).append(tenant.schema)
    parts = [
        (database, schemas[start : start + (per_connection or len(schemas))])
        for database, schemas in by_database.items()
        for start in range(0, len(schemas), per_connection or len(schemas))
    ]

    reading: set[Any] = set()  # the driver connections of the reads under way
    lock = threading.Lock()

    def one(database: str | None, schemas: list[str]) -> dict[str, T]:
        with db.connect(engine_for(database)) as connection:
            driver = connection.connection.dbapi_connection
            with lock:
                reading.add(driver)
            try:
                return read(connection, schemas)
            finally:
                with lock:
                    reading.discard(driver)

    found: dict[str, T] = {}
    unreachable: dict[str | None, str] = {}
    if not parts:
        if meanwhile is not None:
            meanwhile()
        return found, unreachable
    with ThreadPoolExecutor(max_workers=min(PLAN_THREADS, len(parts))) as pool:
        futures = [(database, pool.submit(one, database, schemas)) for database, schemas in parts]
        if meanwhile is not None:
            try:
                meanwhile()
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                with lock:
                    for driver in reading:
                        driver.cancel()  # psycopg2 takes it from any thread
                raise
    for database, future in futures:
        try:
            found.update(future.result())
        except Exception as exc:
            if not db.is_unreachable(exc):
                raise
            unreachable[database] = db.first_line(exc)
    return found, unreachable


VERSIONS_PER_CONNECTION = 2500
"""Schemas whose revisions one connection reads while planning. A new backend opening 10,000
version tables takes 2.2-2.8 s, most of it loading each table's catalog entries on first use:
four backends share that out over the server's cores."""


def read_versions(
    engine_for: EngineFor, placed: Sequence[Placed], meanwhile: Callable[[], None] | None = None
) -> Versions:
    """``versions.read_versions`` in every database that holds some of ``placed``, all at
    once, ``VERSIONS_PER_CONNECTION`` schemas a connection (``meanwhile`` as in ``in_each``). A
    database that cannot be reached is noted, not raised."""
    return Versions(
        *in_each(engine_for, placed, versions.read_versions, VERSIONS_PER_CONNECTION, meanwhile)
    )


SCHEMAS_JOINED = (
    "unnest(CAST(:schemas AS text[])) AS wanted (name)"
    " JOIN pg_namespace AS n ON n.nspname = wanted.name"
    " JOIN pg_class AS c ON c.relnamespace = n.oid"
)
"""The relations of the schemas in ``:schemas``, as a catalog query's FROM. A join, not
``nspname = ANY(:schemas)``: PostgreSQL checks that filter against the whole array for each
schema, 1.2 s for 10,000 schemas where the join takes 0.1 s."""
SIZES_SQL = sa.text(
    "SELECT n.nspname, sum(greatest(c.relpages::bigint * current_setting('block_size')::bigint,"
    " pg_stat_get_live_tuples(c.oid) * 100))::bigint"
    f" FROM {SCHEMAS_JOINED} WHERE c.relkind IN ('r', 'm', 't') GROUP BY n.nspname"
)
"""Each schema's size estimate in bytes, in one catalog pass that takes no lock and opens no
file (a table locked by someone else must not hold up the plan): the planner's page count
where VACUUM or ANALYZE set it, else the statistics' live rows at ~100 bytes each."""


def _sizes(connection: Connection, schemas: list[str]) -> dict[str, int]:
    rows = connection.execute(SIZES_SQL, {"schemas": schemas})
    return {schema: int(size) for schema, size in rows}


def sizes(engine_for: EngineFor, placed: Sequence[Placed]) -> dict[str, int]:
    """Every placed tenant's table bytes, read in each database at once (one catalog pass
    each); the tenants of a database that cannot be reached are left out."""
    return in_each(engine_for, placed, _sizes)[0]


EXISTING_SQL = sa.text(
    "SELECT n.nspname FROM unnest(CAST(:schemas AS text[])) AS wanted (name)"
    " JOIN pg_namespace AS n ON n.nspname = wanted.name"
)


def _existing(connection: Connection, schemas: list[str]) -> dict[str, bool]:
    return {name: True for name in connection.execute(EXISTING_SQL, {"schemas": schemas}).scalars()}


def existing(
    engine_for: EngineFor, placed: Sequence[Placed]
) -> tuple[set[str], dict[str | None, str]]:
    """(the placed tenants whose schema exists, the databases that could not be reached and
    why): one catalog pass a database, every database at once."""
    found, unreachable = in_each(engine_for, placed, _existing)
    return set(found), unreachable


PLAN_THREADS = 16
"""Databases read at once while planning: each waits on its server, not on this process."""
