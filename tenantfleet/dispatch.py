"""Recording a run and sending its tasks, wave after wave.

Order matters for "nothing lost": the run and one row per tenant are committed before the first
task is sent, so whatever happens to the broker afterwards, the run tables know every tenant.
Each task carries the revision the plan saw its tenant at: a worker moves the schema only from
there. Between waves the run is held in the database (``runs.hold``); ``send`` goes on when the
wave ended within its budget and (``--wave-hold``) an operator said ``continue``.
"""

import contextlib
import functools
import importlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine

from tenantfleet import databases, db, follow, guard, ledger, locks, retries, runs, states, tracing
from tenantfleet.config import Settings
from tenantfleet.errors import ConnectionFailed
from tenantfleet.follow import Say
from tenantfleet.manager import MigrationManager
from tenantfleet.names import shorten
from tenantfleet.planning import MigrateOptions, Plan, choose_canaries, choose_waves, replay_paths
from tenantfleet.queues import Queues, of_database

BROKER_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Rollback:
    """A run that brings the tenants another run upgraded back where each came from."""

    run_id: int
    """The run rolled back."""
    targets: dict[str, str]
    """Each tenant's revision before that run (``base``: it had none)."""


def launch(
    manager: MigrationManager,
    chosen: Plan,
    options: MigrateOptions,
    say: Say,
    watch: follow.Watch,
    rollback: "Rollback | None" = None,
) -> int:
    """Record the run of ``chosen`` and send it, holding its dispatch lock; the run id."""
    canaries = choose_canaries(chosen, options)
    waves = choose_waves(chosen, options)
    if chosen.behind:
        check_broker(app())
    uid = str(uuid.uuid4())
    with (
        tracing.run_span(
            manager.settings.tracing,
            "tenantfleet.run",
            **{
                "tenantfleet.run_uid": uid,
                "tenantfleet.to_revision": chosen.target,
                "tenantfleet.tenants": len(chosen.behind),
            },
        ),
        db.connect(manager.engine) as holder,
    ):
        locks.hold(holder, locks.dispatching(uid))  # a new uid: always free
        run_id = _record(manager, chosen, options, canaries, waves, uid, rollback)
        if chosen.behind:
            with db.begin(manager.engine) as connection:
                runs.refresh_estimates(connection)
        send(manager, run_id, chosen.sending_order(), say, watch)
    return run_id


def _record(
    manager: MigrationManager,
    chosen: Plan,
    options: MigrateOptions,
    canaries: list[str],
    waves: list[list[str]],
    uid: str,
    rollback: "Rollback | None" = None,
) -> int:
    """Write the run under the producers' lock, unless another run is active."""
    with db.begin(manager.engine) as connection:
        locks.lock_name(connection, locks.PRODUCER)
        guard.refuse_if_active(connection, manager.settings.stale_run_after)
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
                "allow": list(options.allow),
                "waves": list(options.waves) or (["canaries"] if canaries else []),
                "wave_pause": options.wave_pause,
                "wave_hold": options.wave_hold,
                **({"rollback_of": rollback.run_id} if rollback else {}),
                **({"replay": replay_paths(chosen)} if chosen.behind and not rollback else {}),
                **({"ahead": len(chosen.ahead)} if chosen.ahead else {}),
            },
            producer=f"{socket.gethostname()}:{os.getpid()}",
            parent_run_id=options.parent_run_id,
            uid=uid,
            skipped=chosen.not_migratable,
            placement=chosen.placement,
            waves={s: n for n, wave in enumerate(waves, 1) for s in wave}
            if len(waves) > 1
            else None,
            targets=rollback.targets if rollback else None,
        )


@dataclass(frozen=True)
class _Sending:
    """What ``_dispatch`` reads of a run before it sends."""

    run: runs.Run
    waves: dict[str, int]
    queues: Queues
    placement: dict[str, str]
    moves: dict[str, tuple[str | None, str]]


def send(
    manager: MigrationManager,
    run_id: int,
    to_send: Sequence[str],
    say: Say,
    watch: follow.Watch,
    *,
    leave_at_hold: bool = False,
) -> int:
    """Send ``to_send`` (pending tenants of the run), wave after wave when the run has waves
    (from the wave it is at); mark the run dispatched. How many tasks were sent. A wave starts
    only when the one before ended within the failure budget (without one: all succeeded),
    after ``--wave-pause`` and, with ``--wave-hold``, ``tenantfleet continue``; when one did
    not, the tenants of the waves never started are recorded ``skipped``. Raises
    ``StoppedFollowing`` when ``watch`` times out between waves (``resume`` goes on later).
    ``leave_at_hold``: at a ``--wave-hold`` hold, return instead of waiting (``continue`` and
    ``resume``, run by an operator for a producer that is gone, leave the run held in the
    database and end)."""
    engine = manager.engine

    def read() -> _Sending:
        with db.connect(engine) as connection:
            run = runs.get_run(connection, run_id)
            return _Sending(
                run,
                runs.waves(connection, run_id),
                of_database(connection),
                runs.placement(connection, run_id),
                runs.moves(connection, run_id),
            )

    def close(skip_reason: str | None) -> int:
        """Every task is sent (or the rest skipped): mark it, close the run if it can be."""
        with db.begin(engine) as connection:
            skipped = runs.skip_pending(connection, run_id, skip_reason) if skip_reason else 0
            runs.mark_dispatched(connection, run_id)
            runs.finalize(connection, run_id)
        return skipped

    known = follow.patiently(watch, read)
    run = known.run
    max_failures = run.options.get("max_failures")
    numbers = sorted(set(known.waves.values()))
    # Celery only when there is something to send or to wait for (a no-op deploy skips it)
    celery_app = app() if to_send or numbers else None

    def send(schemas: Sequence[str]) -> None:
        tenants = [(databases.label(known.placement.get(s), s), *known.moves[s]) for s in schemas]
        enqueue(celery_app, known.queues, run, tenants, max_failures)

    # what the watch needs to tell why tenants wait, for the waves and for --wait after
    watch.app, watch.queues, watch.target = celery_app, known.queues, run.target_revision
    if not numbers:
        send(to_send)
        follow.patiently(watch, lambda: close(None))  # also closes a run with nothing to send
        return len(to_send)
    sent = 0
    for number in [n for n in numbers if n >= (run.wave or 0)]:
        members = [s for s, n in known.waves.items() if n == number]
        follow.patiently(watch, functools.partial(_at_wave, engine, run_id, number))
        now = [s for s in to_send if known.waves.get(s) == number]
        send(now)
        sent += len(now)
        if number == numbers[-1]:
            break
        say(f"run {run_id}: wave {number} of {len(numbers)} ({len(members)} tenants) running")
        outcome = follow.until_final(engine, run_id, members, watch)
        if outcome is None:
            raise follow.StoppedFollowing(
                f"--timeout reached while wave {number} of run {run_id} ran; the next waves"
                f" are not sent: `tenantfleet resume {run_id}` goes on"
            )
        reason = _wave_verdict(engine, run, number, outcome, watch)
        if reason is not None:
            skipped = follow.patiently(watch, functools.partial(close, reason))
            say(f"run {run_id}: {reason.removeprefix('skipped: ')}; {skipped} tenants skipped")
            return sent
        went_on = _between_waves(engine, run, number, say, watch, leave_at_hold)
        if went_on is None:
            return sent  # held, left to the next `tenantfleet continue`
        if not went_on:
            break  # cancelled meanwhile: the later waves' tenants are cancelled, send nothing
    follow.patiently(watch, lambda: close(None))
    return sent


def _at_wave(engine: Engine, run_id: int, number: int) -> None:
    with db.begin(engine) as connection:
        runs.start_wave(connection, run_id, number)


def _wave_verdict(
    engine: Engine, run: runs.Run, number: int, outcome: dict[str, str], watch: follow.Watch
) -> str | None:
    """None when the run may go on past wave ``number`` (whose tenants ended as ``outcome``);
    else why the rest is skipped."""
    budget = run.options.get("max_failures")
    failed = [s for s, state in outcome.items() if state != "succeeded"]
    if run.options.get("waves") == ["canaries"]:
        return f"skipped: canary {shorten(failed)} did not succeed" if failed else None
    if budget is None:
        return f"skipped: wave {number} did not succeed ({shorten(failed)})" if failed else None

    def failures() -> int:
        with db.connect(engine) as connection:
            return runs.counts(connection, run.id).failed

    spent = follow.patiently(watch, failures)
    if spent >= budget:
        return f"skipped: the failure budget ({budget}) was spent by wave {number}"
    return None


def _between_waves(
    engine: Engine,
    run: runs.Run,
    number: int,
    say: Say,
    watch: follow.Watch,
    leave_at_hold: bool = False,
) -> bool | None:
    """The run is held (``RunState.HELD``, in the database: it stays active whoever lives):
    wait ``wave_pause`` seconds, then (``wave_hold``) until ``tenantfleet continue``, which
    also cuts a pause short. True when the next wave may go; False at once when the run was
    cancelled (its next waves were cancelled with it); None when ``leave_at_hold`` and the run
    waits for ``continue``."""
    pause = float(run.options.get("wave_pause") or 0)
    pause_until = time.monotonic() + pause
    hold = bool(run.options.get("wave_hold"))

    def look() -> runs.Run:
        with db.begin(engine) as connection:
            if hold or pause:
                runs.hold(connection, run.id)
            return runs.get_run(connection, run.id)

    now = follow.patiently(watch, look)
    if hold and (now.continued_wave or 0) < number:
        say(
            f"run {run.id}: wave {number} done; {states.held_hint(run.id, number)}"
            f" starts wave {number + 1}"
        )
        if leave_at_hold:
            return None

    def again() -> runs.Run:
        with db.connect(engine) as connection:
            return runs.get_run(connection, run.id)

    while True:
        if now.cancelled_at is not None:
            return False
        continued = (now.continued_wave or 0) >= number
        if continued or (time.monotonic() >= pause_until and not hold):
            return True
        if watch.expired():
            raise follow.StoppedFollowing(
                f"--timeout reached between waves {number} and {number + 1} of run {run.id}:"
                f" `tenantfleet resume {run.id}` goes on"
            )
        time.sleep(watch.poll_interval)
        now = follow.patiently(watch, again)


def resend_lost(manager: MigrationManager, run_id: int, quiet_for: float) -> int:
    """What the watchdog of ``--wait`` does when no tenant finished for ``quiet_for`` seconds:
    decide from the rows and the tenant locks which pending tenants have no live task, and
    send them again. A ``running`` or ``retrying`` tenant whose lock nobody holds and whose row
    has not moved lost its worker; ``queued`` and ``waiting`` tenants are lost when nothing of
    the run is being migrated at all (a waiting tenant is taken by whoever frees a slot of its
    database). A ``retrying`` tenant is lost only once its next attempt is overdue: a retry on
    its way is never sent a second time (that would start a second chain of attempts). A
    duplicate task of a live tenant does nothing, so doubt costs one round trip, never a second
    migration."""
    due = retries.longest_wait(manager.settings)
    with db.connect(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        quiet = {t.schema_name: t for t in runs.quiet_pending(connection, run_id, quiet_for, due)}
        pending = runs.tenants_of(connection, run_id, runs.PENDING)
        held = locks.held(connection, [t.label for t in pending])
    if run.dispatched_at is None:  # between waves: the later ones were never sent
        quiet = {s: t for s, t in quiet.items() if t.wave is None or t.wave <= (run.wave or 0)}
    waiting = ("queued", "waiting")
    lost = [t for t in quiet.values() if t.status not in waiting and t.label not in held]
    if not held:
        lost += [t for t in quiet.values() if t.status in waiting]
    tenants = [(t.label, t.from_revision, t.to_revision) for t in lost]
    enqueue(app(), queues_of(manager), run, tenants, run.options.get("max_failures"))
    return len(lost) + resend_lost_backfills(manager, run)


def resend_lost_backfills(manager: MigrationManager, run: runs.Run) -> int:
    """Send again the run's open backfills no worker runs (their lock is free: the worker that
    ran one died): each goes on from where the ledger says. How many."""
    with db.connect(manager.engine) as connection:
        entries = ledger.open_of_run(connection, run.id)
        if not entries:
            return 0
        names = {
            locks.backfilling(databases.label(e.database, e.schema_name), e.name): e
            for e in entries
        }
        running = locks.held(connection, list(names))
        moves = runs.moves(connection, run.id)
    lost = {
        databases.label(e.database, e.schema_name): e
        for name, e in names.items()
        if name not in running
    }
    if lost:
        send_backfills(manager, run, [(label, *moves[e.schema_name]) for label, e in lost.items()])
    return len(lost)


def prepare_sending(settings: Settings) -> None:
    """Import what sending a run needs (Celery's app and canvas, the result backend's module,
    the broker's Kombu transport, 0.2-0.3 s) while the plan waits on PostgreSQL for the
    tenants' revisions, instead of between the plan and the first task. Modules only: the app,
    which may start the embedded Redis, is made later by ``app`` in the calling thread."""
    from celery.app.backends import by_url
    from kombu import Connection

    # a warm-up only: a bad URL or a missing transport is reported where the app is made
    with contextlib.suppress(Exception):
        for module in ("celery.app.base", "celery.canvas"):
            importlib.import_module(module)
        broker = settings.broker_url or "redis://"  # the embedded stack's broker is a Redis
        Connection(broker).get_transport_cls()
        by_url(settings.result_backend or broker)


def app() -> Any:
    """The Celery app, imported on first use (it reads the configuration)."""
    from tenantfleet.workers import app as celery_app

    return celery_app


def queues_of(manager: MigrationManager) -> Queues:
    """The broker queues of the manager's database."""
    with db.connect(manager.engine) as connection:
        return of_database(connection)


def check_broker(app: Any) -> None:
    """Fail fast, before anything is written, when the broker cannot be reached."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise ConnectionFailed(f"cannot connect to the broker: {exc}") from None


PUBLISH_BATCH = 100  # small enough that workers start on the first messages at once


def enqueue(
    app: Any,
    queues: Queues,
    run: runs.Run,
    tenants: Sequence[tuple[str, str | None, str]],
    max_failures: int | None = None,
) -> None:
    """``chord(group(one task per tenant), finalize_run)``, ``finalize_run_on_error`` on error,
    on the queues of the run's control database; ``tenants`` are (label, the revision the plan
    saw it at, target revision). A
    task names its tenant by its label (``KEY/schema`` in another database): what Flower and the
    worker log show."""
    if not tenants:
        return
    from tenantfleet.tasks.tenant import migrate_tenant
    from tenantfleet.workers.sending import send_chord

    extra: dict[str, Any] = {"run_uid": run.uid}
    if max_failures:
        extra["max_failures"] = max_failures
    trace = tracing.carrier()
    if trace:
        extra["trace"] = trace
    callback = chord_callback(run.id, queues.control)
    # No time limits in the message: the worker's TENANTFLEET_TASK_TIME_LIMIT decides (Celery
    # would otherwise send the producer's setting with every task, and it would win).
    send_chord(
        app,
        migrate_tenant,
        [
            (run.id, label, target, runs.planned_in_message(planned))
            for label, planned, target in tenants
        ],
        extra,
        {"queue": queues.tenants, "time_limit": None, "soft_time_limit": None},
        callback,
        PUBLISH_BATCH,
    )


def chord_callback(run_id: int, queue: str) -> Any:
    """``finalize_run`` on ``queue``, ``finalize_run_on_error`` linked as its errback. Immutable:
    it reads the outcomes from the run tables, so the message Celery sends when the chord
    completes carries none of the tenants' results (10,000 of them left 1.8 MB more in the
    worker's main process)."""
    from tenantfleet.tasks.finalize import finalize_run, finalize_run_on_error

    callback = finalize_run.si(run_id=run_id).set(queue=queue)
    callback.link_error(finalize_run_on_error.s(run_id=run_id).set(queue=queue))
    return callback


def send_backfills(
    manager: MigrationManager, run: runs.Run, tenants: Sequence[tuple[str, str | None, str]]
) -> None:
    """A ``backfill_tenant`` message for each of ``tenants`` (label, the revision its upgrade
    started from, its target): its backfills go on from where the ledger says they are."""
    celery_app = app()
    check_broker(celery_app)
    queue = queues_of(manager).tenants
    for label, planned, target in tenants:
        celery_app.send_task(
            "tenantfleet.backfill_tenant",
            (run.id, label, runs.planned_in_message(planned), target, run.uid),
            queue=queue,
        )
