"""The operator's commands that change a run: ``migrate`` (start), ``retry``, ``resume``,
``continue``, ``cancel`` and ``rollback``. Each checks what the run's state allows
(``states.refusal``), then plans (``planning``), gates (``gate``), records and sends
(``dispatch``) through the layers below; the run tables are written by ``runs`` alone.

The Alembic layer (``alembic_runtime``, ``lint``, ``gate``) is imported by the functions
that use it: importing this module loads no Alembic, which the read-only commands never need
(docs/ARCHITECTURE.md).
"""

import contextlib
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass

from tenantfleet import (
    databases,
    db,
    dispatch,
    follow,
    guard,
    ledger,
    locks,
    planning,
    runs,
    states,
    versions,
)
from tenantfleet.databases import Placed
from tenantfleet.dispatch import Rollback
from tenantfleet.errors import RunActive, UsageError
from tenantfleet.follow import Say, quiet
from tenantfleet.manager import MigrationManager
from tenantfleet.names import shorten, validate_schema_name
from tenantfleet.planning import MigrateOptions, Plan


def start(
    manager: MigrationManager,
    options: MigrateOptions,
    say: Say = quiet,
    watch: follow.Watch | None = None,
) -> int:
    """Upgrade public, plan, lint, record the run (one at a time), send its tasks; the run id.

    With waves (``--canary`` is two), each wave is sent and followed (``watch``: timeout,
    watchdog) before the next. While it records and sends, the producer holds the run's
    dispatch lock, so a run whose producer died before sending everything is seen abandoned
    at once (``guard``) instead of blocking every deploy until it goes stale.
    """
    planning.check(options)
    if options.wait_for_active:
        planning.validate(options)  # a bad revision is refused before the wait, not after it
    watch = watch or follow.Watch()
    while True:
        if options.wait_for_active:
            wait_for_no_active_run(manager, say, watch)
        if options.upgrade_public and not manager.public_at_head():
            planning.validate(options)  # before anything is written
            manager.upgrade_public()
        # the target is resolved while the plan reads the fleet (Alembic's import under it)
        chosen = planning.plan(manager, options, warm_up=dispatch.prepare_sending)
        manager.close_sessions()  # they read every schema: not kept while the run goes
        if chosen.behind:
            from tenantfleet import gate

            gate.gate(manager, chosen, options.allow)
        try:
            return dispatch.launch(manager, chosen, options, say, watch)
        except RunActive:
            if not options.wait_for_active:
                raise


def wait_for_no_active_run(manager: MigrationManager, say: Say, watch: follow.Watch) -> None:
    """Wait until no run is active, rechecking staleness on every look; ``StoppedFollowing``
    at the watch's timeout."""
    said: set[int] = set()
    while True:
        with db.begin(manager.engine) as connection:
            active = guard.active_run(connection, manager.settings.stale_run_after)
        if active is None:
            return
        if active.run.id not in said:
            said.add(active.run.id)
            say(f"waiting for run {active.run.id} to finish")
        if watch.expired():
            raise follow.StoppedFollowing(
                f"--timeout reached while waiting for run {active.run.id} to finish"
            )
        time.sleep(max(manager.settings.poll_interval, 0.5))


def retry(
    manager: MigrationManager,
    run_id: int,
    tenants: Sequence[str] = (),
    *,
    wait_for_active: bool = False,
    say: Say = quiet,
    watch: follow.Watch | None = None,
) -> int | None:
    """A new run, linked to ``run_id``, for its tenants that failed, were skipped or never
    finished (narrowed to ``tenants`` if given); None when there is nothing to retry. The run's
    failed backfills go on from where they stopped, in the run they belong to."""
    for name in tenants:
        validate_schema_name(name)
    with db.connect(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        candidates = [t.schema_name for t in runs.tenants_of(connection, run_id, states.RETRYABLE)]
        stopped = [
            e
            for e in ledger.of_run(connection, run_id)
            if e.status == states.BackfillState.FAILED and (not tenants or e.schema_name in tenants)
        ]
        moves = runs.moves(connection, run_id) if stopped else {}
    if stopped:
        dispatch.send_backfills(
            manager, run, [(databases.label(e.database, e.schema_name), *moves[e.schema_name])
                           for e in stopped]
        )  # fmt: skip
        say(f"run {run_id}: {len(stopped)} failed backfills go on from where they stopped")
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
        allow=run.options.get("allow", []),
    )
    return start(manager, options, say, watch)


def resume(
    manager: MigrationManager,
    run_id: int,
    say: Say = quiet,
    watch: follow.Watch | None = None,
) -> int:
    """Send again the pending tenants of an open run whose schema lock nobody holds; how many
    were sent. A closed run has nothing to resume (0); a held one is refused (``continue``
    sends its next wave)."""
    return _resend(manager, run_id, say, watch or follow.Watch(), "resume")


def _resend(
    manager: MigrationManager, run_id: int, say: Say, watch: follow.Watch, command: str
) -> int:
    """``resume`` or (``command`` "continue") the producer's part of ``continue`` when the
    run's own producer is gone: send its pending tenants nobody holds, then its next waves."""
    with db.begin(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        closed = runs.finalize(connection, run_id) is not None
    if closed:  # its tenants are final; backfills a dead worker left go on
        return dispatch.resend_lost_backfills(manager, run)
    with db.begin(manager.engine) as connection:
        refused = states.refusal(command, run.status, run_id, run.wave)
        if refused is not None:
            raise UsageError(refused)
        pending = runs.tenants_of(connection, run_id, runs.PENDING)
        busy = locks.held(connection, [t.label for t in pending])
    dispatch.check_broker(dispatch.app())
    with db.connect(manager.engine) as holder:
        if not locks.hold(holder, locks.dispatching(run.uid)):
            raise RunActive(f"run {run_id} is being sent by its producer ({run.producer})")
        idle = [t.schema_name for t in pending if t.label not in busy]
        return dispatch.send(manager, run_id, idle, say, watch, leave_at_hold=True)


@dataclass(frozen=True)
class RollbackPlan:
    """What ``rollback`` of a run would do: its plan (each tenant from where the run left it
    to where it came from), the targets, and the tables its downgrades drop."""

    plan: Plan
    rollback: Rollback
    drops: list[str]
    """Tables (``table`` or ``schema-less revision SQL`` names) the downgrades drop: data that
    goes with them in every tenant rolled back."""


def plan_rollback(manager: MigrationManager, run_id: int, options: MigrateOptions) -> RollbackPlan:
    """Plan the rollback of ``run_id``; nothing is written. Refused, before anything changes,
    when the run is open or is itself a rollback, or a revision to undo has no
    ``downgrade()``; a tenant that has moved since (or whose database cannot be reached) is
    planned ``skipped``, not touched."""
    planning.validate(options)
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        run = runs.get_run(connection, run_id)
        done = runs.tenants_of(connection, run_id, ["succeeded"])
    refused = states.refusal("rollback", run.status, run_id)
    if refused is not None:
        raise UsageError(refused)
    if run.options.get("rollback_of"):
        raise UsageError(f"run {run_id} is itself a rollback: migrate forward again instead")
    if not done:
        raise UsageError(f"run {run_id} upgraded no tenant: nothing to roll back")
    _refuse_without_downgrades(run_id, {(t.from_revision, t.to_revision) for t in done})
    read = databases.read_versions(
        manager.engine_for, [Placed(t.schema_name, t.database) for t in done]
    )
    behind: list[tuple[str, str | None]] = []
    moved: list[tuple[str, str | None, str, str]] = []
    for tenant in done:
        schema = tenant.schema_name
        now = read.found.get(schema, tenant.to_revision)
        if tenant.database in read.unreachable:
            where = databases.shown(tenant.database)
            reason = f"database {where} could not be reached: not touched"
            moved.append((schema, None, "DatabaseUnreachable", reason))
        elif schema not in read.found or now != tenant.to_revision:
            found = "gone" if schema not in read.found else f"at {now or 'base'}"
            reason = (
                f"{found} now, not at {tenant.to_revision} where run {run_id} left it: not touched"
            )
            moved.append((schema, now, runs.MOVED_SINCE, reason))
        else:
            behind.append((schema, now))
    targets = {t.schema_name: t.from_revision or versions.BASE for t in done}
    common = sorted(set(targets.values()))
    chosen = Plan(
        common[0] if len(common) == 1 else "(each its own)",
        behind,
        not_migratable=moved,
        placement={t.schema_name: t.database for t in done if t.database is not None},
    )
    spans = {(now, targets[schema]) for schema, now in behind if now is not None}
    return RollbackPlan(chosen, Rollback(run_id, targets), _dropped_tables(spans))


def _dropped_tables(spans: set[tuple[str, str]]) -> list[str]:
    """The tables the downgrades of ``spans`` (from, to) drop, read from their SQL (Alembic's
    offline mode, PostgreSQL's parser); a span that cannot be rendered is said so."""
    from tenantfleet import alembic_runtime, lint, sqltree

    dropped: set[str] = set()
    for current, target in sorted(spans):
        try:
            sql = alembic_runtime.render_downgrade_sql(lint.PROBE, current, target)
            statements = lint.statements_of(sql)
        except (alembic_runtime.NotRendered, sqltree.ParseError):
            dropped.add(f"(unknown: {current} -> {target} cannot be rendered offline)")
            continue
        for statement in statements:
            tree = statement.tree
            if statement.kind == "DropStmt" and tree["removeType"]["name"] == "OBJECT_TABLE":
                dropped.update(sqltree.names(obj)[-1] for obj in tree.get("objects") or [])
    return sorted(dropped)


def rollback(
    manager: MigrationManager,
    planned: RollbackPlan,
    options: MigrateOptions,
    say: Say = quiet,
    watch: follow.Watch | None = None,
) -> int:
    """Launch the rollback ``plan_rollback`` planned: a new run, linked to the run rolled back,
    that downgrades every tenant of the plan to the revision it came from, one transaction per
    tenant, with the same locks, retries, records, waves and failure budget as ``migrate``.
    The new run's id."""
    run_id = planned.rollback.run_id
    rolled = dataclasses.replace(options, parent_run_id=run_id)
    return dispatch.launch(
        manager, planned.plan, rolled, say, watch or follow.Watch(), planned.rollback
    )


def _refuse_without_downgrades(run_id: int, spans: set[tuple[str | None, str]]) -> None:
    """``UsageError`` naming the revisions to undo whose ``downgrade()`` is missing or empty."""
    from alembic.script.revision import RevisionError
    from alembic.util import CommandError

    from tenantfleet import alembic_runtime, lint

    script = alembic_runtime.tenant_script()
    lacking: set[str] = set()
    for start, end in spans:
        try:
            span = lint.pending_revisions(script, [start], end)
        except (RevisionError, CommandError):
            raise UsageError(
                f"run {run_id} cannot be rolled back: it recorded a move from"
                f" {start or 'base'} to {end}, which is not an upgrade; nothing was changed"
            ) from None
        for rev in span:
            if lint.downgrade_findings(rev):
                lacking.add(rev.revision)
    if lacking:
        raise UsageError(
            f"run {run_id} cannot be rolled back: no downgrade() in {shorten(sorted(lacking))};"
            " nothing was changed"
        )


def continue_run(
    manager: MigrationManager, run_id: int, say: Say = quiet, watch: follow.Watch | None = None
) -> int:
    """Let a run held between waves go on (``--wave-hold``); the wave it goes on after. Its
    producer sends the next wave; when that producer is gone, this command does, follows that
    wave (``watch``: its ``--timeout``) and leaves the run held at the next hold."""
    with db.begin(manager.engine) as connection:
        manager.require_public(connection)
        wave = runs.continue_run(connection, run_id)
    with contextlib.suppress(RunActive):  # its producer is alive: it sends the next wave
        _resend(manager, run_id, say, watch or follow.Watch(), "continue")
    return wave


def cancel(manager: MigrationManager, run_id: int, reason: str) -> tuple[int, runs.Run | None]:
    """Stop an open run: its tenants not started are recorded ``cancelled`` and never touched;
    those in flight finish, and the run closes (``cancelled``) when the last has. (how many were
    cancelled, the run if it closed at once)."""
    with db.begin(manager.engine) as connection:
        manager.require_public(connection)
        cancelled = runs.cancel(connection, run_id, reason)
        return cancelled, runs.finalize(connection, run_id)
