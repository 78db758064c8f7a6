"""Worker pools of different databases on one broker never take each other's tasks.

Each database has queues of its own (``tenantfleet.queues``): a worker pointed at the wrong
database leaves the producer's tenants pending and untouched, and the producer says so within
seconds; two databases cloned from one template, with runs of the same id, each migrate their
own tenants to their own target.
"""

import json
from pathlib import Path

import pytest

from tenantfleet import fleet_setup, processes, runs
from tests import helpers
from tests.fleet import running_fleet

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
