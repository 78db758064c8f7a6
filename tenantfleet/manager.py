"""MigrationManager: the public and tenant migration operations, one schema at a time.

The seed's script (``migrations/migrate.py``) and its import path
(``from migrations.migrate import MigrationManager``) re-export it from here.
"""

from dataclasses import dataclass

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantfleet import alembic_runtime as runtime
from tenantfleet import config, db, registry
from tenantfleet.errors import (
    ConfigError,
    DuplicateTenant,
    MigrationFailed,
    TenantStateError,
)
from tenantfleet.names import validate_schema_name


@dataclass(frozen=True)
class Status:
    """Where one environment stands: current revision, head, and what lies between."""

    schema: str
    current: str | None
    head: str | None
    pending: list[str]
    known: bool = True

    @property
    def up_to_date(self) -> bool:
        return self.known and not self.pending and self.current == self.head


class MigrationManager:
    """Public and single-tenant migrations; the fleet goes through ``tenantfleet migrate``."""

    def __init__(self, settings: config.Settings | None = None, engine: Engine | None = None):
        self.settings = settings or config.load_settings()
        self._engine = engine

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.make_engine(config.database_url(self.settings))
        return self._engine

    # -- public schema -------------------------------------------------------------------

    def init_public(self) -> Status:
        """Create the registry and run tables on a new database; a no-op once they exist."""
        current = self.status_public()
        if current.current is not None:
            return current
        return self.upgrade_public()

    def upgrade_public(self, revision: str = "head") -> Status:
        runtime.resolve_revision(runtime.public_script(), revision)
        with db.begin(self.engine) as connection:
            command.upgrade(runtime.public_config(connection), revision)
        return self.status_public()

    def status_public(self) -> Status:
        script = runtime.public_script()
        with db.connect(self.engine) as connection:
            current = runtime.public_revision(connection)
        head = script.get_current_head()
        return Status("public", current, head, runtime.pending(script, current, head))

    # -- tenants -------------------------------------------------------------------------

    def init_tenant(
        self,
        schema: str,
        tenant_name: str | None = None,
        *,
        revision: str = "head",
        api_key: str | None = None,
        **profile: str | None,
    ) -> Status:
        """Create the schema, register the tenant and migrate it, as one transaction."""
        validate_schema_name(schema)
        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        with db.begin(self.engine) as connection:
            self.require_public(connection)
            if _schema_exists(connection, schema):
                raise DuplicateTenant(f"schema {schema!r} already exists")
            registry.register(connection, schema, tenant_name or schema, api_key=api_key, **profile)
            connection.execute(sa.schema.CreateSchema(schema))
            self._migrate(connection, schema, target, downgrade=False)
        return self.status_tenant(schema)

    def upgrade_tenant(self, schema: str, revision: str = "head") -> runtime.Step:
        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        return self._move(schema, target, downgrade=False)

    def downgrade_tenant(self, schema: str, revision: str) -> runtime.Step:
        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        return self._move(schema, target, downgrade=True)

    def status_tenant(self, schema: str) -> Status:
        validate_schema_name(schema)
        script = runtime.tenant_script()
        head = script.get_current_head()
        with db.connect(self.engine) as connection:
            self.require_public(connection)
            registry.get(connection, schema)
            current = _tenant_revision(connection, schema)
        try:
            return Status(schema, current, head, runtime.pending(script, current, head))
        except TenantStateError:
            return Status(schema, current, head, [], known=False)

    def set_active(self, schema: str, active: bool, reason: str | None = None) -> registry.Tenant:
        """Take a tenant out of fleet runs (``active=False``, with a reason), or back in."""
        with db.begin(self.engine) as connection:
            self.require_public(connection)
            return registry.set_active(connection, schema, active, reason)

    def list_tenants(self) -> list[registry.Tenant]:
        with db.connect(self.engine) as connection:
            self.require_public(connection)
            return registry.list_tenants(connection)

    # -- internals -----------------------------------------------------------------------

    def _move(self, schema: str, target: str | None, *, downgrade: bool) -> runtime.Step:
        validate_schema_name(schema)
        with db.begin(self.engine) as connection:
            self.require_public(connection)
            registry.get(connection, schema)
            _tenant_revision(connection, schema)
            return self._migrate(connection, schema, target, downgrade=downgrade)

    def _migrate(
        self, connection: Connection, schema: str, target: str | None, *, downgrade: bool
    ) -> runtime.Step:
        runtime.confine_to_schema(connection, schema, self.settings)
        try:
            step = runtime.migrate_tenant(connection, schema, target, downgrade=downgrade)
        except DBAPIError as exc:
            if db.is_unreachable(exc):
                raise  # the database, not the tenant: exit 2
            reason = db.first_line(exc)
            raise MigrationFailed(f"tenant {schema!r} rolled back: {reason}") from None
        registry.record_revision(connection, schema, target)
        return step

    def require_registry(self, connection: Connection) -> None:
        """Refuse when there is no registry at all (a dry run needs no more)."""
        if runtime.public_revision(connection) is None:
            raise ConfigError("the public schema is empty: run `tenantfleet public upgrade`")

    def require_public(self, connection: Connection) -> None:
        """Refuse to work on a database whose public schema is not at head."""
        current = runtime.public_revision(connection)
        head = runtime.public_script().get_current_head()
        if current != head:
            raise ConfigError(
                f"the public schema is at {current or 'no revision'}, not at {head}: "
                "run `tenantfleet public upgrade`"
            )


def _schema_exists(connection: Connection, schema: str) -> bool:
    return bool(
        connection.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = :s)"), {"s": schema}
        ).scalar()
    )


def _tenant_revision(connection: Connection, schema: str) -> str | None:
    versions = runtime.read_versions(connection, [schema])
    if schema not in versions:
        raise TenantStateError(f"tenant {schema!r} is registered but its schema does not exist")
    return versions[schema]
