"""Which run is active: the single-run guard's view of the run tables.

A run is active while it is open and alive. Alive means it is held between waves (``held``: the
hold lives in the database, whether or not its producer lives), or its producer is still
sending its tasks (it holds the run's dispatch lock), or a tenant of it holds its lock (a
migration is in progress right now), or, once every task was sent, something happened to it
within ``TENANTFLEET_STALE_RUN_AFTER`` seconds. An open run that is none of these was abandoned
(its producer died before sending everything, its queue was lost): it blocks nobody, and
``tenantfleet resume`` finishes it. An open run whose tenants are all final is closed on sight.
"""

from dataclasses import dataclass

from sqlalchemy.engine import Connection

from tenantfleet import locks, runs
from tenantfleet.errors import RunActive
from tenantfleet.states import RunState


@dataclass(frozen=True)
class OpenRun:
    run: runs.Run
    tally: runs.Counts
    alive: bool
    idle_seconds: float
    held: bool = False
    """Between waves, waiting for ``continue`` (or its pause): active, never overtaken."""


def is_held(run: runs.Run, wave_pending: int) -> bool:
    """Whether an open run is held between waves: its producer said so (``RunState.HELD``),
    or it asked for a hold (``--wave-hold``), the wave it is at has ended and no one has let it
    go on (its producer died while that wave ran)."""
    if run.status == RunState.HELD:
        return True
    return (
        bool(run.options.get("wave_hold"))
        and run.dispatched_at is None
        and run.wave is not None
        and wave_pending == 0
        and (run.continued_wave or 0) < run.wave
    )


def open_runs(connection: Connection, stale_after: float) -> list[OpenRun]:
    """Every open run, after closing those that only waited for their callback."""
    found = []
    for run in runs.open_runs(connection):
        if runs.finalize(connection, run.id) is not None:
            continue
        idle = runs.idle_seconds(connection, run.id)
        by_wave = runs.counts_by_wave(connection, run.id) if run.wave is not None else {}
        at_wave = by_wave.get(run.wave or 0)
        held = is_held(run, at_wave.pending if at_wave is not None else 0)
        alive = (
            held
            or (run.dispatched_at is not None and idle < stale_after)
            or bool(locks.held(connection, [locks.dispatching(run.uid)]))
            or _holds_a_pending_tenant(connection, run.id)
        )
        found.append(OpenRun(run, runs.counts(connection, run.id), alive, idle, held))
    return found


def _holds_a_pending_tenant(connection: Connection, run_id: int) -> bool:
    """Whether some worker holds the lock of one of the run's pending tenants (asked last: a
    run of 100,000 tenants has as many rows to read)."""
    pending = [t.label for t in runs.tenants_of(connection, run_id, runs.PENDING)]
    return bool(locks.held(connection, pending))


def active_run(connection: Connection, stale_after: float) -> OpenRun | None:
    return next((o for o in open_runs(connection, stale_after) if o.alive), None)


def refuse_if_active(connection: Connection, stale_after: float) -> None:
    """``RunActive`` naming the active run and what to do about it, if there is one."""
    active = active_run(connection, stale_after)
    if active is None:
        return
    run = active.run
    if active.held:
        raise RunActive(
            f"run {run.id} is held at wave {run.wave} ({active.tally.done}/{active.tally.total}"
            f" done, target {run.target_revision}): `tenantfleet continue {run.id}` goes on,"
            f" `tenantfleet cancel {run.id}` stops it"
        )
    raise RunActive(
        f"run {run.id} is active ({active.tally.done}/{active.tally.total} done,"
        f" target {run.target_revision}): wait for it, or pass --wait-for-active"
    )
