"""The commands layer: one plain function per user command, returning data, as Alembic's
``command.py`` (the CLI parses arguments, calls one of these and prints what comes back).

Every database session a command needs is opened below this layer or here, never in the CLI,
and each command's exit code is decided here from the run's state (``states.RUN_OK``), not from
status strings in the CLI.

The Alembic layer (``alembic_runtime``, ``lint``, ``gate``) is imported by the functions
that use it: importing this module loads no Alembic, which the read-only commands never need
(docs/ARCHITECTURE.md).
"""

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tenantfleet import (
    db,
    dispatch,
    follow,
    guard,
    metrics,
    planning,
    producer,
    report,
    runs,
    states,
    survey,
    versions,
    views,
)
from tenantfleet.errors import EXIT_OK, EXIT_TENANT_FAILURES, EXIT_TIMEOUT, RunActive
from tenantfleet.follow import Say
from tenantfleet.manager import MigrationManager
from tenantfleet.planning import MigrateOptions, Plan

if TYPE_CHECKING:
    from tenantfleet import lint


def run_exit_code(status: str) -> int:
    """0 for a run that closed as ``states.RUN_OK``, else 1."""
    return EXIT_OK if status in states.RUN_OK else EXIT_TENANT_FAILURES


def watch(
    manager: MigrationManager, timeout: float | None, say: Say = follow.quiet
) -> follow.Watch:
    """How a command follows its run: from now, with its timeout, saying things through
    ``say``, sending again the tenants that lost their task when nothing moves."""
    quiet_for = manager.settings.stall_resume

    def resend_lost_tasks(run_id: int) -> None:
        sent = dispatch.resend_lost(manager, run_id, quiet_for)
        if sent:
            say(
                f"\nno tenant finished for {quiet_for:g} s:"
                f" {sent} tenants with no live task sent again"
            )

    return follow.Watch(
        timeout=timeout,
        poll_interval=manager.settings.poll_interval,
        stall_after=quiet_for,
        on_stall=resend_lost_tasks,
        say=say,
    )


@dataclass(frozen=True)
class DryRun:
    plan: Plan
    waves: list[list[str]]
    sql: str
    """The first behind tenant's upgrade as SQL (``--sql``), else empty."""
    replay: dict[str, list[str]]
    """Which pending revisions the workers would replay, which they would run online."""
    refused_by: str | None
    """Why ``migrate`` would be refused right now (another run is active), if it would."""


def dry_run(manager: MigrationManager, options: MigrateOptions, *, sql: bool) -> DryRun:
    """What ``migrate`` would do; nothing is written."""
    chosen = planning.plan(manager, options, dry_run=True)
    statement = ""
    if sql and chosen.behind:
        schema, from_revision = chosen.behind[0]
        statement = planning.dry_run_sql(schema, from_revision, chosen.target)
    replay = planning.replay_paths(chosen)
    refused_by = None
    with db.begin(manager.engine) as connection:
        at_head = versions.public_revision(connection) == versions.public_head()
        if at_head:  # the run tables are there
            try:
                guard.refuse_if_active(connection, manager.settings.stale_run_after)
            except RunActive as exc:
                refused_by = str(exc)
    return DryRun(chosen, planning.choose_waves(chosen, options), statement, replay, refused_by)


def lint_revisions(
    manager: MigrationManager, options: MigrateOptions, allow: Sequence[str]
) -> tuple["lint.Findings", int]:
    """The lint gate's findings for what ``migrate`` would run, and the exit code (2 when a
    finding blocks)."""
    from tenantfleet import gate

    chosen = planning.plan(manager, options, dry_run=True)
    found = gate.lint_plan(manager, chosen, allow)
    return found, 2 if found.blocking else EXIT_OK


migrate = producer.start
retry = producer.retry
plan_rollback = producer.plan_rollback
rollback = producer.rollback
continue_run = producer.continue_run


@dataclass(frozen=True)
class Followed:
    """A run as a command leaves it: its view, whether it closed, the exit code."""

    view: dict[str, Any]
    closed: bool
    timed_out: bool
    exit_code: int


def follow_run(
    manager: MigrationManager,
    run_id: int,
    the_watch: follow.Watch,
    *,
    wait: bool,
    on_progress: follow.ProgressCallback | None = None,
    listed: Sequence[str] | None = None,
) -> Followed:
    """Without ``wait``: the run as it is (exit 0 while it is open). With it: followed until
    it closes (exit by its status) or the watch's timeout (exit 3, the run goes on). ``listed``:
    the states of the tenants the view lists (``views.run_view``; None: every tenant)."""

    def view_of() -> dict[str, Any]:
        return views.run_view(manager.engine, run_id, listed=listed)

    if not wait:
        view = follow.patiently(the_watch, view_of)
        closed = view["finished_at"] is not None
        code = run_exit_code(view["status"]) if closed else EXIT_OK
        return Followed(view, closed, False, code)
    the_watch.on_progress = on_progress
    run = follow.until_closed(manager.engine, run_id, the_watch)
    view = follow.patiently(the_watch, view_of)
    if on_progress is not None:  # the last line shows the final count, not the one before
        final = {k: v for k, v in view["counts"].items() if k in runs.Counts.__dataclass_fields__}
        on_progress(runs.Counts(**final), the_watch.elapsed())
    if run is None:
        return Followed(view, False, True, EXIT_TIMEOUT)
    return Followed(view, True, False, run_exit_code(run.status))


@dataclass(frozen=True)
class Resumed:
    before: runs.Run
    """The run as it was before (closed: nothing was resumed)."""
    sent: int


def resume(manager: MigrationManager, run_id: int, the_watch: follow.Watch) -> Resumed:
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        before = runs.get_run(connection, run_id)
    return Resumed(before, producer.resume(manager, run_id, the_watch.say, the_watch))


def cancel(manager: MigrationManager, run_id: int, reason: str) -> tuple[dict[str, Any], bool]:
    """Cancel the run: its view (with ``cancelled_now``), and whether it closed at once."""
    cancelled, closed = producer.cancel(manager, run_id, reason)
    view = views.run_view(manager.engine, run_id)
    view["cancelled_now"] = cancelled
    return view, closed is not None


def status(
    manager: MigrationManager,
    run_id: int | None,
    tenant: str | None,
    listed: Sequence[str] | None = None,
) -> tuple[dict[str, Any], int]:
    """A run's view (the latest run's without ``run_id``), with, while it is open, whether it
    is alive or held, its workers, why tenants wait and who blocks them; and the exit code: by
    its status once closed, 3 while it is alive or held, 1 when it was abandoned."""
    with db.begin(manager.engine) as connection:
        manager.require_public(connection)
        run_id = run_id if run_id is not None else runs.latest_run_id(connection)
        runs.finalize(connection, run_id)
        open_runs = guard.open_runs(connection, manager.settings.stale_run_after)
        state = next((o for o in open_runs if o.run.id == run_id), None)
    with ThreadPoolExecutor(max_workers=1) as asking:
        # The workers' answers take up to follow.INSPECT_TIMEOUT_S (nobody knows how many will
        # answer): asked while the run tables are read, not after.
        workers = None if state is None else asking.submit(_workers_of, manager, state)
        view = views.run_view(manager.engine, run_id, slowest=5, listed=listed)
        if tenant is not None:
            view["attempts"] = views.attempts(manager, run_id, tenant)
        if state is None or workers is None:
            return view, run_exit_code(view["status"])
        view["alive"] = state.alive
        view["held"] = state.held
        view["idle_seconds"] = round(state.idle_seconds, 1)
        blocked = views.blocked(manager, run_id)
        view["workers"], view["waiting_for"] = workers.result()
        view["blocked"] = blocked
    return view, EXIT_TIMEOUT if state.alive else EXIT_TENANT_FAILURES


def _workers_of(manager: MigrationManager, state: guard.OpenRun) -> tuple[list[str], str | None]:
    """The workers consuming the run's database queue, and why its tenants would wait. While
    the run is alive, the workers running its tenants are asked first (they answer at once;
    asking everyone waits out a timeout)."""
    working: list[str] = []
    if state.alive:
        with db.connect(manager.engine) as connection:
            working = runs.working_on(connection, state.run.id)
    return follow.waiting_for(
        dispatch.app(), dispatch.queues_of(manager), state.run.target_revision, working
    )


def recent_runs(
    manager: MigrationManager, limit: int
) -> tuple[list[runs.Run], dict[int, dict[str | None, runs.Counts]]]:
    """The latest ``limit`` runs and each one's tenant counts by database."""
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        recent = runs.list_runs(connection, limit)
        return recent, runs.counts_by_run_and_database(connection, [r.id for r in recent])


def report_page(manager: MigrationManager, run_id: int | None, now: datetime) -> tuple[int, str]:
    """(the run id, its HTML report page)."""
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        run_id = run_id if run_id is not None else runs.latest_run_id(connection)
        attempts = runs.attempts_of_run(connection, run_id)
    data = report.RunData(views.run_view(manager.engine, run_id, listed=report.LISTED), attempts)
    return run_id, report.page(data, now)


def metrics_reader(manager: MigrationManager) -> Callable[[], list[metrics.Sample]]:
    """What ``tenantfleet metrics`` exposes, read anew at every call."""
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)

    def blocked(run_id: int) -> list[str]:
        return [b["database"] for b in views.blocked(manager, run_id)]

    def read() -> list[metrics.Sample]:
        with db.connect(manager.engine) as connection:
            return metrics.run_samples(connection, blocked)

    return read


def fleet_survey(manager: MigrationManager, verify: bool = False) -> survey.Survey:
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        return survey.survey(connection, manager.settings, manager.engine_for, verify)
