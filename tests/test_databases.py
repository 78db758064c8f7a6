"""Worker pools of different databases on one broker never take each other's tasks.

Each database has queues of its own (``tenantfleet.queues``): a worker pointed at the wrong
database leaves the producer's tenants pending and untouched, and the producer says so within
seconds; two databases cloned from one template, with runs of the same id, each migrate their
own tenants to their own target.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from tenantfleet import fleet_setup, processes, runs
from tests import helpers
from tests.stack import running_fleet

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


def test_a_worker_on_another_database_is_named_and_touches_nothing(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    with (
        running_fleet(pg_admin_url, template_url, tmp_path / "a", concurrency=0) as ours,
        running_fleet(pg_admin_url, template_url, tmp_path / "b", concurrency=1) as theirs,
    ):
        schemas = fleet_setup.fleet_names(5, prefix="wd")
        fleet_setup.provision(ours.engine, schemas, R1)
        fleet_setup.provision(theirs.engine, schemas, R1)
        waited = helpers.run_cli(
            "migrate",
            "--wait",
            "--timeout",
            "8",
            env={"TENANTFLEET_DATABASE_URL": ours.database_url},
            timeout=120,
        )
        assert waited.code == 3, waited.err
        assert "no worker consumes this database's tenant queue" in waited.err
        assert "pointed at another database" in waited.err
        run_id = int(waited.out.split()[1].rstrip(":"))
        with ours.engine.connect() as connection:
            assert runs.counts(connection, run_id).queued == 5  # pending, untouched
        assert set(ours.revisions(schemas).values()) == {R1}
        assert set(theirs.revisions(schemas).values()) == {R1}
        status = helpers.run_cli(
            "status", str(run_id), "--json", env={"TENANTFLEET_DATABASE_URL": ours.database_url}
        )
        assert "pointed at another database" in json.loads(status.out)["waiting_for"]

        worker = ours.start_worker(1)
        try:
            finished = helpers.run_cli(
                "resume",
                str(run_id),
                "--wait",
                env={"TENANTFLEET_DATABASE_URL": ours.database_url},
                timeout=300,
            )
            assert finished.code == 0, finished.err
        finally:
            processes.stop(worker)
        assert set(ours.revisions(schemas).values()) == {R3}
        assert set(theirs.revisions(schemas).values()) == {R1}


@pytest.mark.parametrize("tenants", [40])
def test_two_databases_from_one_template_with_the_same_run_ids_stay_apart(
    pg_admin_url: str, template_url: str, tmp_path: Path, tenants: int
) -> None:
    with (
        running_fleet(pg_admin_url, template_url, tmp_path / "a") as first,
        running_fleet(pg_admin_url, template_url, tmp_path / "b") as second,
    ):
        schemas = fleet_setup.fleet_names(tenants, prefix="tw")
        fleet_setup.provision(first.engine, schemas, R1)
        fleet_setup.provision(second.engine, schemas, R1)
        runs_started = []
        for stack, target in ((first, R2), (second, R3)):
            started = helpers.run_cli(
                "migrate",
                "--revision",
                target,
                env={"TENANTFLEET_DATABASE_URL": stack.database_url},
            )
            assert started.code == 0, started.err
            runs_started.append(int(started.out.split()[1]))
        assert runs_started[0] == runs_started[1]  # the same id in both databases
        for stack, run_id, target in ((first, runs_started[0], R2), (second, runs_started[1], R3)):
            closed = stack.until_closed(run_id)
            assert closed is not None and closed.status == "succeeded"
            assert closed.succeeded == tenants
            assert set(stack.revisions(schemas).values()) == {target}


def lines_of(stream: IO[str] | None) -> list[str]:
    """The lines ``stream`` prints, collected as they come (a reader thread)."""
    collected: list[str] = []
    assert stream is not None
    threading.Thread(target=lambda: collected.extend(stream), daemon=True).start()
    return collected


def wait_for_line(lines: list[str], text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in list(lines)):
        assert time.monotonic() < deadline, lines
        time.sleep(0.1)


def test_waits_end_at_the_timeout_canaries_and_active_runs_included(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    """No worker yet: ``--wait-for-active`` and the canary phase both stop at ``--timeout``
    (exit 3) and say why; Ctrl-C is exit 130; once a worker comes, ``resume`` finishes."""
    with running_fleet(pg_admin_url, template_url, tmp_path, concurrency=0) as idle:
        schemas = fleet_setup.fleet_names(6, prefix="ct")
        fleet_setup.provision(idle.engine, schemas, R1)
        env = {"TENANTFLEET_DATABASE_URL": idle.database_url}
        with subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", "migrate", "--canary", "1", "--wait"],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # a shell without job control starts `pytest &` with SIGINT ignored, and Python
            # keeps an ignored SIGINT: give the child the default, as a terminal would
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        ) as first:

            def recorded() -> bool:  # the first run is recorded, its canary sent
                with idle.engine.connect() as connection:
                    return bool(runs.list_runs(connection, 1))

            helpers.wait_for(recorded, "the first run to be recorded", timeout=60)
            second = helpers.run_cli(
                "migrate", "--wait", "--wait-for-active", "--timeout", "2", env=env
            )
            assert second.code == 3, second.err
            assert "--timeout reached while waiting for run" in second.err
            said = lines_of(first.stderr)
            wait_for_line(said, "no worker consumes this database's tenant queue")
            first.send_signal(signal.SIGINT)
            assert first.wait(timeout=120) == 130, said

        third = helpers.run_cli("migrate", "--canary", "1", "--wait", "--timeout", "3", env=env)
        assert third.code == 3, third.err
        assert "while wave 1 of run" in third.err  # the canary is wave 1 of 2
        run_id = int(third.err.split("wave 1 of run ")[1].split()[0])
        with idle.engine.connect() as connection:
            assert runs.counts(connection, run_id).queued == 6  # nothing touched, nothing lost
        worker = idle.start_worker(1)
        try:
            resumed = helpers.run_cli(
                "resume", str(run_id), "--wait", "--json", env=env, timeout=300
            )
            # the interrupted run's canary message was still queued (FIFO: it comes first): it
            # moved ct00001, and this run records the tenant moved by that run, not moved twice;
            # its canary did not succeed, so the rest is skipped, untouched
            assert resumed.code == 1, resumed.err
            tenants = {t["schema"]: t for t in json.loads(resumed.out)["tenants"]}
            canary = tenants["ct00001"]
            assert canary["status"] == "skipped", canary
            assert f"moved by run {run_id - 1}" in canary["error"]
            with idle.engine.connect() as connection:
                moved = runs.tenants_of(connection, run_id - 1, ["succeeded"])
            assert [t.schema_name for t in moved] == ["ct00001"]
            again = helpers.run_cli("migrate", "--wait", env=env, timeout=300)
            assert again.code == 0, again.err
        finally:
            processes.stop(worker)
        assert set(idle.revisions(schemas).values()) == {R3}
