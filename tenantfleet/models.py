"""The tables of the ``public`` schema, matching ``migrations/public/alembic/versions`` exactly.

SQLAlchemy Core tables on one ``MetaData`` (no ORM: nothing maps rows to classes, and importing
the ORM cost ~0.1 s of the start of every command that does not load a tenant environment).
Declared without a schema, as Alembic's autogenerate expects for the default schema;
``tenantfleet.public_tables`` pins them to ``public`` for the modules that query them.
"""

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData()


def _run_key() -> sa.Column[object]:
    """``run_id``: the first column of a table's key whose rows go when their run does."""
    return sa.Column(
        "run_id",
        sa.BigInteger,
        sa.ForeignKey("migration_runs.id", ondelete="CASCADE"),
        primary_key=True,
    )


def _timestamp(name: str, *, now: bool = False) -> sa.Column[object]:
    """A ``timestamptz`` column: NOT NULL DEFAULT now() when ``now``, else NULL."""
    if now:
        return sa.Column(
            name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        )
    return sa.Column(name, sa.DateTime(timezone=True))


tenant_registry = sa.Table(
    "tenant_registry",
    metadata,
    # One row per customer; schema_name is the PostgreSQL schema holding its tables.
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tenant_name", sa.String(255), nullable=False),
    sa.Column("schema_name", sa.String(63), nullable=False, unique=True),
    sa.Column("email", sa.String(255)),
    sa.Column("phone", sa.String(64)),
    sa.Column("tenant_address", sa.String(255)),
    sa.Column("tenant_city", sa.String(100)),
    sa.Column("tenant_state", sa.String(100)),
    sa.Column("tenant_country", sa.String(100)),
    sa.Column("tenant_country_code", sa.String(2)),
    sa.Column("zip", sa.String(20)),
    sa.Column("tenant_timezone", sa.String(64)),
    sa.Column("api_key", sa.String(255), unique=True),
    sa.Column("is_active", sa.Boolean, nullable=False, server_default=sa.true()),
    _timestamp("created_at", now=True),
    _timestamp("updated_at", now=True),
    sa.Column("current_revision", sa.String(64)),
    sa.Column("last_migration_status", sa.String(16)),
    _timestamp("last_migrated_at"),
    sa.Column(
        "last_run_id", sa.BigInteger, sa.ForeignKey("migration_runs.id", ondelete="SET NULL")
    ),
    sa.Column("deactivated_reason", sa.Text),
    _timestamp("deactivated_at"),
    # The key of the database holding the schema ([tool.tenantfleet.databases.KEY]); NULL: this one.
    sa.Column("database", sa.String(63)),
    # What the tenant's migration will touch, in bytes; wins over the catalog's estimate.
    sa.Column("size_hint", sa.BigInteger),
    sa.CheckConstraint("size_hint >= 0", name="ck_tenant_registry_size_hint"),
)

migration_runs = sa.Table(
    "migration_runs",
    metadata,
    # One `tenantfleet migrate` (or retry): its target, its status and its counts.
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column(
        "parent_run_id", sa.BigInteger, sa.ForeignKey("migration_runs.id", ondelete="SET NULL")
    ),
    sa.Column("target_revision", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="running"),
    sa.Column("total", sa.Integer, nullable=False, server_default="0"),
    sa.Column("up_to_date", sa.Integer, nullable=False, server_default="0"),
    sa.Column("succeeded", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("skipped", sa.Integer, nullable=False, server_default="0"),
    sa.Column("options", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("producer", sa.String(255)),
    _timestamp("created_at", now=True),
    _timestamp("finished_at"),
    sa.Column(
        "uid", UUID(as_uuid=False), nullable=False, server_default=sa.text("gen_random_uuid()")
    ),
    _timestamp("dispatched_at"),
    _timestamp("cancelled_at"),
    # The wave being run (NULL: the run has no waves).
    sa.Column("wave", sa.Integer),
    # The last wave after which an operator let the run go on (`tenantfleet continue`).
    sa.Column("continued_wave", sa.Integer),
    sa.CheckConstraint(
        "status IN ('running', 'succeeded', 'partial', 'failed', 'nothing_to_do', 'cancelled',"
        " 'held', 'skipped')",
        name="ck_migration_runs_status",
    ),
)

migration_run_tenants = sa.Table(
    "migration_run_tenants",
    metadata,
    # One tenant of one run: the truth about that tenant, whatever the broker remembers.
    _run_key(),
    sa.Column("schema_name", sa.String(63), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, server_default="queued"),
    sa.Column("from_revision", sa.String(64)),
    sa.Column("to_revision", sa.String(64), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("worker", sa.String(255)),
    _timestamp("started_at"),
    _timestamp("finished_at"),
    sa.Column("duration_ms", sa.Integer),
    sa.Column("error_class", sa.String(128)),
    sa.Column("error_message", sa.Text),
    _timestamp("updated_at", now=True),
    sa.Column("database", sa.String(63)),
    sa.Column("wave", sa.SmallInteger),
    # Where a tenant that failed part way through an autocommit_block() revision is.
    sa.Column("reached_revision", sa.String(64)),
    sa.CheckConstraint(
        "status IN ('queued', 'running', 'retrying', 'succeeded', 'failed', 'skipped',"
        " 'waiting', 'cancelled')",
        name="ck_migration_run_tenants_status",
    ),
    sa.Index("ix_migration_run_tenants_run_id_status", "run_id", "status"),
    sa.Index(
        "ix_migration_run_tenants_waiting",
        "run_id",
        "database",
        "schema_name",
        postgresql_where=sa.text("status = 'waiting'"),
    ),
)

migration_attempts = sa.Table(
    "migration_attempts",
    metadata,
    # One attempt at one tenant of one run: who, when, and how it ended.
    sa.Column("run_id", sa.BigInteger, primary_key=True),
    sa.Column("schema_name", sa.String(63), primary_key=True),
    sa.Column("attempt", sa.Integer, primary_key=True),
    sa.Column("worker", sa.String(255)),
    _timestamp("started_at", now=True),
    _timestamp("finished_at"),
    sa.Column("outcome", sa.String(16)),
    sa.Column("sqlstate", sa.String(5)),
    sa.Column("error_message", sa.Text),
    sa.ForeignKeyConstraint(
        ["run_id", "schema_name"],
        ["migration_run_tenants.run_id", "migration_run_tenants.schema_name"],
        ondelete="CASCADE",
    ),
)

migration_backfills = sa.Table(
    "migration_backfills",
    metadata,
    # One backfill of one tenant of one run (tenantfleet.backfill): how far its batches are.
    _run_key(),
    sa.Column("schema_name", sa.String(63), primary_key=True),
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("database", sa.String(63)),
    sa.Column("revision", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("key_low", sa.BigInteger),
    sa.Column("key_high", sa.BigInteger),
    sa.Column("next_key", sa.BigInteger),
    sa.Column("rows_done", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("batch_keys", sa.BigInteger),
    sa.Column("reason", sa.Text),
    _timestamp("started_at"),
    _timestamp("updated_at", now=True),
    _timestamp("finished_at"),
    sa.CheckConstraint(
        "status IN ('pending', 'running', 'paused', 'done', 'failed')",
        name="ck_migration_backfills_status",
    ),
    sa.Index("ix_migration_backfills_schema", "schema_name", "name", "status"),
)
