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

import random
import socket
import time
from collections.abc import Callable

from celery import Task
from celery.exceptions import Retry
from sqlalchemy.engine import Connection, Engine

from tenantfleet import attempt, db, runs
from workers import app, resources


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
    self: Task, run_id: int, schema: str, target: str, max_failures: int | None = None
) -> str:
    """Bring ``schema`` to ``target`` for run ``run_id``; returns the tenant's final status.

    With ``max_failures``, a tenant whose run already has that many failures is skipped.
    """
    settings = resources.settings()
    worker = self.request.hostname or socket.gethostname()
    started = time.monotonic()
    try:
        with (
            db.connect(resources.attempt_engine()) as connection,
            attempt.open_transaction(connection),
        ):
            max_attempts = settings.max_retries + POISON_MARGIN
            quick = (
                attempt.at_once(connection, run_id, schema, worker, target, settings, max_attempts)
                if not max_failures  # the failure budget is checked between begin and apply
                else attempt.Quick.NOT_TRIED
            )
            if quick is attempt.Quick.DONE:
                return "succeeded"
            found = attempt.begin(
                connection, run_id, schema, worker, settings, marked=quick is attempt.Quick.MISSED
            )
            if found.attempts is None:
                raise UnknownRunTenant(
                    f"{schema}: run {run_id} has no such tenant in this worker's database"
                    " (is the worker pointed at another database than the producer?)"
                )
            if not found.pending:
                attempt.end(connection, commit=False)
                return "duplicate"
            if found.attempts > max_attempts:
                raise TooManyAttempts(
                    f"{found.attempts - 1} attempts ended without an outcome (the worker died or"
                    " hit the hard time limit each time); giving up"
                )
            if max_failures and runs.mark_skipped_if_budget_spent(
                connection, run_id, schema, max_failures
            ):
                attempt.end(connection, commit=True)
                return "skipped"
            elapsed_ms = int((time.monotonic() - started) * 1000)
            if not attempt.apply(connection, found, run_id, schema, target, elapsed_ms):
                return "duplicate"  # another delivery finished this tenant meanwhile
        return "succeeded"
    except (Retry, UnknownRunTenant):
        raise
    except Exception as exc:
        raise _fail_or_retry(self, run_id, schema, exc, started) from None


def _fail_or_retry(
    task: Task, run_id: int, schema: str, error: Exception, started: float
) -> BaseException:
    """Record the error and return what the task should raise: a retry or the final failure."""
    exc = db.interruption(error)  # a soft time limit shows as the QueryCanceled it caused
    if db.is_transient(exc) and task.request.retries < resources.settings().max_retries:
        _record(lambda c: runs.mark_retrying(c, run_id, schema, exc), resources.engine())
        return task.retry(exc=exc, countdown=backoff_seconds(task.request.retries), throw=False)
    elapsed = int((time.monotonic() - started) * 1000)
    _record(lambda c: runs.mark_failed(c, run_id, schema, exc, elapsed), resources.engine())
    error_class, _ = db.describe_error(exc)
    return TenantMigrationFailed(f"{schema}: {error_class}: {db.first_line(exc)}")


def _record(write: Callable[[Connection], None], engine: Engine) -> None:
    """Best effort: while the database is down, the row keeps its last state for ``resume``."""
    try:
        with db.begin(engine) as connection:
            write(connection)
    except Exception as exc:
        if not db.is_transient(exc):
            raise
