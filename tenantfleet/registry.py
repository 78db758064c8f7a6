"""``public.tenant_registry``: the only Python module that writes it (the success mark,
``sql/functions.sql``, records a tenant's new revision in the same transaction as its schema
change)."""

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from tenantfleet.databases import Placed
from tenantfleet.errors import ConfigError, DuplicateTenant, UnknownTenant
from tenantfleet.names import shorten, validate_schema_name
from tenantfleet.public_tables import migration_run_tenants, tenant_registry
from tenantfleet.states import TENANT_FINAL

PROFILE_FIELDS = (
    "email",
    "phone",
    "tenant_address",
    "tenant_city",
    "tenant_state",
    "tenant_country",
    "tenant_country_code",
    "zip",
    "tenant_timezone",
)


@dataclass(frozen=True)
class Tenant:
    """A registry row as the CLI shows it (``api_key`` is never read back)."""

    schema_name: str
    tenant_name: str
    is_active: bool
    email: str | None
    current_revision: str | None
    last_migration_status: str | None
    last_migrated_at: datetime | None
    last_run_id: int | None
    deactivated_reason: str | None
    database: str | None
    """The key of the database holding the schema; None: the control database."""


_TENANT_COLUMNS = [tenant_registry.c[f.name] for f in fields(Tenant)]


def register(
    connection: Connection,
    schema: str,
    tenant_name: str,
    *,
    api_key: str | None = None,
    database: str | None = None,
    **profile: str | None,
) -> None:
    """Insert a tenant (in ``database``: a key; None for this one); ``DuplicateTenant`` if its
    schema or api_key is taken."""
    unknown = set(profile) - set(PROFILE_FIELDS)
    if unknown:
        raise TypeError(f"unknown registry fields: {sorted(unknown)}")
    values: dict[str, Any] = {
        "schema_name": validate_schema_name(schema),
        "tenant_name": tenant_name,
        "api_key": api_key,
        "database": database,
        **profile,
    }
    try:
        with connection.begin_nested():
            connection.execute(tenant_registry.insert().values(**values))
    except IntegrityError as exc:
        what = "api_key" if "api_key" in str(exc.orig) else f"schema {schema!r}"
        raise DuplicateTenant(f"{what} is already registered") from None


def get(connection: Connection, schema: str) -> Tenant:
    row = connection.execute(
        sa.select(*_TENANT_COLUMNS).where(tenant_registry.c.schema_name == schema)
    ).first()
    if row is None:
        raise UnknownTenant(f"no tenant with schema {schema!r} in public.tenant_registry")
    return Tenant(*row)


def is_registered(connection: Connection, schema: str) -> bool:
    query = sa.select(tenant_registry.c.id).where(tenant_registry.c.schema_name == schema)
    return connection.execute(query).first() is not None


def list_tenants(connection: Connection, *, active_only: bool = False) -> list[Tenant]:
    query = sa.select(*_TENANT_COLUMNS).order_by(tenant_registry.c.schema_name)
    if active_only:
        query = query.where(tenant_registry.c.is_active)
    return [Tenant(*row) for row in connection.execute(query)]


def recorded_revisions(connection: Connection) -> dict[str, str | None]:
    """Each active tenant's revision as the registry records it (``base``: none; None: no
    record). tenantfleet writes it with every change it makes to the schema, in the same
    transaction; a change made around tenantfleet (Alembic or SQL by hand) is not in it."""
    rows = connection.execute(
        sa.select(tenant_registry.c.schema_name, tenant_registry.c.current_revision).where(
            tenant_registry.c.is_active
        )
    )
    return {schema: revision for schema, revision in rows}


def deactivated(connection: Connection) -> dict[str, str | None]:
    """Each inactive tenant and why (``tenant deactivate --reason``)."""
    rows = connection.execute(
        sa.select(tenant_registry.c.schema_name, tenant_registry.c.deactivated_reason)
        .where(sa.not_(tenant_registry.c.is_active))
        .order_by(tenant_registry.c.schema_name)
    )
    return {schema: reason for schema, reason in rows}


def select_for_migration(
    connection: Connection, include: Sequence[str] = (), exclude: Sequence[str] = ()
) -> list[Placed]:
    """Active tenants with their databases and size hints, in schema-name order, narrowed by
    ``include``/``exclude``.

    Every name in ``include`` must be a registered, active tenant.
    """
    query = sa.select(
        tenant_registry.c.schema_name,
        tenant_registry.c.is_active,
        tenant_registry.c.database,
        tenant_registry.c.size_hint,
    ).order_by(tenant_registry.c.schema_name)
    if include:
        query = query.where(tenant_registry.c.schema_name.in_(list(include)))
    rows = connection.execute(query).all()
    if exclude:
        known = set(
            connection.execute(
                sa.select(tenant_registry.c.schema_name).where(
                    tenant_registry.c.schema_name.in_(list(exclude))
                )
            ).scalars()
        )
        unknown = [s for s in exclude if s not in known]
        if unknown:
            raise UnknownTenant(f"--exclude: not in public.tenant_registry: {shorten(unknown)}")
    if include:
        found = {name: active for name, active, _, _ in rows}
        missing = [s for s in include if s not in found]
        if missing:
            raise UnknownTenant(f"not in public.tenant_registry: {shorten(missing)}")
        inactive = [s for s in include if not found[s]]
        if inactive:
            raise UnknownTenant(f"tenant is not active: {shorten(inactive)}")
    excluded = set(exclude)
    return [
        Placed(name, database, size_hint)
        for name, active, database, size_hint in rows
        if active and name not in excluded
    ]


def any_active_not_at(connection: Connection, revision: str) -> bool:
    """Whether the registry records some active tenant at another revision than ``revision``
    (a hint for planning: the schemas' own version tables are the truth)."""
    return bool(
        connection.execute(
            sa.select(
                sa.exists().where(
                    tenant_registry.c.is_active,
                    tenant_registry.c.current_revision.is_distinct_from(revision),
                )
            )
        ).scalar_one()
    )


def attribute(connection: Connection, column: str, schemas: Sequence[str]) -> dict[str, Any]:
    """Each registered tenant of ``schemas``'s value in the registry column ``column`` (checked
    against the table: ``ConfigError`` if it has none)."""
    if column not in tenant_registry.c:
        known = ", ".join(c.name for c in tenant_registry.c)
        raise ConfigError(f"wave_order: tenant_registry has no column {column!r} (known: {known})")
    rows = connection.execute(
        sa.select(tenant_registry.c.schema_name, tenant_registry.c[column]).where(
            tenant_registry.c.schema_name.in_(list(schemas))
        )
    )
    return {schema: value for schema, value in rows}


def record_revision(connection: Connection, schema: str, revision: str | None) -> None:
    """Note the revision a single-tenant command left ``schema`` at."""
    connection.execute(
        tenant_registry.update()
        .where(tenant_registry.c.schema_name == schema)
        .values(current_revision=revision, updated_at=sa.func.now())
    )


def apply_run_outcomes(connection: Connection, run_id: int) -> int:
    """Copy each finished tenant's outcome in run ``run_id`` onto its registry row, at once.

    ``current_revision`` is not written here: it changes with the schema itself, in the tenant's
    own transaction (the success mark, ``sql/queries.sql``), so it is true even for a run that
    never closes and is never overwritten with a plan-time guess.
    """
    rt = migration_run_tenants
    result = connection.execute(
        tenant_registry.update()
        .where(
            tenant_registry.c.schema_name == rt.c.schema_name,
            rt.c.run_id == run_id,
            rt.c.status.in_(TENANT_FINAL),
        )
        .values(
            last_migration_status=rt.c.status,
            last_migrated_at=sa.func.coalesce(rt.c.finished_at, sa.func.now()),
            last_run_id=run_id,
            updated_at=sa.func.now(),
        )
    )
    return result.rowcount


def set_active(connection: Connection, schema: str, active: bool, reason: str | None) -> Tenant:
    """Take a tenant out of fleet runs (with a reason), or back in."""
    found = connection.execute(
        tenant_registry.update()
        .where(tenant_registry.c.schema_name == schema)  # any registered name, even refused
        .values(
            is_active=active,
            deactivated_reason=None if active else reason,
            deactivated_at=None if active else sa.func.now(),
            updated_at=sa.func.now(),
        )
        .returning(tenant_registry.c.id)
    ).first()
    if found is None:
        raise UnknownTenant(f"no tenant with schema {schema!r} in public.tenant_registry")
    return get(connection, schema)
