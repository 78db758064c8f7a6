"""The producer behind ``tenantfleet migrate``: plan a run, record it, enqueue it, follow it.

Order matters for "nothing lost": the run and one row per tenant are committed before the first
task is sent, so whatever happens to the broker afterwards, the run tables know every tenant.
"""

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from migrations.migrate import MigrationManager
from tenantfleet import alembic_runtime, db, registry, runs
from tenantfleet.errors import ConnectionFailed, TenantStateError, UsageError
from tenantfleet.names import validate_schema_name

FINALIZE_GRACE_SECONDS = 3.0
BROKER_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class MigrateOptions:
    revision: str = "head"
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    upgrade_public: bool = True


@dataclass(frozen=True)
class Plan:
    """Which selected tenants are behind the target, and from where."""

    target: str
    behind: list[tuple[str, str | None]]
    up_to_date: list[str] = field(default_factory=list)


def plan(manager: MigrationManager, options: MigrateOptions) -> Plan:
    """Select the active tenants and read every schema's revision in one pass."""
    script = alembic_runtime.tenant_script()
    target = validate(options)
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        schemas = registry.select_for_migration(connection, options.include, options.exclude)
        versions = alembic_runtime.read_versions(connection, schemas)
    missing = [s for s in schemas if s not in versions]
    if missing:
        raise TenantStateError(
            f"registered but without a schema: {_names(missing)} (fix the registry or --exclude)"
        )
    known = {r.revision for r in script.walk_revisions()} | {None}
    unknown = [s for s in schemas if versions[s] not in known]
    if unknown:
        raise TenantStateError(
            f"at a revision the migration scripts do not know: {_names(unknown)}"
            f" ({versions[unknown[0]]!r} in {unknown[0]!r}); --exclude them or fix alembic_version"
        )
    below = alembic_runtime.revisions_below(script, target)
    behind = [(s, versions[s]) for s in schemas if versions[s] in below]
    at_or_past = [s for s in schemas if versions[s] not in below]
    return Plan(target, behind, at_or_past)


def validate(options: MigrateOptions) -> str:
    """Check the request before anything is touched; the resolved target revision."""
    for name in [*options.include, *options.exclude]:
        validate_schema_name(name)
    target = alembic_runtime.resolve_revision(alembic_runtime.tenant_script(), options.revision)
    if target is None:
        raise UsageError("migrate only upgrades; use `tenantfleet tenant downgrade` for base")
    return target


def _names(schemas: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(schemas[:limit])
    return shown + (f" and {len(schemas) - limit} more" if len(schemas) > limit else "")


def start(manager: MigrationManager, options: MigrateOptions) -> int:
    """Upgrade public, plan, record the run, enqueue one task per behind tenant; the run id."""
    validate(options)
    if options.upgrade_public:
        manager.upgrade_public()
    chosen = plan(manager, options)
    app = None
    if chosen.behind:
        from workers import app

        check_broker(app)
    with db.begin(manager.engine) as connection:
        run_id = runs.create_run(
            connection,
            chosen.target,
            chosen.behind,
            up_to_date=len(chosen.up_to_date),
            options={
                **asdict(options),
                "include": list(options.include),
                "exclude": list(options.exclude),
            },
            producer=f"{socket.gethostname()}:{os.getpid()}",
        )
    if app is not None:
        enqueue(app, run_id, chosen.target, [schema for schema, _ in chosen.behind])
    return run_id


def check_broker(app: Any) -> None:
    """Fail fast, before anything is written, when the broker cannot be reached."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise ConnectionFailed(f"cannot connect to the broker: {exc}") from None


def enqueue(app: Any, run_id: int, target: str, schemas: Sequence[str]) -> None:
    """``chord(group(one task per tenant), finalize_run)``, ``finalize_run_on_error`` on error."""
    from celery import chord, group

    from tasks.finalize import finalize_run, finalize_run_on_error
    from tasks.tenant import migrate_tenant

    body = finalize_run.s(run_id=run_id)
    body.link_error(finalize_run_on_error.s(run_id=run_id))
    header = group(migrate_tenant.si(run_id, schema, target) for schema in schemas)
    chord(header, body).apply_async()


ProgressCallback = Callable[[runs.Counts, float], None]


def wait(
    engine: Engine,
    run_id: int,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.25,
    on_progress: ProgressCallback | None = None,
    started: float | None = None,
) -> runs.Run | None:
    """Follow the run through the run tables until it is closed; None on ``timeout``.

    The chord callback closes the run; if every tenant is final and it still has not, after
    a grace period, the producer closes it itself (the chord state may have been lost).
    ``started`` (a ``time.monotonic()`` value) is when the command began, for rates and timeout.
    """
    started = time.monotonic() if started is None else started
    settled_at: float | None = None
    while True:
        with db.connect(engine) as connection:
            run = runs.get_run(connection, run_id)
            tally = runs.counts(connection, run_id)
        elapsed = time.monotonic() - started
        if on_progress is not None:
            on_progress(tally, elapsed)
        if run.finished_at is not None:
            return run
        if tally.pending == 0:
            settled_at = settled_at if settled_at is not None else elapsed
            if elapsed - settled_at >= FINALIZE_GRACE_SECONDS:
                with db.begin(engine) as connection:
                    closed = runs.finalize(connection, run_id)
                if closed is not None:
                    return closed
        if timeout is not None and elapsed >= timeout:
            return None
        time.sleep(poll_interval)


def report(engine: Engine, run_id: int) -> dict[str, Any]:
    """The run as ``--json`` prints it (the same shape for migrate and status)."""
    with db.connect(engine) as connection:
        run = runs.get_run(connection, run_id)
        tally = runs.counts(connection, run_id)
        tenants = runs.tenants_of(connection, run_id)
    return {
        "run_id": run.id,
        "status": run.status,
        "target_revision": run.target_revision,
        "counts": {
            "total": tally.total,
            "succeeded": tally.succeeded,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "pending": tally.pending,
            "up_to_date": run.up_to_date,
        },
        "tenants": [
            {
                "schema": t.schema_name,
                "status": t.status,
                "from_revision": t.from_revision,
                "to_revision": t.to_revision,
                "error": f"{t.error_class}: {t.error_message}" if t.error_class else None,
                "attempts": t.attempts,
                "duration_ms": t.duration_ms,
            }
            for t in tenants
        ],
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
