"""The tenant source: which schemas a fleet run covers (``tenants`` in the configuration).

- ``registry`` (default): the active rows of ``public.tenant_registry``;
- ``query``: the app's own SQL (``tenants_query``), run in a read-only transaction; its first
  column is the schema name, validated like any schema name;
- ``discover``: every schema that holds the tenant version table (the seed's "apply to all
  tenant schemas").

A schema the source lists without a version table yet is at base, and is migrated from base.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantfleet import db, registry
from tenantfleet.alembic_runtime import VERSION_TABLE
from tenantfleet.config import Settings
from tenantfleet.errors import ConfigError, InvalidSchemaName, UnknownTenant
from tenantfleet.names import shorten, validate_schema_name

_DISCOVER = sa.text(
    "SELECT nspname FROM pg_namespace"
    " WHERE nspname !~ '^pg_' AND nspname NOT IN ('public', 'information_schema')"
    " AND to_regclass(quote_ident(nspname) || '.' || :table) IS NOT NULL ORDER BY nspname"
)


def select(
    connection: Connection,
    settings: Settings,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
) -> list[str]:
    """The source's schemas, in schema-name order, narrowed by ``include``/``exclude``."""
    if settings.tenants == "registry":
        return registry.select_for_migration(connection, include, exclude)
    listed = (
        listed_by_query(connection, settings)
        if settings.tenants == "query"
        else discover(connection)
    )
    if include:
        missing = [s for s in include if s not in listed]
        if missing:
            raise UnknownTenant(
                f"not listed by the tenant source ({settings.tenants}): {shorten(missing)}"
            )
        listed = [s for s in listed if s in include]
    excluded = set(exclude)
    return [s for s in listed if s not in excluded]


def listed_by_query(connection: Connection, settings: Settings) -> list[str]:
    """The schemas ``tenants_query`` returns, read in a read-only transaction of its own."""
    assert settings.tenants_query is not None
    try:
        with connection.engine.connect() as reader:
            reader.exec_driver_sql("SET TRANSACTION READ ONLY")
            rows = reader.execute(sa.text(settings.tenants_query)).all()
            reader.rollback()
    except DBAPIError as exc:
        if db.is_unreachable(exc):
            raise
        raise ConfigError(f"tenants_query failed: {db.first_line(exc)}") from None
    names: list[str] = []
    bad: list[str] = []
    for row in rows:
        try:
            names.append(validate_schema_name(row[0]))
        except InvalidSchemaName:
            bad.append(repr(row[0]))
    if bad:
        raise ConfigError(f"tenants_query returned invalid schema names: {shorten(bad)}")
    return sorted(set(names))


def discover(connection: Connection) -> list[str]:
    """Every schema with a tenant version table whose name tenantfleet accepts."""
    found = connection.execute(_DISCOVER, {"table": VERSION_TABLE}).scalars()
    return [name for name in found if _acceptable(name)]


def _acceptable(name: str) -> bool:
    try:
        validate_schema_name(name)
    except InvalidSchemaName:
        return False
    return True
