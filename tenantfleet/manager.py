"""MigrationManager: the public and tenant migration operations, one schema at a time.

The seed's script (``migrations/migrate.py``) and its import path
(``from migrations.migrate import MigrationManager``) re-export it from here. Its methods that
run Alembic import the Alembic layer (``alembic_runtime``) themselves: the read-only commands
hold a manager for its engines and never load Alembic (a third of a command's start).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from tenantfleet import config, databases, db, registry, tenants, versions
from tenantfleet.errors import (
    ConfigError,
    DuplicateTenant,
    MigrationFailed,
    TenantStateError,
    UsageError,
)
from tenantfleet.names import validate_schema_name
from tenantfleet.versions import Step


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
        self._elsewhere: dict[str, Engine] = {}

    @property
    def engine(self) -> Engine:
        """The control database's: the registry, the run tables, its own tenants."""
        if self._engine is None:
            self._engine = db.make_engine(config.database_url(self.settings))
        return self._engine

    def close_sessions(self) -> None:
        """Close the pooled database sessions (the next use opens new ones). A session that read
        every schema of a large fleet keeps all it read in PostgreSQL's caches: the plan's five
        reading sessions held about 480 MB each on the server among 100,000 schemas."""
        self.engine.dispose()
        for engine in self._elsewhere.values():
            engine.dispose()

    def engine_for(self, database: str | None) -> Engine:
        """The engine of the database a tenant lives in (None: the control database)."""
        if database is None:
            return self.engine
        if database not in self._elsewhere:
            self._elsewhere[database] = databases.make_engine(self.settings, database)
        return self._elsewhere[database]

    # -- public schema -------------------------------------------------------------------

    def init_public(self) -> Status:
        """Create the registry and run tables on a new database; a no-op once they exist."""
        current = self.status_public()
        if current.current is not None:
            return current
        return self.upgrade_public()

    def upgrade_public(self, revision: str = "head") -> Status:
        from tenantfleet import alembic_runtime as runtime

        with db.begin(self.engine) as connection:
            runtime.upgrade_public(connection, revision)
        return self.status_public()

    def public_at_head(self) -> bool:
        """Whether ``upgrade_public`` has nothing to do: the public schema at tenantfleet's
        head, recorded in its own version table (read without Alembic)."""
        with db.connect(self.engine) as connection:
            return (
                versions.has_relation(connection, f"public.{versions.PUBLIC_VERSION_TABLE}")
                and versions.public_revision(connection) == versions.public_head()
            )

    def status_public(self) -> Status:
        from tenantfleet import alembic_runtime as runtime

        script = runtime.public_script()
        with db.connect(self.engine) as connection:
            current = versions.public_revision(connection)
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
        database: str | None = None,
        **profile: str | None,
    ) -> Status:
        """Create the schema (in ``database``: a configured key; None for the control one),
        register the tenant and migrate it, as one transaction. In another database there are
        two: the schema's commits first, then the registration's (were that one lost, the
        schema would stand unregistered, and ``tenant create`` would say it exists)."""
        from tenantfleet import alembic_runtime as runtime

        validate_schema_name(schema)
        database = databases.normalize(database)
        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        with db.begin(self.engine) as control:
            self.require_public(control)
            with self._tenant_transaction(control, database) as connection:
                if _schema_exists(connection, schema):
                    raise DuplicateTenant(f"schema {schema!r} already exists")
                registry.register(
                    control,
                    schema,
                    tenant_name or schema,
                    api_key=api_key,
                    database=database,
                    **profile,
                )
                connection.execute(sa.schema.CreateSchema(schema))
                self._migrate(connection, schema, target, downgrade=False)
                registry.record_revision(control, schema, target)
        return self.status_tenant(schema)

    def upgrade_tenant(self, schema: str, revision: str = "head") -> Step:
        from tenantfleet import alembic_runtime as runtime

        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        return self._move(schema, target, downgrade=False)

    def downgrade_tenant(self, schema: str, revision: str) -> Step:
        from tenantfleet import alembic_runtime as runtime

        target = runtime.resolve_revision(runtime.tenant_script(), revision)
        return self._move(schema, target, downgrade=True)

    def status_tenant(self, schema: str) -> Status:
        from tenantfleet import alembic_runtime as runtime

        validate_schema_name(schema)
        script = runtime.tenant_script()
        head = script.get_current_head()
        with db.connect(self.engine) as control:
            self.require_public(control)
            database = self._database_of(control, schema)
        with db.connect(self.engine_for(database)) as connection:
            current = _tenant_revision(connection, schema)
        try:
            return Status(schema, current, head, runtime.pending(script, current, head))
        except TenantStateError:
            return Status(schema, current, head, [], known=False)

    def set_active(self, schema: str, active: bool, reason: str | None = None) -> registry.Tenant:
        """Take a tenant out of fleet runs (``active=False``, with a reason), or back in: a
        registry flag, so with another tenant source it is refused in one line."""
        self._needs_registry("tenant activate/deactivate", schema)
        with db.begin(self.engine) as connection:
            self.require_public(connection)
            return registry.set_active(connection, schema, active, reason)

    def list_tenants(self) -> list[registry.Tenant]:
        self._needs_registry("tenants list")
        with db.connect(self.engine) as connection:
            self.require_public(connection)
            return registry.list_tenants(connection)

    # -- internals -----------------------------------------------------------------------

    def _needs_registry(self, command: str, schema: str = "S") -> None:
        """``UsageError`` saying why ``command`` does not apply to the configured source."""
        source = self.settings.tenants
        if source == "registry":
            return
        raise UsageError(
            f"`{command}` works on public.tenant_registry, and tenants = {source}: your"
            f" {'query' if source == 'query' else 'schemas'} decide which tenants exist and are"
            f" active (leave {schema} out of it, or `migrate --exclude {schema}`);"
            " `tenantfleet fleet` lists them by revision"
        )

    def _database_of(self, control: Connection, schema: str) -> str | None:
        """The key of the database holding ``schema``, from the configured tenant source
        (``UnknownTenant`` when the source does not list it)."""
        if self.settings.tenants == "registry":
            return registry.get(control, schema).database

        def elsewhere(database: str) -> list[str]:
            with db.connect(self.engine_for(database)) as other:
                return tenants.discover(other)

        (found,) = tenants.select(control, self.settings, include=[schema], elsewhere=elsewhere)
        return found.database

    def _move(self, schema: str, target: str | None, *, downgrade: bool) -> Step:
        validate_schema_name(schema)
        with db.begin(self.engine) as control:
            self.require_public(control)
            database = self._database_of(control, schema)
            with self._tenant_transaction(control, database) as connection:
                _tenant_revision(connection, schema)
                step = self._migrate(connection, schema, target, downgrade=downgrade)
                registry.record_revision(control, schema, target)
                return step

    @contextmanager
    def _tenant_transaction(
        self, control: Connection, database: str | None
    ) -> Iterator[Connection]:
        """A transaction in the tenant's database, committed before ``control``'s (the same
        connection when the tenant lives in the control database)."""
        if database is None:
            yield control
            return
        with db.begin(self.engine_for(database)) as connection:
            yield connection

    def _migrate(
        self, connection: Connection, schema: str, target: str | None, *, downgrade: bool
    ) -> Step:
        from tenantfleet import alembic_runtime as runtime

        runtime.confine_to_schema(connection, schema, self.settings)
        try:
            return runtime.migrate_tenant(connection, schema, target, downgrade=downgrade)
        except DBAPIError as exc:
            if db.is_unreachable(exc):
                raise  # the database, not the tenant: exit 2
            reason = db.first_line(exc)
            raise MigrationFailed(f"tenant {schema!r} rolled back: {reason}") from None

    def require_public(self, connection: Connection) -> None:
        """Refuse to work on a database whose public schema is not at head."""
        current = versions.public_revision(connection)
        head = versions.public_head()
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
    found = versions.read_versions(connection, [schema])
    if schema not in found:
        raise TenantStateError(f"tenant {schema!r} is registered but its schema does not exist")
    return found[schema]
