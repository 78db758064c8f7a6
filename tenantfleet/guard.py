"""Which run is active: the single-run guard's view of the run tables.

A run is active while it is open and alive. Alive means its producer is still sending its tasks
(it holds the run's dispatch lock), or a tenant of it holds its lock (a migration is in
progress right now), or, once every task was sent, something happened to it within
``TENANTFLEET_STALE_RUN_AFTER`` seconds. An open run that is none of these was abandoned (its
producer died before sending everything, its queue was lost): it blocks nobody, and
``tenantfleet resume`` finishes it. An open run whose tenants are all final is closed on sight.
"""

from dataclasses import dataclass

from sqlalchemy.engine import Connection

from tenantfleet import locks, runs


@dataclass(frozen=True)
class OpenRun:
    run: runs.Run
    tally: runs.Counts
    alive: bool
    idle_seconds: float


def open_runs(connection: Connection, stale_after: float) -> list[OpenRun]:
    """Every open run, after closing those that only waited for their callback."""
    found = []
    for run in runs.open_runs(connection):
        if runs.finalize(connection, run.id) is not None:
            continue
        pending = [t.label for t in runs.tenants_of(connection, run.id, runs.PENDING)]
        idle = runs.idle_seconds(connection, run.id)
        recent = run.dispatched_at is not None and idle < stale_after
        sending = bool(locks.held(connection, [locks.dispatching(run.uid)]))
        alive = recent or sending or bool(locks.held(connection, pending))
        found.append(OpenRun(run, runs.counts(connection, run.id), alive, idle))
    return found


def active_run(connection: Connection, stale_after: float) -> OpenRun | None:
    return next((o for o in open_runs(connection, stale_after) if o.alive), None)
