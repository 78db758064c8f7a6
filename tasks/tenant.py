"""The tenant task: migrate one schema in one transaction, and record how it went.

Each attempt:
1. marks the tenant ``running`` in the run table (a finished tenant is never touched again),
   or ``skipped`` when the run's failure budget (``--max-failures``) is spent;
2. in one transaction: confines the session to the schema, takes the per-schema advisory lock
   (waiting at most ``lock_timeout``), reads the revision under the lock, runs the upgrade (none
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

from tenantfleet import alembic_runtime, db, runs
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


@app.task(name="tenantfleet.migrate_tenant", bind=True, max_retries=None)
def migrate_tenant(
    self: Task, run_id: int, schema: str, target: str, max_failures: int | None = None
) -> str:
    """Bring ``schema`` to ``target`` for run ``run_id``; returns the tenant's final status.

    With ``max_failures``, a tenant whose run already has that many failures is skipped.
    """
    engine = resources.engine()
    worker = self.request.hostname or socket.gethostname()
    started = time.monotonic()
    try:
        with db.connect(resources.progress_engine()) as connection:
            attempt = runs.mark_running(connection, run_id, schema, worker)
            if attempt is None:
                if runs.status_of(connection, run_id, schema) is None:
                    raise UnknownRunTenant(
                        f"{schema}: run {run_id} has no such tenant in this worker's database"
                        " (is the worker pointed at another database than the producer?)"
                    )
                return "duplicate"
            if attempt > resources.settings().max_retries + POISON_MARGIN:
                raise TooManyAttempts(
                    f"{attempt - 1} attempts ended without an outcome (the worker died or hit"
                    " the hard time limit each time); giving up"
                )
            if max_failures and runs.mark_skipped_if_budget_spent(
                connection, run_id, schema, max_failures
            ):
                return "skipped"
        with db.connect(engine) as connection:
            transaction = connection.begin()
            has_version_table = alembic_runtime.confine_to_schema(
                connection, schema, resources.settings()
            )
            step = alembic_runtime.migrate_tenant(
                connection, schema, target, has_version_table=has_version_table
            )
            elapsed = int((time.monotonic() - started) * 1000)
            if not runs.mark_succeeded(connection, run_id, schema, step.from_revision, elapsed):
                transaction.rollback()  # another delivery finished this tenant meanwhile
                return "duplicate"
            transaction.commit()
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
        progress = resources.progress_engine()
        _record(lambda c: runs.mark_retrying(c, run_id, schema, exc), progress)
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
