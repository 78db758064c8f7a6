"""A model-based test of the operator commands: Hypothesis drives random sequences of them
against real PostgreSQL, Redis, worker processes and the real CLI, and checks after every step
what must always hold.

Commands: ``migrate`` (plain, held waves, a canary, a failure budget), ``continue``, ``cancel``,
``resume``, ``retry``, ``rollback``, the producer of a held run killed, a worker process killed
while a run goes on, the broker flushed, a tenant moved by hand (``tenant upgrade`` or
``downgrade``, plain ``alembic -x schema=S upgrade``). After every step:

- every tenant of every run is accounted for exactly once (one row each, ``total`` of them);
- at most one run is active, and a held run is never overtaken (no run is newer than it);
- each tenant's history, its runs' recorded moves and the moves made by hand in time order,
  is one chain from where it was provisioned to where its schema is: no move counted twice, the
  recorded from-revision always where the schema really was;
- no tenant ever goes lower except by a rollback run or a downgrade asked for by hand.

``TENANTFLEET_MODEL_EXAMPLES`` sets how many sequences run (CI: 8; a release: 200), of
``TENANTFLEET_MODEL_STEPS`` steps (8); ``pytest --hypothesis-seed=N`` replays a seed. A failing
sequence is printed shrunk by Hypothesis.
"""

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tenantfleet import guard, runs
from tenantfleet.states import RunState
from tests import helpers
from tests.stack import Stack, running_fleet

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"
ORDER = {None: 0, R1: 1, R2: 2, R3: 3}
TENANTS = 4
EXAMPLES = int(os.environ.get("TENANTFLEET_MODEL_EXAMPLES", "8"))
STEPS = int(os.environ.get("TENANTFLEET_MODEL_STEPS", "8"))
WAIT = "120"
TENANT_INI = Path(__file__).resolve().parent.parent / "migrations" / "tenant" / "alembic.ini"


@pytest.fixture(scope="module")
def model_stack(
    pg_admin_url: str, template_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with running_fleet(pg_admin_url, template_url, tmp_path_factory.mktemp("model")) as stack:
        yield stack


@dataclass(frozen=True)
class HandMove:
    schema: str
    from_revision: str | None
    to_revision: str | None
    at: datetime


class Operators(RuleBasedStateMachine):
    """One fleet of ``TENANTS`` tenants per example, on the module's running stack."""

    stack: Stack
    broker: redis.Redis

    def __init__(self) -> None:
        super().__init__()
        self.schemas: list[str] = []
        self.hand: list[HandMove] = []
        self.producer: subprocess.Popen[str] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.first_run = 0

    # -- helpers ---------------------------------------------------------------------------

    def cli(self, *args: str) -> helpers.Result:
        return self.stack.cli(*args)

    def runs_of_fleet(self) -> list[runs.Run]:
        with self.stack.engine.connect() as connection:
            return [r for r in runs.list_runs(connection, 1000) if r.id >= self.first_run]

    def open_run(self) -> runs.Run | None:
        return next((r for r in self.runs_of_fleet() if r.finished_at is None), None)

    def revisions(self) -> dict[str, str | None]:
        return self.stack.revisions(self.schemas)

    def settle(self, run_id: int) -> None:
        """Wait until the run is held or closed (nothing of it in flight)."""

        def settled() -> bool:
            with self.stack.engine.connect() as connection:
                run = runs.get_run(connection, run_id)
                if run.finished_at is not None:
                    return True
                at = runs.counts_by_wave(connection, run_id).get(run.wave or 0)
                return run.status == RunState.HELD and (at is None or at.pending == 0)

        helpers.wait_for(settled, f"run {run_id} to be held or closed", timeout=180)

    def settle_open(self) -> None:
        """A run left open by a command (a resume of a run whose producer is gone) settles."""
        found = self.open_run()
        if found is not None and found.status != RunState.HELD:
            follow = self.cli("resume", str(found.id), "--wait", "--timeout", WAIT)
            assert follow.code in (0, 1, 2, 3), follow.err
            self.settle(found.id)

    # -- rules -----------------------------------------------------------------------------

    @initialize()
    def a_fresh_fleet(self) -> None:
        self.stack.deactivate_all()
        with self.stack.engine.begin() as connection:  # runs of earlier examples are over
            for run in runs.open_runs(connection):
                runs.cancel(connection, run.id, "the model starts a new fleet")
                runs.finalize(connection, run.id)
        self.first_run = max((r.id for r in self.runs_of_fleet()), default=0) + 1
        self.schemas = self.stack.provision(f"m{uuid.uuid4().hex[:6]}_", TENANTS)

    @rule(
        revision=st.sampled_from([R2, R3]),
        shape=st.sampled_from(["plain", "hold", "hold", "canary", "budget"]),
    )
    def migrate(self, revision: str, shape: str) -> None:
        held_before = self.open_run()
        if shape == "hold":
            if self.producer is not None and self.producer.poll() is None:
                return  # one producer of ours at a time
            self.producer = self.stack.cli_background(
                "migrate", "--revision", revision, "--wave", "1", "--wave-hold", "--wait"
            )
            assert self.producer.stderr is not None
            for line in self.producer.stderr:  # held, refused, or nothing to do
                if "`tenantfleet continue" in line:
                    break
            opened = self.open_run()
            if opened is not None:
                self.settle(opened.id)
            return
        extra = {"plain": [], "canary": ["--canary", "1"], "budget": ["--max-failures", "1"]}
        args = ["--revision", revision, *extra[shape], "--wait", "--timeout", WAIT]
        result = self.cli("migrate", *args)
        if held_before is not None and held_before.status == RunState.HELD:
            assert result.code == 2 and f"run {held_before.id} is held" in result.err, result
        assert result.code in (0, 1, 2), result.err
        self.settle_open()

    @precondition(lambda self: self.open_run() is not None)
    @rule()
    def continue_(self) -> None:
        found = self.open_run()
        assert found is not None
        result = self.cli("continue", str(found.id), "--timeout", WAIT)
        if found.status != RunState.HELD:
            assert result.code in (0, 2), result.err
            self.settle_open()
            return
        assert result.code == 0, result.err
        self.settle(found.id)

    @precondition(lambda self: self.open_run() is not None)
    @rule()
    def cancel(self) -> None:
        found = self.open_run()
        assert found is not None
        assert self.cli("cancel", str(found.id)).code == 0
        closed = self.stack.until_closed(found.id, timeout=180)
        assert closed is not None and closed.status == RunState.CANCELLED

    @precondition(lambda self: self.open_run() is not None)
    @rule()
    def resume(self) -> None:
        found = self.open_run()
        assert found is not None
        result = self.cli("resume", str(found.id), "--wait", "--timeout", WAIT)
        if found.status == RunState.HELD:
            assert result.code == 2 and "continue" in result.err, result
        else:
            assert result.code in (0, 1), result.err
        self.settle(found.id)

    @precondition(lambda self: any(r.finished_at for r in self.runs_of_fleet()))
    @rule()
    def retry(self) -> None:
        closed = [r for r in self.runs_of_fleet() if r.finished_at is not None]
        if not closed:
            return
        result = self.cli("retry", str(closed[0].id), "--wait", "--timeout", WAIT)
        assert result.code in (0, 1, 2), result.err
        self.settle_open()

    @precondition(lambda self: any(r.succeeded for r in self.runs_of_fleet()))
    @rule()
    def rollback(self) -> None:
        done = [
            r
            for r in self.runs_of_fleet()
            if r.finished_at is not None and not r.options.get("rollback_of") and r.succeeded
        ]
        if not done:
            return
        result = self.cli("rollback", str(done[0].id), "--yes", "--wait", "--timeout", WAIT)
        assert result.code in (0, 1, 2), result.err
        assert "Traceback" not in result.err
        self.settle_open()

    @precondition(lambda self: self.producer is not None and self.producer.poll() is None)
    @rule()
    def kill_the_producer(self) -> None:
        assert self.producer is not None
        self.producer.kill()
        self.producer.communicate()
        found = self.open_run()
        if found is not None:  # held means held, producer or not
            self.settle(found.id)
            with self.stack.engine.connect() as connection:
                now = runs.get_run(connection, found.id)
            assert now.finished_at is not None or now.status == RunState.HELD, now

    @rule()
    def kill_a_worker_during_a_run(self) -> None:
        """A third worker process takes part in a run and is killed (SIGKILL, its whole process
        group) once the run has begun: its tenant, if it had one, is delivered again."""
        extra = self.stack.start_worker(1)
        running = self.stack.cli_background("migrate", "--wait", "--timeout", WAIT)
        try:

            def begun() -> bool:
                with self.stack.engine.connect() as connection:
                    newest = runs.list_runs(connection, 1)
                return running.poll() is not None or bool(
                    newest and newest[0].id >= self.first_run and newest[0].dispatched_at
                )

            helpers.wait_for(begun, "the run to be sent", timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(extra.pid, signal.SIGKILL)
            extra.wait()
            running.communicate(timeout=300)
        self.settle_open()

    @rule()
    def flush_the_broker(self) -> None:
        self.broker.flushall()

    @rule(index=st.integers(0, TENANTS - 1), to=st.sampled_from([R1, R2, R3]), plain=st.booleans())
    def move_a_tenant_by_hand(self, index: int, to: str, plain: bool) -> None:
        found = self.open_run()
        if found is not None and found.status != RunState.HELD:
            return  # by hand between runs, or while one is held
        self._move(self.schemas[index], to, plain)

    def held_run_waiting(self) -> list[str]:
        """The tenants of a held run's waves not sent yet (none without a held run)."""
        found = self.open_run()
        if found is None or found.status != RunState.HELD:
            return []
        with self.stack.engine.connect() as connection:
            return [t.schema_name for t in runs.tenants_of(connection, found.id, ["queued"])]

    @precondition(lambda self: self.held_run_waiting())
    @rule(pick=st.integers(0, TENANTS - 1), to=st.sampled_from([R1, R2, R3]), plain=st.booleans())
    def move_a_held_runs_tenant_by_hand(self, pick: int, to: str, plain: bool) -> None:
        """The interleaving the lifecycle must survive: a tenant a held run will move next is
        moved by someone else first."""
        waiting = self.held_run_waiting()
        self._move(waiting[pick % len(waiting)], to, plain)

    def _move(self, schema: str, to: str, plain: bool) -> None:
        before = self.revisions()[schema]
        if before == to:
            return
        down = ORDER[to] < ORDER[before]
        if plain and not down:  # plain Alembic, as a developer would on one tenant
            moved = subprocess.run(
                [sys.executable, "-m", "alembic", "-c", str(TENANT_INI), "-x", f"schema={schema}"]
                + ["upgrade", to],
                env={**os.environ, "TENANTFLEET_DATABASE_URL": self.stack.database_url},
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert moved.returncode == 0, moved.stderr
        else:
            verb = "downgrade" if down else "upgrade"
            result = self.cli("tenant", verb, schema, "--revision", to)
            assert result.code == 0, result.err
        with self.stack.engine.connect() as connection:
            at = connection.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
        self.hand.append(HandMove(schema, before, to, at))

    # -- what must always hold ---------------------------------------------------------------

    @invariant()
    def every_tenant_of_every_run_is_accounted_for_once(self) -> None:
        with self.stack.engine.connect() as connection:
            for run in self.runs_of_fleet():
                rows = runs.tenants_of(connection, run.id)
                assert len(rows) == len({r.schema_name for r in rows}) == run.total, run

    @invariant()
    def at_most_one_run_is_active_and_a_held_one_is_never_overtaken(self) -> None:
        with self.stack.engine.begin() as connection:
            alive = [o for o in guard.open_runs(connection, 600) if o.alive]
        assert len(alive) <= 1, alive
        held = [r for r in self.runs_of_fleet() if r.status == RunState.HELD]
        if held:
            assert max(r.id for r in self.runs_of_fleet()) == held[0].id

    @invariant()
    def each_tenants_history_is_one_chain_to_where_it_is(self) -> None:
        if not self.schemas:
            return
        now = self.revisions()
        with self.stack.engine.connect() as connection:
            moves = connection.execute(
                sa.text(
                    "SELECT t.schema_name, t.from_revision, t.to_revision, t.finished_at,"
                    " r.options ? 'rollback_of' AS rollback"
                    " FROM public.migration_run_tenants AS t"
                    " JOIN public.migration_runs AS r ON r.id = t.run_id"
                    " WHERE t.status = 'succeeded' AND t.run_id >= :first"
                    " AND t.schema_name = ANY(:schemas)"
                ),
                {"first": self.first_run, "schemas": self.schemas},
            ).all()
        for schema in self.schemas:
            events = [
                (
                    m.finished_at,
                    m.from_revision,
                    None if m.to_revision == "base" else m.to_revision,
                    m.rollback,
                )
                for m in moves
                if m.schema_name == schema
            ]
            events += [
                (h.at, h.from_revision, h.to_revision, True)
                for h in self.hand
                if h.schema == schema
            ]
            at: str | None = R1
            for when, frm, to, may_go_down in sorted(events, key=lambda e: e[0]):
                assert frm == at, f"{schema}: a move from {frm} at {when}, but it was at {at}"
                assert may_go_down or ORDER[to] >= ORDER[frm], f"{schema} taken down {frm}->{to}"
                at = to
            assert now[schema] == at, f"{schema} is at {now[schema]}, its history ends at {at}"

    def teardown(self) -> None:
        if self.producer is not None and self.producer.poll() is None:
            self.producer.kill()
            self.producer.communicate()


def test_random_sequences_of_operator_commands_keep_every_guarantee(
    model_stack: Stack, redis_url: str
) -> None:
    Operators.stack = model_stack
    Operators.broker = redis.Redis(unix_socket_path=redis_url.removeprefix("redis+socket://"))
    run_state_machine_as_test(
        Operators,
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        ),
    )
