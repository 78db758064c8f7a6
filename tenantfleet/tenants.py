"""The tenant source: which schemas a fleet run covers (``tenants`` in the configuration).

- ``registry`` (default): the active rows of ``public.tenant_registry``;
- ``query``: the app's own SQL (``tenants_query``), run in a read-only transaction; its first
  column is the schema name (a name tenantfleet refuses is recorded skipped, see
  ``split_refused``); a column named ``database`` gives
  the key of the database holding it (NULL: the control database), one named ``size_hint`` the
  bytes its migration will touch (NULL: none; planning estimates it from the catalog);
- ``discover``: every schema that holds the tenant version table (the seed's "apply to all
  tenant schemas"), in the control database and in every configured one.

A schema name names one tenant across the whole fleet: two databases holding the same tenant
schema is an error, not two tenants.

A schema the source lists without a version table yet is at base, and is migrated from base.
"""

import math
from collections.abc import Callable, Sequence
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantfleet import databases, db, registry
from tenantfleet.config import Settings
from tenantfleet.databases import Placed
from tenantfleet.errors import ConfigError, UnknownTenant
from tenantfleet.names import refusal, shorten
from tenantfleet.versions import VERSION_TABLE

_DISCOVER = sa.text(
    "SELECT nspname FROM pg_namespace"
    " WHERE nspname !~ '^pg_' AND nspname NOT IN ('public', 'information_schema')"
    " AND to_regclass(quote_ident(nspname) || '.' || :table) IS NOT NULL ORDER BY nspname"
)


Elsewhere = Callable[[str], list[str]]
"""A configured database's key -> the tenant schemas ``discover`` finds in it."""


def select(
    connection: Connection,
    settings: Settings,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    elsewhere: Elsewhere | None = None,
) -> list[Placed]:
    """The source's tenants, in schema-name order, narrowed by ``include``/``exclude``; every
    database they name is configured. ``elsewhere`` discovers the configured databases."""
    if settings.tenants == "registry":
        chosen = registry.select_for_migration(connection, include, exclude)
    else:
        listed = (
            listed_by_query(connection, settings)
            if settings.tenants == "query"
            else discover_all(connection, settings, elsewhere)
        )
        names = {p.schema for p in listed}
        if include:
            missing = [s for s in include if s not in names]
            if missing:
                raise UnknownTenant(
                    f"not listed by the tenant source ({settings.tenants}): {shorten(missing)}"
                )
            listed = [p for p in listed if p.schema in include]
        excluded = set(exclude)
        unlisted = [s for s in exclude if s not in names]
        if unlisted:
            raise UnknownTenant(
                f"--exclude: not listed by the tenant source ({settings.tenants}):"
                f" {shorten(unlisted)}"
            )
        chosen = [p for p in listed if p.schema not in excluded]
    databases.check_known(settings, (p.database for p in chosen))
    return chosen


def listed_by_query(connection: Connection, settings: Settings) -> list[Placed]:
    """The tenants ``tenants_query`` returns, read in a read-only transaction of its own."""
    assert settings.tenants_query is not None
    _one_select(settings.tenants_query)
    try:
        with connection.engine.connect() as reader:
            reader.exec_driver_sql("SET TRANSACTION READ ONLY")
            result = reader.execute(sa.text(settings.tenants_query))
            columns = list(result.keys())
            placed_by = columns.index("database") if "database" in columns else None
            sized_by = columns.index("size_hint") if "size_hint" in columns else None
            rows = result.all()
            reader.rollback()
    except DBAPIError as exc:
        if db.is_unreachable(exc):
            raise
        raise ConfigError(f"tenants_query failed: {db.first_line(exc)}") from None
    found: dict[str, Placed] = {}
    bad: list[str] = []
    for row in rows:
        name = row[0]
        try:
            if not isinstance(name, str) or not name:
                raise ConfigError("a schema name is text")
            database = databases.normalize(row[placed_by]) if placed_by is not None else None
            size_hint = _size_hint(row[sized_by]) if sized_by is not None else None
        except ConfigError:
            bad.append(repr(tuple(row)))
            continue
        if name in found and found[name].database != database:
            raise ConfigError(f"tenants_query puts schema {name} in two databases")
        found[name] = Placed(name, database, size_hint)
    if bad:
        raise ConfigError(
            "tenants_query returned rows without a schema name, or with invalid database keys"
            f" or size hints: {shorten(bad)}"
        )
    return sorted(found.values())


def _one_select(query: str) -> None:
    """``ConfigError`` unless ``query`` is exactly one ``SELECT`` that writes nothing: the
    read-only transaction it runs in must be one it cannot end."""
    from tenantfleet import sqltree  # pglast: only when a tenants_query is checked

    try:
        statements = sqltree.parse(query)
    except sqltree.ParseError as exc:
        raise ConfigError(f"tenants_query does not parse: {exc}") from None
    if (
        len(statements) != 1
        or statements[0].kind != "SelectStmt"
        or sqltree.writes(statements[0].tree)
    ):
        raise ConfigError(
            "tenants_query must be exactly one SELECT that writes nothing"
            f" ({len(statements)} statements given)"
        )


def _size_hint(value: object) -> int | None:
    """A ``size_hint`` value: a number of bytes, at least 0 (a fraction is rounded), or NULL."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ConfigError("a size hint is a number of bytes")
    if not math.isfinite(value) or value < 0:
        raise ConfigError("a size hint is a finite number, at least 0")
    return round(value)


def discover_all(
    connection: Connection, settings: Settings, elsewhere: Elsewhere | None
) -> list[Placed]:
    """``discover`` in the control database and, through ``elsewhere``, in every configured
    one; a schema found in two databases is a ``ConfigError``."""
    found: dict[str, str | None] = {name: None for name in discover(connection)}
    for key in databases.keys(settings)[1:]:
        if elsewhere is None or key is None:
            raise ConfigError("discovering tenants in other databases needs their connections")
        for name in elsewhere(key):
            if name in found:
                raise ConfigError(
                    f"schema {name} is in databases {databases.shown(found[name])} and {key}:"
                    " a tenant schema name must be unique across the fleet"
                )
            found[name] = key
    return sorted(Placed(name, database) for name, database in found.items())


def discover(connection: Connection) -> list[str]:
    """Every schema with a tenant version table whose name tenantfleet accepts."""
    found = connection.execute(_DISCOVER, {"table": VERSION_TABLE}).scalars()
    return [name for name in found if refusal(name) is None]


def split_refused(placed: Sequence[Placed]) -> tuple[list[Placed], list[tuple[Placed, str]]]:
    """(the tenants whose schema names tenantfleet accepts, the others with why): a name the
    source lists that tenantfleet will not touch (``Acme``, ``public``, ``c_eu-berlin``) is
    recorded skipped with the reason like any tenant that cannot be migrated; it stops no
    deploy."""
    accepted: list[Placed] = []
    refused: list[tuple[Placed, str]] = []
    for tenant in placed:
        why = refusal(tenant.schema)
        if why is None:
            accepted.append(tenant)
        else:
            refused.append((tenant, why))
    return accepted, refused
