"""The tenant task: migrate one schema in one transaction, and record how it went.

Each attempt (``tenantfleet.attempt``: one round trip when the tenant is where the last one was,
else two or three; a few more for a tenant of another database):
0. takes a slot of the tenant's database (its ``max_concurrent``); with none free the tenant
   waits, and a worker that frees a slot of that database takes it next;
1. marks the tenant ``running`` in the run table (a finished tenant is never touched again);
2. in one transaction: confines the session to the schema, takes the per-schema advisory lock
   (waiting at most ``lock_timeout``), reads the run row and the revision under the lock, skips
   the tenant when the run's failure budget (``--max-failures``) is spent, runs the upgrade (none
   if another delivery already did it), and marks the tenant ``succeeded`` only if its row is
   still pending - so the schema change and its record commit together, or neither does;
3. on a transient error (lost connection, lock timeout, deadlock, serialization failure) marks
   it ``retrying`` and retries with exponential backoff and jitter; on anything else, or when
   retries run out, marks it ``failed`` and raises, so Flower shows the task as FAILURE.
"""

import dataclasses
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

from celery import Task, current_task
from celery.exceptions import Reject, Retry
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from tenantfleet import (
    alembic_runtime,
    attempt,
    batches,
    databases,
    db,
    ledger,
    locks,
    logs,
    metrics,
    registry,
    runs,
    stepwise,
    tracing,
)
from tenantfleet import retries as retries_policy
from tenantfleet.attempt import ms_since
from tenantfleet.errors import LoginRefused
from tenantfleet.workers import app, resources

logger = logging.getLogger(__name__)
T = TypeVar("T")


class TenantMigrationFailed(Exception):
    """Raised for good when a tenant's migration fails; its message names schema and cause."""


class TooManyAttempts(Exception):
    """A tenant whose attempts keep dying without an outcome: a poison task, given up."""


POISON_MARGIN = 3


class UnknownRunTenant(Exception):
    """The task names a run and tenant this worker's database has never heard of."""


# ignore_result: the outcome lives in PostgreSQL and the chord counts parts without stored
# results, so the worker skips two Redis round trips per tenant and the producer a subscription.
@app.task(name="tenantfleet.migrate_tenant", bind=True, max_retries=None, ignore_result=True)
def migrate_tenant(
    self: Task,
    run_id: int,
    tenant: str,
    target: str,
    planned: str | None = None,
    max_failures: int | None = None,
    run_uid: str | None = None,
    trace: tracing.Carrier | None = None,
) -> str:
    """Bring ``tenant`` (its label: ``schema``, or ``KEY/schema`` in another database) from
    ``planned``, the revision the plan saw it at (``base``: none), to ``target`` for run
    ``run_id`` (``run_uid``); returns the tenant's status. A schema found elsewhere is not
    touched: the tenant is recorded ``skipped`` with where it is. With
    ``max_failures``, a tenant whose run already has that many failures is skipped. ``trace``:
    the run span's context, when tracing is on (``tenantfleet.tracing``).

    When every slot of the tenant's database is taken, the tenant waits (``waiting``) and the
    task returns; a worker holding a slot takes the waiting tenants of its database one after
    the other as it frees up (``_take_waiting``), so the cap never idles a worker.
    """
    placed = databases.parse_label(tenant)
    if run_uid is None:
        raise UnknownRunTenant(f"{tenant}: the message of run {run_id} carries no run uid")
    task = runs.TenantTask(run_id, run_uid, placed.schema, target, placed.database, planned)
    worker = f"{self.request.hostname or socket.gethostname()}:{os.getpid()}"
    if not alembic_runtime.knows_revision(target):
        _hand_back(task, worker, f"knows revision {target}")
    if task.database is not None and task.database not in resources.settings().databases:
        _hand_back(task, worker, f"has database {task.database} in its configuration")
    started = time.monotonic()
    outcome = "raised"
    seen = _Seen(worker, self.request.id, trace)
    attributes = _span_attributes(task) if trace else {}  # no work when not tracing
    with tracing.attempt_span(trace, "tenantfleet.tenant_attempt", **attributes) as span:
        seen.span = span
        try:
            outcome = _with_a_slot(task, worker, max_failures)
            number, from_revision = attempt.last_attempt()
            _ended(task, seen, outcome, started, attempt=number, from_revision=from_revision)
            _backfill_after(task, outcome, from_revision)
            return outcome
        except (Retry, UnknownRunTenant):
            raise
        except Exception as exc:
            raise _fail_or_retry(self, task, exc, started, seen) from None
        finally:
            if outcome != "waiting":  # whatever became of this tenant, its slot is free again
                _take_waiting(task, seen, max_failures)


@app.task(name="tenantfleet.backfill_tenant", ignore_result=True)
def backfill_tenant(
    run_id: int, tenant: str, from_revision: str, target: str, run_uid: str
) -> None:
    """Go on with the backfills of ``tenant``'s upgrade from ``from_revision`` (``base``: none)
    to ``target`` in run ``run_id``, from where the ledger says they are (a worker handed them
    on past its time budget, or ``retry`` resumes a failed one)."""
    placed = databases.parse_label(tenant)
    task = runs.TenantTask(run_id, run_uid, placed.schema, target, placed.database, from_revision)
    _backfill(task, task.planned_revision)


def _backfill_after(task: runs.TenantTask, outcome: str, from_revision: str | None) -> None:
    """The tenant's backfills, once its upgrade committed (after this attempt's success, or
    after a duplicate delivery: the worker that committed it died before it got here): unless
    the DDL transaction filled them all (small tables), a ``backfill_tenant`` message, queued
    behind the run's tenants. A concurrent index build waits for every older transaction of
    its database, a batch in flight included: the run's DDL goes first, the batches after."""
    if task.planned is not None and outcome in ("succeeded", "duplicate"):
        start = task.planned_revision
    elif outcome == "succeeded":  # a message that did not say: where this attempt began
        start = from_revision
    else:
        return
    declared = [bf.name for _, bf in alembic_runtime.span_backfills(start, task.target)]
    if not declared:
        return
    if task.database is None:  # entered with the DDL: done when it was filled there
        with db.connect(resources.engine()) as connection:
            done = ledger.done_names(connection, task.schema, None, declared)
        if done >= set(declared):
            return
    _queue_backfill(task, start)


def _queue_backfill(task: runs.TenantTask, from_revision: str | None) -> None:
    """A ``backfill_tenant`` message for the tenant: its backfills go on from the ledger."""
    backfill_tenant.apply_async(
        (task.run_id, task.label, runs.planned_in_message(from_revision), task.target),
        {"run_uid": task.run_uid},
        queue=resources.queues().tenants,
        time_limit=None,
        soft_time_limit=None,
    )


def _backfill(task: runs.TenantTask, from_revision: str | None) -> None:
    """The backfills the tenant's upgrade declares, batch after batch (``tenantfleet.batches``),
    after its DDL committed. Past the time share of the task the rest goes on in a new message;
    a backfill that fails is recorded failed in the ledger (``retry`` goes on with it), and the
    tenant, whose upgrade committed, stays succeeded."""
    declared = alembic_runtime.span_backfills(from_revision, task.target)
    settings = resources.settings()
    deadline = time.monotonic() + settings.task_time_limit * DRAIN_SHARE
    for revision, bf in declared:
        target = batches.Target(task.run_id, task.schema, task.database, revision, bf)
        try:
            entry = batches.run(
                target, resources.engine(), resources.steps_engine(task.database), settings,
                deadline, _in_flower if settings.task_events else None,
            )  # fmt: skip
        except batches.Handed as handed:
            logger.info("%s", handed)
            _queue_backfill(task, from_revision)
            return
        except Exception as exc:
            logger.warning(
                "%s: backfill %s failed (run %s): %s: %s", task.label, bf.name, task.run_id,
                db.describe_error(exc)[0], db.first_line(exc),
            )  # fmt: skip
            return
        if entry is None:  # another worker runs it (its lock is held): it goes on there
            continue
        logger.info(
            "%s: backfill %s done: %d rows in %d batches (run %s)",
            task.label, bf.name, entry.rows_done, entry.batches, task.run_id,
        )  # fmt: skip


def _in_flower(progress: batches.Progress) -> None:
    """A backfill's progress as a ``task-progress`` event of the task running it: Flower shows
    the task in state ``PROGRESS`` with the line as its result, until the task ends."""
    task = current_task
    if task is not None and task.request.id is not None:
        task.send_event("task-progress", result=progress.line())


@dataclass
class _Seen:
    """Who is at work (worker process, Celery task id), and where its log lines and span go."""

    worker: str
    task_id: str | None
    trace: tracing.Carrier | None
    span: tracing.Attempt | None = None


def _span_attributes(task: runs.TenantTask) -> dict[str, object]:
    return {
        "db.system.name": "postgresql",
        "db.namespace": f"{resources.database_name(task.database)}|{task.schema}",
        "db.operation.name": "migrate",
        "tenantfleet.run_id": task.run_id,
        "tenantfleet.tenant": task.label,
        "tenantfleet.to_revision": task.target,
    }


def _ended(
    task: runs.TenantTask,
    seen: _Seen,
    outcome: str,
    started: float,
    *,
    attempt: int | None = None,
    from_revision: str | None = None,
    sqlstate: str | None = None,
    note: str = "",
    level: int = logging.INFO,
) -> None:
    """An attempt at ``task`` ended as ``outcome``: its log line (every field as ``extra``),
    its metrics, its span's attributes."""
    duration_ms = ms_since(started)
    logger.log(
        level,
        "%s: %s (run %s%s)",
        task.label,
        outcome,
        task.run_id,
        note,
        extra=logs.tenant_extra(
            run_id=task.run_id,
            schema=task.schema,
            database=databases.shown(task.database),
            from_revision=from_revision,
            to_revision=task.target,
            attempt=attempt,
            outcome=outcome,
            duration_ms=duration_ms,
            sqlstate=sqlstate,
            worker=seen.worker,
            task_id=seen.task_id,
        ),
    )
    metrics.observe(outcome, task.database, duration_ms / 1000, sqlstate)
    if seen.span is not None:
        seen.span.attributes.update(
            {
                "tenantfleet.outcome": outcome,
                "tenantfleet.attempt": attempt,
                "tenantfleet.from_revision": from_revision,
                "db.response.status_code": sqlstate,
            }
        )


def _with_a_slot(task: runs.TenantTask, worker: str, max_failures: int | None) -> str:
    """``_migrate``, or when every slot of the database is taken: park the tenant, then try
    once more (a slot freed meanwhile was given back before its holder looked for waiting
    tenants: either it sees this one, or this try gets the slot)."""
    try:
        return _migrate(task, worker, max_failures)
    except DBAPIError as exc:
        if db.sqlstate(exc) != locks.NO_SLOT:
            raise
    _record(lambda c: runs.park(c, task, resources.settings().cap(task.database)))
    try:
        return _migrate(task, worker, max_failures)
    except DBAPIError as exc:
        if db.sqlstate(exc) != locks.NO_SLOT:
            raise
    return "waiting"


DRAIN_SHARE = 0.5
"""Of the task's time limit, how long a worker keeps taking waiting tenants of its database
before it hands the rest on in a new message."""


def _take_waiting(done: runs.TenantTask, seen: _Seen, max_failures: int | None) -> None:
    """Having given back a slot of ``done``'s database, migrate the tenants of its run that wait
    for one, until none waits (or another worker got the slot: it takes them on). A tenant whose
    attempt fails transiently is sent again in a message of its own; past the time share, the
    next waiting tenant is, and it takes the rest. Their outcomes are logged and counted, not
    put on the span of ``done``'s attempt."""
    seen = dataclasses.replace(seen, span=None)
    budget = time.monotonic() + resources.settings().task_time_limit * DRAIN_SHARE
    taken = 0
    while attempt.someone_waits():
        try:
            task = _engine_call(lambda c: runs.claim_waiting(c, done))
        except Exception as exc:  # the control database: they wait, resume finds them
            if not db.is_transient(exc):
                raise
            break
        if task is None:
            break
        if time.monotonic() > budget:
            _send_again(task, max_failures, seen, countdown=0.0, retries=0)
            break
        taken += 1
        started = time.monotonic()
        try:
            outcome = _with_a_slot(task, seen.worker, max_failures)
        except Exception as exc:
            if _record_drained_error(task, exc, started, max_failures, seen):
                break
            continue
        number, from_revision = attempt.last_attempt()
        _ended(
            task,
            seen,
            outcome,
            started,
            attempt=number,
            from_revision=from_revision,
            note=", taken while waiting",
        )
        _backfill_after(task, outcome, from_revision)
        if outcome == "waiting":
            break
    if taken:
        logger.info("took %d waiting tenants of database %s", taken, databases.shown(done.database))


def _record_drained_error(
    task: runs.TenantTask, exc: Exception, started: float, max_failures: int | None, seen: _Seen
) -> bool:
    """What ``_fail_or_retry`` does for a task, for a tenant taken while waiting: a transient
    error sends it again in a message of its own, any other fails it. True when its database
    cannot be reached: stop taking its tenants (the message sent takes them later)."""
    error = _explained(db.interruption(exc), task, seen)
    if not db.is_transient(error):
        marked = _record(lambda c: runs.mark_failed(c, task, error, ms_since(started)))
        _ended_in_error(task, seen, "failed", started, error, marked, ", taken while waiting")
        return False
    marked = _record(lambda c: runs.mark_retrying(c, task, error))
    _ended_in_error(task, seen, "retrying", started, error, marked, ", taken while waiting")
    if db.is_unreachable(error):
        _record(lambda c: runs.note_unreachable(c, task, error))
    _send_again(
        task,
        max_failures,
        seen,
        countdown=retries_policy.backoff_seconds(resources.settings(), 0),
        retries=1,
    )
    return db.is_unreachable(error)


def _ended_in_error(
    task: runs.TenantTask,
    seen: _Seen,
    outcome: str,
    started: float,
    error: BaseException,
    marked: runs.Marked,
    note: str = "",
) -> None:
    """``_ended`` for an error: the attempt and from revision the mark returned, the SQLSTATE,
    the error's first line in the message."""
    attempt_number, from_revision = marked or (None, None)
    error_class, _ = db.describe_error(error)
    _ended(
        task,
        seen,
        outcome,
        started,
        attempt=attempt_number,
        from_revision=from_revision,
        sqlstate=db.sqlstate(error),
        note=f"{note}: {error_class}: {db.first_line(error)}",
        level=logging.WARNING,
    )
    if seen.span is not None:
        seen.span.error = error


def _send_again(
    task: runs.TenantTask, max_failures: int | None, seen: _Seen, *, countdown: float, retries: int
) -> None:
    """A message of its own for a waiting tenant (outside the run's chord: the run closes from
    its rows, whoever looks last)."""
    extra: dict[str, object] = {"run_uid": task.run_uid}
    if max_failures:
        extra["max_failures"] = max_failures
    if seen.trace:
        extra["trace"] = seen.trace
    migrate_tenant.apply_async(
        (task.run_id, task.label, task.target, task.planned),
        extra,
        queue=resources.queues().tenants,
        countdown=countdown,
        retries=retries,
        time_limit=None,
        soft_time_limit=None,
    )


def _migrate(task: runs.TenantTask, worker: str, max_failures: int | None) -> str:
    """One attempt at the tenant, in its database; its status, or an exception."""
    settings = resources.settings()
    started = time.monotonic()
    max_attempts = settings.max_retries + POISON_MARGIN
    if task.database is not None:
        return _migrate_elsewhere(task, worker, max_failures, started, max_attempts)
    with (
        db.connect(resources.attempt_engine()) as connection,
        attempt.open_transaction(connection),
    ):
        quick = (
            attempt.at_once(connection, task, worker, settings, max_attempts)
            if not max_failures  # the failure budget is checked between begin and apply
            else attempt.Quick.NOT_TRIED
        )
        if quick is attempt.Quick.DONE:
            return "succeeded"
        found = attempt.begin(
            connection, task, worker, settings, marked=quick is attempt.Quick.MISSED
        )
        verdict = _check(found, task, max_attempts)
        if verdict is not None:
            attempt.end(connection, commit=False)
            return verdict
        if max_failures and runs.mark_skipped_if_budget_spent(connection, task, max_failures):
            attempt.end(connection, commit=True)
            return "skipped"
        if found.moved(task):
            _skip_moved(task, runs.mark_moved(connection, task, found.from_revision))
            attempt.end(connection, commit=True)
            return "skipped"
        if _gated(connection, task, found):
            attempt.end(connection, commit=True)
            return "skipped"
        if alembic_runtime.commits_part_way(found.from_revision, task.target):
            connection.exec_driver_sql("ROLLBACK")  # the slot stays; stepwise locks again
            return _in_steps(
                task,
                started,
                found,
                lambda ms: attempt.mark_done(connection, task, found.planned, ms),
                lambda: attempt.end(connection, commit=False),
            )
        if not attempt.apply(connection, found, task, started):
            return "duplicate"  # another delivery finished this tenant meanwhile
    return "succeeded"


def _migrate_elsewhere(
    task: runs.TenantTask,
    worker: str,
    max_failures: int | None,
    started: float,
    max_attempts: int,
) -> str:
    """``_migrate`` for a tenant of another database (``attempt.Pair``)."""
    settings = resources.settings()
    with (
        db.connect(resources.attempt_engine()) as control,
        db.connect(resources.attempt_engine(task.database)) as tenant,
    ):
        pair = attempt.Pair(control, tenant)
        with attempt.open_pair(pair, task):
            quick = (
                attempt.remote_at_once(pair, task, worker, settings, max_attempts, started)
                if not max_failures
                else attempt.Quick.NOT_TRIED
            )
            if quick is attempt.Quick.DONE:
                return "succeeded"
            found = (
                quick
                if isinstance(quick, attempt.Started)
                else attempt.remote_begin(
                    pair, task, worker, settings, marked=quick is attempt.Quick.MISSED
                )
            )
            verdict = _check(found, task, max_attempts)
            if verdict is not None:
                attempt.remote_end(pair, task, commit=False)
                return verdict
            if max_failures and runs.mark_skipped_if_budget_spent(control, task, max_failures):
                attempt.remote_end(pair, task, commit=True)
                return "skipped"
            if found.moved(task):
                _skip_moved(task, runs.mark_moved(control, task, found.from_revision))
                attempt.remote_end(pair, task, commit=True)
                return "skipped"
            if _gated(control, task, found):
                attempt.remote_end(pair, task, commit=True)
                return "skipped"
            if alembic_runtime.commits_part_way(found.from_revision, task.target):
                tenant.exec_driver_sql("ROLLBACK")  # slot and mark lock stay in the control one
                return _in_steps(
                    task,
                    started,
                    found,
                    lambda ms: attempt.remote_mark_done(pair, task, found.planned, ms),
                    lambda: attempt.remote_end(pair, task, commit=False),
                )
            if not attempt.remote_apply(pair, found, task, started):
                return "duplicate"
    return "succeeded"


def _in_steps(
    task: runs.TenantTask,
    started: float,
    found: attempt.Started,
    mark: Callable[[int], bool],
    release: Callable[[], None],
) -> str:
    """A span that commits part way (``tenantfleet.stepwise``), then ``mark`` (elapsed ms): the
    tenant's status. On failure the revision it reached is noted and the error raised (recorded
    failed, or retried, as any other). A schema moved off the span between the check and the
    span's own lock is left as it is, the tenant skipped (``release`` gives back the slot)."""
    outcome = stepwise.run(
        resources.steps_engine(task.database),
        task.schema,
        task.target,
        resources.settings(),
        alembic_runtime.on_the_way(found.planned, task.target),
        task.run_id if task.database is None else None,
    )
    if outcome.moved:
        _skip_moved(task, _record(lambda c: runs.mark_moved(c, task, outcome.from_revision)))
        release()
        return "skipped"
    if outcome.dropped:
        logger.warning(
            "%s: dropped invalid indexes a failed concurrent build left: %s",
            task.label,
            ", ".join(outcome.dropped),
        )
    if outcome.error is not None:
        _record(lambda c: _note_reached(c, task, outcome.reached))
        raise outcome.error
    return "succeeded" if mark(ms_since(started)) else "duplicate"


def _note_reached(control: Connection, task: runs.TenantTask, reached: str | None) -> None:
    """Where a span that failed part way left the tenant: on its run row and in the registry
    (``fleet`` reads the revision from there)."""
    runs.note_reached(control, task, reached)
    registry.record_revision(control, task.schema, reached or "base")


def _gated(control: Connection, task: runs.TenantTask, found: attempt.Started) -> bool:
    """Whether a revision of the span needs backfills not done on this tenant yet: then it is
    skipped, untouched, with the reason (``control``: where the run rows and the ledger are)."""
    needed = alembic_runtime.span_requires(found.from_revision, task.target)
    if not needed:
        return False
    done = ledger.done_names(control, task.schema, task.database, list(needed))
    missing = [name for name in needed if name not in done]
    if not missing:
        return False
    reason = (
        f"needs backfill {', '.join(missing)} done first: not touched; a later migrate (or"
        " retry) applies it once the backfill is done"
    )
    runs.mark_skipped(control, task, runs.BACKFILL_PENDING, reason)
    logger.warning("%s (run %s): %s", task.label, task.run_id, reason)
    return True


def _skip_moved(task: runs.TenantTask, reason: str | None) -> None:
    logger.warning("%s (run %s): %s", task.label, task.run_id, reason or "moved since the plan")


def _check(found: attempt.Started, task: runs.TenantTask, max_attempts: int) -> str | None:
    """Whether the attempt goes on (None), or its outcome: a tenant no longer pending is a
    ``duplicate``; an unknown one, or one past the poison cap, raises."""
    if found.attempts is None:
        raise UnknownRunTenant(
            f"{task.label}: run {task.run_id} ({task.run_uid}) for target {task.target} has no"
            " such tenant in this worker's database"
        )
    if not found.pending:
        return "duplicate"
    if found.attempts > max_attempts:
        raise TooManyAttempts(
            f"{found.attempts - 1} attempts ended without an outcome (the worker died or"
            " hit the hard time limit each time); giving up"
        )
    return None


HAND_BACK_DELAY_S = 2.0
"""How long a worker that cannot run a task waits before it gives the message back, so that a
worker that can gets it rather than this one again at once."""


def _hand_back(task: runs.TenantTask, worker: str, needs: str) -> NoReturn:
    """This worker cannot run the task: the tenant needs a worker that ``needs`` (knows the
    target: a rolling deploy has not reached this host; has the tenant's database configured).
    Touch nothing, say why on the tenant's row and in the log, give the message back."""
    logger.warning(
        "%s (run %s) needs a worker that %s; handed back", task.label, task.run_id, needs
    )
    _record(lambda c: runs.note_handed_back(c, task, worker, needs))
    time.sleep(HAND_BACK_DELAY_S)
    raise Reject(f"{task.label} needs a worker that {needs}", requeue=True)


def _explained(error: BaseException, task: runs.TenantTask, seen: _Seen) -> BaseException:
    """``error``, or for a refused login (a configuration to fix: failed at once, never retried
    as an outage) the same saying which worker cannot log in to which database."""
    if not isinstance(error, LoginRefused):
        return error
    reason = error.details.get("reason", str(error))
    said = f"worker {seen.worker} cannot log in to database {databases.shown(task.database)}"
    return LoginRefused(f"{said}: {reason}", {"reason": f"{said}: {reason}"})


def _fail_or_retry(
    celery_task: Task, task: runs.TenantTask, error: Exception, started: float, seen: _Seen
) -> BaseException:
    """Record the error and return what the task should raise: a retry or the final failure.

    A lost database connection is retried without limit (the outage is ridden out, the tenant
    keeps its task); other transient errors (lock timeout, deadlock, ...) up to
    ``TENANTFLEET_MAX_RETRIES`` times.
    """
    exc = _explained(db.interruption(error), task, seen)  # a soft time limit: QueryCanceled
    retries = celery_task.request.retries
    if db.is_unreachable(exc) or (
        db.is_transient(exc) and retries < resources.settings().max_retries
    ):
        marked = _record(lambda c: runs.mark_retrying(c, task, exc))
        _ended_in_error(task, seen, "retrying", started, exc, marked)
        return celery_task.retry(
            exc=exc,
            countdown=retries_policy.backoff_seconds(resources.settings(), retries),
            throw=False,
        )
    marked = _record(lambda c: runs.mark_failed(c, task, exc, ms_since(started)))
    _ended_in_error(task, seen, "failed", started, exc, marked)
    error_class, _ = db.describe_error(exc)
    return TenantMigrationFailed(f"{task.label}: {error_class}: {db.first_line(exc)}")


def _record(write: Callable[[Connection], T]) -> T | None:
    """Best effort: while the control database is down, the row keeps its last state for
    ``resume`` (and None is returned)."""
    try:
        return _engine_call(write)
    except Exception as exc:
        if not db.is_transient(exc):
            raise
        return None


def _engine_call(write: Callable[[Connection], T]) -> T:
    """``write`` in a transaction of the control database, committed."""
    with db.begin(resources.engine()) as connection:
        return write(connection)
