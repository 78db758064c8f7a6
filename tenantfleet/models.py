"""Models of the ``public`` schema, matching ``migrations/public/alembic/versions`` exactly.

Declared without a schema, as Alembic's autogenerate expects for the default schema; the modules
that query these tables (``tenantfleet.registry``, ``tenantfleet.runs``) pin them to ``public``.
"""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

RUN_STATUSES = ("running", "succeeded", "partial", "failed", "nothing_to_do")
TENANT_STATUSES = ("queued", "running", "retrying", "succeeded", "failed", "skipped")


class PublicBase(DeclarativeBase):
    pass


class TenantRegistry(PublicBase):
    """One row per customer; ``schema_name`` is the PostgreSQL schema holding its tables."""

    __tablename__ = "tenant_registry"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    tenant_name: Mapped[str] = mapped_column(sa.String(255))
    schema_name: Mapped[str] = mapped_column(sa.String(63), unique=True)
    email: Mapped[str | None] = mapped_column(sa.String(255))
    phone: Mapped[str | None] = mapped_column(sa.String(64))
    tenant_address: Mapped[str | None] = mapped_column(sa.String(255))
    tenant_city: Mapped[str | None] = mapped_column(sa.String(100))
    tenant_state: Mapped[str | None] = mapped_column(sa.String(100))
    tenant_country: Mapped[str | None] = mapped_column(sa.String(100))
    tenant_country_code: Mapped[str | None] = mapped_column(sa.String(2))
    zip: Mapped[str | None] = mapped_column(sa.String(20))
    tenant_timezone: Mapped[str | None] = mapped_column(sa.String(64))
    api_key: Mapped[str | None] = mapped_column(sa.String(255), unique=True)
    is_active: Mapped[bool] = mapped_column(sa.Boolean, server_default=sa.true())
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    current_revision: Mapped[str | None] = mapped_column(sa.String(64))
    last_migration_status: Mapped[str | None] = mapped_column(sa.String(16))
    last_migrated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    last_run_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("migration_runs.id", ondelete="SET NULL")
    )
    deactivated_reason: Mapped[str | None] = mapped_column(sa.Text)
    deactivated_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    database: Mapped[str | None] = mapped_column(sa.String(63))
    """The key of the database holding the schema (``[tool.tenantfleet.databases.KEY]``);
    NULL: this one."""


class MigrationRun(PublicBase):
    """One ``tenantfleet migrate`` (or retry): its target, its status and its counts."""

    __tablename__ = "migration_runs"
    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('running', 'succeeded', 'partial', 'failed', 'nothing_to_do', 'cancelled')",
            name="ck_migration_runs_status",
        ),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    parent_run_id: Mapped[int | None] = mapped_column(
        sa.BigInteger, sa.ForeignKey("migration_runs.id", ondelete="SET NULL")
    )
    target_revision: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[str] = mapped_column(sa.String(16), server_default="running")
    total: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    up_to_date: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    succeeded: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    failed: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    skipped: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    options: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'::jsonb"))
    producer: Mapped[str | None] = mapped_column(sa.String(255))
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    uid: Mapped[str] = mapped_column(
        UUID(as_uuid=False), server_default=sa.text("gen_random_uuid()")
    )
    dispatched_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    wave: Mapped[int | None] = mapped_column(sa.Integer)
    """The wave being run (NULL: the run has no waves)."""
    continued_wave: Mapped[int | None] = mapped_column(sa.Integer)
    """The last wave after which an operator let the run go on (``tenantfleet continue``)."""


class MigrationRunTenant(PublicBase):
    """One tenant of one run: the truth about that tenant, whatever the broker remembers."""

    __tablename__ = "migration_run_tenants"
    __table_args__ = (
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

    run_id: Mapped[int] = mapped_column(
        sa.BigInteger, sa.ForeignKey("migration_runs.id", ondelete="CASCADE"), primary_key=True
    )
    schema_name: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    status: Mapped[str] = mapped_column(sa.String(16), server_default="queued")
    from_revision: Mapped[str | None] = mapped_column(sa.String(64))
    to_revision: Mapped[str] = mapped_column(sa.String(64))
    attempts: Mapped[int] = mapped_column(sa.Integer, server_default="0")
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    duration_ms: Mapped[int | None] = mapped_column(sa.Integer)
    error_class: Mapped[str | None] = mapped_column(sa.String(128))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    database: Mapped[str | None] = mapped_column(sa.String(63))
    wave: Mapped[int | None] = mapped_column(sa.SmallInteger)
    reached_revision: Mapped[str | None] = mapped_column(sa.String(64))
    """Where a tenant that failed part way through an ``autocommit_block()`` revision is."""


class MigrationAttempt(PublicBase):
    """One attempt at one tenant of one run: who, when, and how it ended."""

    __tablename__ = "migration_attempts"
    __table_args__ = (
        sa.ForeignKeyConstraint(
            ["run_id", "schema_name"],
            ["migration_run_tenants.run_id", "migration_run_tenants.schema_name"],
            ondelete="CASCADE",
        ),
    )

    run_id: Mapped[int] = mapped_column(sa.BigInteger, primary_key=True)
    schema_name: Mapped[str] = mapped_column(sa.String(63), primary_key=True)
    attempt: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    worker: Mapped[str | None] = mapped_column(sa.String(255))
    started_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), server_default=sa.func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(sa.String(16))
    sqlstate: Mapped[str | None] = mapped_column(sa.String(5))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
