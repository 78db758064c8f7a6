"""The tenant task: migrate one schema in one transaction, and record how it went.

Each attempt (``tenantfleet.attempt``: one round trip when the tenant is where the last one was,
else two or three):
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

import logging
import random
import socket
import time
from collections.abc import Callable
from typing import NoReturn

from celery import Task
from celery.exceptions import Reject, Retry
from sqlalchemy.engine import Connection, Engine

from tenantfleet import alembic_runtime, attempt, db, runs
from tenantfleet.workers import app, resources

logger = logging.getLogger(__name__)


class TenantMigrationFailed(Exception):
    """Raised for good when a tenant's migration fails; its message names schema and cause."""


class TooManyAttempts(Exception):
    """A tenant whose attempts keep dying without an outcome: a poison task, given up."""


POISON_MARGIN = 3


class UnknownRunTenant(Exception):
    """The task names a run and tenant this worker's database has never heard of."""


def backoff_seconds(retries: int) -> float:
    """Exponential backoff with full jitter around the nominal delay."""
    cfg = resources.settings()
    nominal = min(cfg.retry_backoff_max, cfg.retry_backoff * (2**retries))
    return nominal * random.uniform(0.5, 1.5)


# ignore_result: the outcome lives in PostgreSQL and the chord counts parts without stored
# results, so the worker skips two Redis round trips per tenant and the producer a subscription.
@app.task(name="tenantfleet.migrate_tenant", bind=True, max_retries=None, ignore_result=True)
def migrate_tenant(
    self: Task,
    run_id: int,
    schema: str,
    target: str,
    max_failures: int | None = None,
    run_uid: str | None = None,
) -> str:
    """Bring ``schema`` to ``target`` for run ``run_id`` (``run_uid``); returns the tenant's final
    status. With ``max_failures``, a tenant whose run already has that many failures is skipped.
    """
    if run_uid is None:
        raise UnknownRunTenant(f"{schema}: the message of run {run_id} carries no run uid")
    task = runs.TenantTask(run_id, run_uid, schema, target)
    settings = resources.settings()
    worker = self.request.hostname or socket.gethostname()
    if not alembic_runtime.knows_revision(target):
        _hand_back(task, worker)
    started = time.monotonic()
    try:
        with (
            db.connect(resources.attempt_engine()) as connection,
            attempt.open_transaction(connection),
        ):
            max_attempts = settings.max_retries + POISON_MARGIN
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
            if found.attempts is None:
                raise UnknownRunTenant(
                    f"{schema}: run {run_id} ({run_uid}) for target {target} has no such tenant"
                    " in this worker's database"
                )
            if not found.pending:
                attempt.end(connection, commit=False)
                return "duplicate"
            if found.attempts > max_attempts:
                raise TooManyAttempts(
                    f"{found.attempts - 1} attempts ended without an outcome (the worker died or"
                    " hit the hard time limit each time); giving up"
                )
            if max_failures and runs.mark_skipped_if_budget_spent(connection, task, max_failures):
                attempt.end(connection, commit=True)
                return "skipped"
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if not attempt.apply(connection, found, task, elapsed_ms):
                return "duplicate"  # another delivery finished this tenant meanwhile
        return "succeeded"
    except (Retry, UnknownRunTenant):
        raise
    except Exception as exc:
        raise _fail_or_retry(self, task, exc, started) from None


HAND_BACK_DELAY_S = 2.0
"""How long a worker that cannot run a task waits before it gives the message back, so that a
worker that can gets it rather than this one again at once."""


def _hand_back(task: runs.TenantTask, worker: str) -> NoReturn:
    """This worker's scripts do not define the target (a rolling deploy has not reached this
    host): touch nothing, say why on the tenant's row and in the log, give the message back."""
    logger.warning(
        "%s: revision %s is unknown to this worker's scripts (run %s); handed back for a"
        " worker that knows it",
        task.schema,
        task.target,
        task.run_id,
    )
    _record(lambda c: runs.note_handed_back(c, task, worker), resources.engine())
    time.sleep(HAND_BACK_DELAY_S)
    raise Reject(f"revision {task.target} unknown to this worker", requeue=True)


def _fail_or_retry(
    celery_task: Task, task: runs.TenantTask, error: Exception, started: float
) -> BaseException:
    """Record the error and return what the task should raise: a retry or the final failure.

    A lost database connection is retried without limit (the outage is ridden out, the tenant
    keeps its task); other transient errors (lock timeout, deadlock, ...) up to
    ``TENANTFLEET_MAX_RETRIES`` times.
    """
    exc = db.interruption(error)  # a soft time limit shows as the QueryCanceled it caused
    retries = celery_task.request.retries
    if db.is_unreachable(exc) or (
        db.is_transient(exc) and retries < resources.settings().max_retries
    ):
        _record(lambda c: runs.mark_retrying(c, task, exc), resources.engine())
        return celery_task.retry(exc=exc, countdown=backoff_seconds(retries), throw=False)
    elapsed = int((time.monotonic() - started) * 1000)
    _record(lambda c: runs.mark_failed(c, task, exc, elapsed), resources.engine())
    error_class, _ = db.describe_error(exc)
    return TenantMigrationFailed(f"{task.schema}: {error_class}: {db.first_line(exc)}")


def _record(write: Callable[[Connection], None], engine: Engine) -> None:
    """Best effort: while the database is down, the row keeps its last state for ``resume``."""
    try:
        with db.begin(engine) as connection:
            write(connection)
    except Exception as exc:
        if not db.is_transient(exc):
            raise
