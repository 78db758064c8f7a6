"""The producer behind ``migrate``, ``retry`` and ``resume``: plan, record, enqueue, follow.

Order matters for "nothing lost": the run and one row per tenant are committed before the first
task is sent, so whatever happens to the broker afterwards, the run tables know every tenant.
"""

import io
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alembic import command
from sqlalchemy.engine import Engine

from migrations.migrate import MigrationManager
from tenantfleet import alembic_runtime, db, guard, locks, registry, runs
from tenantfleet.errors import ConnectionFailed, RunActive, TenantStateError, UsageError
from tenantfleet.names import shorten, validate_schema_name

FINALIZE_GRACE_SECONDS = 3.0
BROKER_CONNECT_TIMEOUT_S = 5.0
RETRYABLE = ("failed", "skipped", *runs.PENDING)

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default ``say``: the library prints nothing; the CLI passes its own."""


@dataclass(frozen=True)
class MigrateOptions:
    revision: str = "head"
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    upgrade_public: bool = True
    canary: int = 0
    canary_tenants: Sequence[str] = ()
    max_failures: int | None = None
    wait_for_active: bool = False
    parent_run_id: int | None = None


@dataclass(frozen=True)
class Plan:
    """Which selected tenants are behind the target, and from where."""

    target: str
    behind: list[tuple[str, str | None]]
    up_to_date: list[str] = field(default_factory=list)


def validate(options: MigrateOptions) -> str:
    """Check the request before anything is touched; the resolved target revision."""
    for name in [*options.include, *options.exclude, *options.canary_tenants]:
        validate_schema_name(name)
    if options.canary < 0 or (options.max_failures is not None and options.max_failures < 1):
        raise UsageError("--canary must be at least 0 and --max-failures at least 1")
    target = alembic_runtime.resolve_revision(alembic_runtime.tenant_script(), options.revision)
    if target is None:
        raise UsageError("migrate only upgrades; use `tenantfleet tenant downgrade` for base")
    return target


def plan(manager: MigrationManager, options: MigrateOptions, *, dry_run: bool = False) -> Plan:
    """Select the active tenants and read every schema's revision in one pass."""
    script = alembic_runtime.tenant_script()
    target = validate(options)
    with db.connect(manager.engine) as connection:
        if dry_run:
            manager.require_registry(connection)
        else:
            manager.require_public(connection)
        schemas = registry.select_for_migration(connection, options.include, options.exclude)
        versions = alembic_runtime.read_versions(connection, schemas)
    missing = [s for s in schemas if s not in versions]
    if missing:
        raise TenantStateError(
            f"registered but without a schema: {shorten(missing)} (fix the registry or --exclude)"
        )
    known = {r.revision for r in script.walk_revisions()} | {None}
    unknown = [s for s in schemas if versions[s] not in known]
    if unknown:
        raise TenantStateError(
            f"at a revision the migration scripts do not know: {shorten(unknown)}"
            f" ({versions[unknown[0]]!r} in {unknown[0]!r}); --exclude them or fix alembic_version"
        )
    below = alembic_runtime.revisions_below(script, target)
    behind = [(s, versions[s]) for s in schemas if versions[s] in below]
    at_or_past = [s for s in schemas if versions[s] not in below]
    return Plan(target, behind, at_or_past)


def choose_canaries(chosen: Plan, options: MigrateOptions) -> list[str]:
    """The first ``--canary`` behind tenants by schema name, or the ``--canary-tenant`` ones."""
    behind = [schema for schema, _ in chosen.behind]
    if options.canary_tenants:
        not_behind = [s for s in options.canary_tenants if s not in behind]
        if not_behind:
            raise UsageError(f"canary tenant not selected or not behind: {shorten(not_behind)}")
        return list(dict.fromkeys(options.canary_tenants))
    return behind[: options.canary]


def start(manager: MigrationManager, options: MigrateOptions, say: Say = _quiet) -> int:
    """Upgrade public, plan, record the run (one at a time), enqueue; the run id."""
    validate(options)
    while True:
        if options.wait_for_active:
            wait_for_no_active_run(manager, say)
        if options.upgrade_public:
            manager.upgrade_public()
        chosen = plan(manager, options)
        canaries = choose_canaries(chosen, options)
        if chosen.behind:
            check_broker(_app())
        try:
            run_id = _record(manager, chosen, options, canaries)
        except RunActive:
            if not options.wait_for_active:
                raise
            continue
        break
    if chosen.behind:
        dispatch(manager, run_id, say, fresh=True)
    return run_id


def _record(
    manager: MigrationManager, chosen: Plan, options: MigrateOptions, canaries: list[str]
) -> int:
    """Write the run under the producers' lock, unless another run is active."""
    with db.begin(manager.engine) as connection:
        locks.lock_name(connection, locks.PRODUCER)
        active = guard.active_run(connection, manager.settings.stale_run_after)
        if active is not None:
            raise RunActive(
                f"run {active.run.id} is active ({active.tally.done}/{active.tally.total} done,"
                f" target {active.run.target_revision}): wait for it, or pass --wait-for-active"
            )
        return runs.create_run(
            connection,
            chosen.target,
            chosen.behind,
            up_to_date=len(chosen.up_to_date),
            options={
                "revision": options.revision,
                "include": list(options.include),
                "exclude": list(options.exclude),
                "canaries": canaries,
                "max_failures": options.max_failures,
            },
            producer=f"{socket.gethostname()}:{os.getpid()}",
            parent_run_id=options.parent_run_id,
        )


def dispatch(
    manager: MigrationManager,
    run_id: int,
    say: Say = _quiet,
    *,
    fresh: bool,
    include_queued: bool = True,
) -> int:
    """Enqueue the run's pending tenants that no live task is migrating; how many were sent.

    Canaries go first and the others only if every canary succeeded; otherwise the others are
    recorded as skipped and the run is closed. ``fresh`` (a run just written) skips the lock
    check, as no task can exist yet; without ``include_queued`` only ``running`` tenants whose
    schema lock nobody holds (their worker died) are sent again.
    """
    engine = manager.engine
    states = runs.PENDING if include_queued else ("running",)
    with db.connect(engine) as connection:
        run = runs.get_run(connection, run_id)
        pending = [t.schema_name for t in runs.tenants_of(connection, run_id, states)]
        busy = set() if fresh else locks.held(connection, pending)
    canaries = [c for c in run.options.get("canaries", []) if c in pending]
    max_failures = run.options.get("max_failures")
    app = _app()
    check_broker(app)
    sent = 0
    if canaries:
        to_send = [c for c in canaries if c not in busy]
        enqueue(app, run_id, run.target_revision, to_send, max_failures)
        sent += len(to_send)
        say(f"run {run_id}: waiting for {len(canaries)} canary tenants")
        outcome = wait_for_tenants(engine, run_id, canaries, manager.settings.poll_interval)
        failed = [c for c in canaries if outcome[c] != "succeeded"]
        if failed:
            with db.begin(engine) as connection:
                skipped = runs.skip_pending(
                    connection, run_id, f"skipped: canary {shorten(failed)} did not succeed"
                )
                runs.finalize(connection, run_id)
            say(f"run {run_id}: canary {shorten(failed)} failed; {skipped} tenants skipped")
            return sent
    rest = [s for s in pending if s not in canaries and s not in busy]
    enqueue(app, run_id, run.target_revision, rest, max_failures)
    return sent + len(rest)


def wait_for_tenants(
    engine: Engine, run_id: int, schemas: Sequence[str], poll_interval: float
) -> dict[str, str]:
    """Block until every one of ``schemas`` is final in the run; their statuses."""
    while True:
        with db.connect(engine) as connection:
            states = runs.statuses(connection, run_id, schemas)
        if all(state in runs.FINAL for state in states.values()):
            return states
        time.sleep(poll_interval)


def wait_for_no_active_run(manager: MigrationManager, say: Say) -> None:
    while True:
        with db.begin(manager.engine) as connection:
            active = guard.active_run(connection, manager.settings.stale_run_after)
        if active is None:
            return
        say(f"waiting for run {active.run.id} to finish")
        wait(manager.engine, active.run.id, poll_interval=manager.settings.poll_interval)


def retry(
    manager: MigrationManager,
    run_id: int,
    tenants: Sequence[str] = (),
    *,
    wait_for_active: bool = False,
    say: Say = _quiet,
) -> int | None:
    """A new run, linked to ``run_id``, for its tenants that failed, were skipped or never
    finished (narrowed to ``tenants`` if given); None when there is nothing to retry."""
    for name in tenants:
        validate_schema_name(name)
    with db.connect(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        candidates = [t.schema_name for t in runs.tenants_of(connection, run_id, RETRYABLE)]
    if tenants:
        strangers = [t for t in tenants if t not in candidates]
        if strangers:
            raise UsageError(
                f"not failed, skipped or unfinished in run {run_id}: {shorten(strangers)}"
            )
        candidates = [c for c in candidates if c in tenants]
    if not candidates:
        return None
    options = MigrateOptions(
        revision=run.target_revision,
        include=candidates,
        max_failures=run.options.get("max_failures"),
        wait_for_active=wait_for_active,
        parent_run_id=run_id,
    )
    return start(manager, options, say)


def resume(
    manager: MigrationManager, run_id: int, say: Say = _quiet, *, include_queued: bool = True
) -> int:
    """Finish an open run whose tasks were lost; how many tenants were enqueued again."""
    with db.begin(manager.engine) as connection:
        if runs.finalize(connection, run_id) is not None:
            return 0
    return dispatch(manager, run_id, say, fresh=False, include_queued=include_queued)


def resume_stalled(manager: MigrationManager, run_id: int) -> int:
    """What ``--wait`` does when no tenant finished for a while: send again the tenants whose
    worker died (running, lock free), and the queued ones too if the broker holds no tenant
    task at all (it lost them). A healthy but slow queue is left alone."""
    backlog = broker_backlog(_app())
    return resume(manager, run_id, include_queued=backlog == 0)


def broker_backlog(app: Any) -> int | None:
    """Tenant tasks the broker holds (queued or delivered, unacked); None if it cannot tell."""
    from tenantfleet.config import TENANT_QUEUE

    try:
        with app.connection_for_write() as connection:
            client = connection.default_channel.client
            return int(client.llen(TENANT_QUEUE)) + int(client.hlen("unacked"))
    except Exception:
        return None


def dry_run_sql(schema: str, from_revision: str | None, target: str) -> str:
    """The SQL one tenant's upgrade would run (Alembic offline mode); nothing is touched."""
    buffer = io.StringIO()
    cfg = alembic_runtime.tenant_config(schema)
    cfg.output_buffer = buffer
    span = f"{from_revision}:{target}" if from_revision else target
    command.upgrade(cfg, span, sql=True)
    return buffer.getvalue()


def _app() -> Any:
    from workers import app

    return app


def check_broker(app: Any) -> None:
    """Fail fast, before anything is written, when the broker cannot be reached."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise ConnectionFailed(f"cannot connect to the broker: {exc}") from None


PUBLISH_BATCH = 100  # small enough that workers start on the first messages at once


def enqueue(
    app: Any, run_id: int, target: str, schemas: Sequence[str], max_failures: int | None = None
) -> None:
    """``chord(group(one task per tenant), finalize_run)``, ``finalize_run_on_error`` on error."""
    if not schemas:
        return
    from celery import chord, group

    from tasks.finalize import finalize_run, finalize_run_on_error
    from tasks.tenant import migrate_tenant

    extra = {"max_failures": max_failures} if max_failures else {}
    body = finalize_run.s(run_id=run_id)
    body.link_error(finalize_run_on_error.s(run_id=run_id))
    # No time limits in the message: the worker's TENANTFLEET_TASK_TIME_LIMIT decides (Celery
    # would otherwise send the producer's setting with every task, and it would win).
    header = group(
        migrate_tenant.si(run_id, schema, target, **extra).set(
            time_limit=None, soft_time_limit=None
        )
        for schema in schemas
    )
    with app.batched_publishing(PUBLISH_BATCH):
        chord(header, body).apply_async()


ProgressCallback = Callable[[runs.Counts, float], None]
DATABASE_OUTAGE_LIMIT_S = 120.0


def wait(
    engine: Engine,
    run_id: int,
    *,
    timeout: float | None = None,
    poll_interval: float = 0.1,
    on_progress: ProgressCallback | None = None,
    started: float | None = None,
    on_stall: Callable[[], None] | None = None,
    stall_after: float = 0.0,
) -> runs.Run | None:
    """Follow the run through the run tables until it is closed; None on ``timeout``.

    The chord callback closes the run; if every tenant is final and it still has not, after
    a grace period, the producer closes it itself (the chord state may have been lost). When no
    tenant has finished for ``stall_after`` seconds, ``on_stall`` is called (``resume``: the
    broker may have lost the tasks). A database outage is waited out for up to two minutes.
    ``started`` (a ``time.monotonic()`` value) is when the command began, for rates and timeout.
    """
    started = time.monotonic() if started is None else started
    settled_at: float | None = None
    last_done, last_change = -1, time.monotonic()
    outage_since: float | None = None
    while True:
        try:
            with db.connect(engine) as connection:
                run = runs.get_run(connection, run_id)
                tally = runs.counts(connection, run_id)
            outage_since = None
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            outage_since = outage_since or time.monotonic()
            if time.monotonic() - outage_since > DATABASE_OUTAGE_LIMIT_S:
                raise
            time.sleep(poll_interval)
            continue
        now = time.monotonic()
        elapsed = now - started
        if on_progress is not None:
            on_progress(tally, elapsed)
        if run.finished_at is not None:
            return run
        if tally.done != last_done:
            last_done, last_change = tally.done, now
        elif on_stall is not None and stall_after > 0 and now - last_change >= stall_after:
            on_stall()
            last_change = now
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


def report(engine: Engine, run_id: int, *, slowest: int = 0) -> dict[str, Any]:
    """The run as ``--json`` prints it (the same shape for migrate, retry, resume and status)."""
    with db.connect(engine) as connection:
        run = runs.get_run(connection, run_id)
        tally = runs.counts(connection, run_id)
        tenants = runs.tenants_of(connection, run_id)
        slow = runs.slowest(connection, run_id, slowest) if slowest else []
    result: dict[str, Any] = {
        "run_id": run.id,
        "parent_run_id": run.parent_run_id,
        "status": run.status,
        "target_revision": run.target_revision,
        "counts": {
            "total": tally.total,
            "succeeded": tally.succeeded,
            "failed": tally.failed,
            "skipped": tally.skipped,
            "pending": tally.pending,
            "up_to_date": run.up_to_date,
            "queued": tally.queued,
            "running": tally.running,
            "retrying": tally.retrying,
        },
        "tenants": [_tenant_dict(t) for t in tenants],
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
    if slowest:
        result["slowest"] = [_tenant_dict(t) for t in slow]
    return result


def _tenant_dict(tenant: runs.RunTenant) -> dict[str, Any]:
    return {
        "schema": tenant.schema_name,
        "status": tenant.status,
        "from_revision": tenant.from_revision,
        "to_revision": tenant.to_revision,
        "error": f"{tenant.error_class}: {tenant.error_message}" if tenant.error_class else None,
        "attempts": tenant.attempts,
        "duration_ms": tenant.duration_ms,
        "worker": tenant.worker,
    }
