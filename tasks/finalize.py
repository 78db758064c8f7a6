"""The chord callback and its errback: close the run from the per-tenant rows.

Celery calls ``finalize_run`` when every tenant task succeeded, and, when any raised, skips it
and calls ``finalize_run_on_error`` (with a ``ChordError``) once all parts are done. Both do the
same thing: reconcile from ``public.migration_run_tenants``, never from the result list, which
can hold one tenant twice and miss another after a redelivery. If tenants are still pending
(the chord fired early), ``close_run`` looks again later.
"""

from typing import Any

from tenantfleet import db, runs
from tenantfleet.workers import app, resources

RECHECK_SECONDS = 5.0


def close(run_id: int, attempt: int = 0) -> str:
    """Finalize the run now, or schedule another look while tenants are pending (or while the
    database cannot be reached: too many clients, a restart)."""
    try:
        with db.begin(resources.engine()) as connection:
            closed = runs.finalize(connection, run_id)
    except Exception as exc:
        if not db.is_transient(exc):
            raise
        closed = None
    if closed is not None:
        return closed.status
    cfg = resources.settings()
    if attempt * RECHECK_SECONDS < cfg.visibility_timeout + cfg.task_time_limit:
        close_run.apply_async(
            (run_id, attempt + 1), countdown=RECHECK_SECONDS, queue=resources.queues().control
        )
    return "pending"


@app.task(name="tenantfleet.finalize_run")
def finalize_run(run_id: int) -> str:
    """The chord body: every tenant task returned (sent immutable: it takes no results)."""
    return close(run_id)


@app.task(name="tenantfleet.finalize_run_on_error")
def finalize_run_on_error(_request: Any, _exc: BaseException, _traceback: Any, run_id: int) -> str:
    """The body's errback: at least one tenant task failed (Celery passes a ChordError)."""
    return close(run_id)


@app.task(name="tenantfleet.close_run")
def close_run(run_id: int, attempt: int) -> str:
    """A later look at a run whose chord fired while tenants were still pending."""
    return close(run_id, attempt)
