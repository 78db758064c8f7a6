"""Following a run through the run tables until it (or some of its tenants) is done.

What a person waiting on a deploy needs to hear is said here, within seconds: no worker consumes
this database's queue (or only workers of another database answer); the database is unreachable
and the wait goes on; nothing has moved for a while and lost tenants were sent again. The wait
ends when the run closes, at ``--timeout`` (``None`` back), or after an outage longer than
``OUTAGE_LIMIT_S`` with no timeout given (``StoppedFollowing``, exit 3: the run goes on).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine

from tenantfleet import db, ledger, runs
from tenantfleet.errors import EXIT_TIMEOUT, TenantfleetError
from tenantfleet.queues import Queues

FINALIZE_GRACE_SECONDS = 3.0
NO_WORKER_CHECK_AFTER_S = 3.0
"""With nothing finished for this long, ask the workers which queues they consume."""
WORKER_CHECK_EVERY_S = 10.0
OUTAGE_LIMIT_S = 600.0
"""Without ``--timeout``, stop following after the database was unreachable this long."""
OUTAGE_SAY_EVERY_S = 15.0
INSPECT_TIMEOUT_S = 1.0

Say = Callable[[str], None]
ProgressCallback = Callable[[runs.Counts, float], None]
T = TypeVar("T")


class StoppedFollowing(TenantfleetError):
    """The command stops following; the run goes on (exit 3, as for ``--timeout``)."""

    exit_code = EXIT_TIMEOUT


def quiet(_: str) -> None:
    """Say nothing."""


@dataclass
class Watch:
    """How a command follows a run: its clock, timeout, progress display and watchdog."""

    started: float = field(default_factory=time.monotonic)
    timeout: float | None = None
    poll_interval: float = 0.1
    stall_after: float = 0.0
    on_progress: ProgressCallback | None = None
    on_stall: Callable[[int], None] | None = None
    """Called with the run id when no tenant finished for ``stall_after`` seconds."""
    say: Say = quiet
    app: Any = None
    queues: Queues | None = None
    target: str | None = None
    """The run's target revision: the watchdog asks whether any live worker knows it."""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return self.timeout is not None and self.elapsed() >= self.timeout


def consumers(
    app: Any, queues: Queues, expected: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """(workers consuming this database's tenant queue, workers answering that do not).

    A question to every worker waits out ``INSPECT_TIMEOUT_S``: on Redis nobody knows how many
    will answer. ``expected`` (the workers working on a run: ``runs.working_on``) are asked
    alone first, and answer within milliseconds; everyone is asked when one of them does not
    answer or does not consume the queue."""
    if expected:
        answers = _active_queues(app, destination=list(expected), limit=len(expected))
        if set(answers) == set(expected) and all(_consumes(qs, queues) for qs in answers.values()):
            return sorted(answers), []
    answers = _active_queues(app)
    ours = sorted(w for w, qs in answers.items() if _consumes(qs, queues))
    others = sorted(w for w in answers if w not in ours)
    return ours, others


def _active_queues(app: Any, **whom: Any) -> dict[str, Any]:
    try:
        return app.control.inspect(timeout=INSPECT_TIMEOUT_S, **whom).active_queues() or {}
    except Exception:
        return {}


def _consumes(answer: Any, queues: Queues) -> bool:
    return any(q["name"] == queues.tenants for q in answer)


def knowing(app: Any, workers: Sequence[str], revision: str) -> list[str]:
    """Which of ``workers`` define ``revision`` in their tenant scripts (each reads them again
    from disk if not yet)."""
    try:
        replies = app.control.broadcast(
            "tenantfleet_knows",
            arguments={"revision": revision},
            destination=list(workers),
            reply=True,
            timeout=INSPECT_TIMEOUT_S,
        )
    except Exception:
        return list(workers)  # cannot tell: say nothing
    answers = {name: body for reply in replies or [] for name, body in reply.items()}
    return sorted(w for w, body in answers.items() if isinstance(body, dict) and body.get("knows"))


def waiting_for(
    app: Any, queues: Queues, target: str, expected: Sequence[str] = ()
) -> tuple[list[str], str | None]:
    """(the workers that consume this database's tenant queue, why tenants would wait: no such
    worker, or none of them knows ``target``; None when some worker can take them).
    ``expected``: as for ``consumers``."""
    ours, others = consumers(app, queues, expected)
    if not ours:
        message = f"no worker consumes this database's tenant queue ({queues.tenants})"
        if others:
            return ours, message + (
                f"; {len(others)} {'worker answers' if len(others) == 1 else 'workers answer'}"
                " for other databases' queues"
                f" ({', '.join(others[:3])}): are they pointed at another database?"
            )
        return ours, message + (
            "; start one with `tenantfleet worker` (same TENANTFLEET_DATABASE_URL)"
        )
    if not knowing(app, ours, target):
        return ours, (
            f"no live worker knows revision {target}: the {_workers(len(ours))} consuming"
            " this database's queue run older tenant scripts (a deploy not finished?); their"
            " tasks are handed back and wait, untouched"
        )
    return ours, None


def _workers(count: int) -> str:
    return "worker" if count == 1 else f"{count} workers"


class _Outage:
    """The database is unreachable: say so now and then, give up only at the limit."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.since: float | None = None
        self.said = 0.0

    def note(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.since = self.since or now
        down_for = now - self.since
        if self.watch.timeout is None and down_for > OUTAGE_LIMIT_S:
            raise StoppedFollowing(
                f"the database has been unreachable for {down_for:.0f} s; the run goes on"
                " (workers retry until it is back): follow it with `tenantfleet status`"
            )
        if now - self.said >= OUTAGE_SAY_EVERY_S:
            self.said = now
            self.watch.say(
                f"the database is unreachable ({db.first_line(exc)}); waiting for it"
                f" ({down_for:.0f} s so far)"
            )

    def over(self) -> None:
        if self.since is not None:
            self.watch.say("the database answers again; following the run")
            self.since = None


def patiently(watch: Watch, work: Callable[[], T]) -> T:
    """``work()``, tried again while the database is unreachable (said, as while following),
    until it is back; ``StoppedFollowing`` at the watch's timeout or the outage limit. For what
    a command must still do once its run exists: an outage then is no reason for exit 2."""
    outage = _Outage(watch)
    while True:
        try:
            result = work()
        except Exception as exc:
            if not db.is_unreachable(exc):
                raise
            outage.note(exc)
            if watch.expired():
                raise StoppedFollowing(
                    "--timeout reached while the database was unreachable; the run goes on"
                ) from None
            time.sleep(max(watch.poll_interval, 0.5))
            continue
        outage.over()
        return result


class _Loop:
    """The polling loop shared by every wait: progress, watchdogs, outage, timeout."""

    def __init__(self, engine: Engine, run_id: int, watch: Watch) -> None:
        self.engine = engine
        self.run_id = run_id
        self.watch = watch
        self.last_done = -1
        self.last_change = time.monotonic()
        self.next_worker_check = 0.0
        self.next_stall = 0.0
        self.workers_missing = False
        self.outage = _Outage(watch)

    def run(self, look: Callable[[Connection], tuple[T | None, runs.Counts]]) -> T | None:
        watch = self.watch
        while True:
            try:
                with db.connect(self.engine) as connection:
                    result, tally = look(connection)
            except Exception as exc:
                if not db.is_unreachable(exc):
                    raise
                self.outage.note(exc)
                if watch.expired():
                    return None
                time.sleep(max(watch.poll_interval, 0.5))
                continue
            self.outage.over()
            if result is not None:
                return result
            if watch.on_progress is not None:
                watch.on_progress(tally, watch.elapsed())
            self._watchdogs(tally)
            if watch.expired():
                return None
            time.sleep(watch.poll_interval)

    def _watchdogs(self, tally: runs.Counts) -> None:
        watch = self.watch
        now = time.monotonic()
        if tally.done != self.last_done:
            self.last_done, self.last_change = tally.done, now
        quiet = now - self.last_change
        if (
            watch.app is not None
            and watch.queues is not None
            and watch.target is not None
            and quiet >= NO_WORKER_CHECK_AFTER_S
            and now >= self.next_worker_check
        ):
            self.next_worker_check = now + WORKER_CHECK_EVERY_S
            ours, reason = waiting_for(watch.app, watch.queues, watch.target)
            if reason is not None:
                self.workers_missing = True
                watch.say(reason)
            elif self.workers_missing:
                self.workers_missing = False
                watch.say(f"worker {ours[0]} takes this database's tenants now")
        if (
            watch.on_stall is not None
            and watch.stall_after > 0
            and quiet >= watch.stall_after
            and now >= self.next_stall
            and not self.workers_missing
        ):
            self.next_stall = now + watch.stall_after
            watch.on_stall(self.run_id)


def until_closed(engine: Engine, run_id: int, watch: Watch) -> runs.Run | None:
    """Follow the run until it is closed; None at ``watch.timeout``.

    The chord callback closes the run; if every tenant is final and it still has not, after a
    grace period, the follower closes it itself (the chord state may have been lost). A closed
    run is followed until its backfills are done or failed too.
    """
    settled_at: list[float] = []

    def look(connection: Connection) -> tuple[runs.Run | None, runs.Counts]:
        run = runs.get_run(connection, run_id)
        tally = runs.counts(connection, run_id)
        if run.finished_at is not None:
            # its tenants' backfills too (tenantfleet.backfill): the deploy ends when they do
            return (None if ledger.open_of_run(connection, run_id) else run), tally
        if tally.pending == 0:
            settled_at.append(time.monotonic())
            if settled_at[-1] - settled_at[0] >= FINALIZE_GRACE_SECONDS:
                closed = runs.finalize(connection, run_id)
                connection.commit()
                return closed, tally
        return None, tally

    return _Loop(engine, run_id, watch).run(look)


def until_final(
    engine: Engine, run_id: int, schemas: Sequence[str], watch: Watch
) -> dict[str, str] | None:
    """Follow until every one of ``schemas`` is final in the run; their statuses, or None at
    ``watch.timeout``."""

    def look(connection: Connection) -> tuple[dict[str, str] | None, runs.Counts]:
        tally = runs.counts(connection, run_id, schemas)
        if tally.pending == 0:
            return runs.statuses(connection, run_id, schemas), tally
        return None, tally

    return _Loop(engine, run_id, watch).run(look)
