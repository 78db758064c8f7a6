"""Recovery when the broker lost the queue: resume re-enqueues exactly the lost tenants.

In a module of its own: no other worker may be consuming the shared test broker meanwhile.
"""

import json
import time
from pathlib import Path

import redis

from tenantfleet import fleet_setup, processes, runs
from tests import helpers
from tests.stack import running_fleet
from tests.test_fleet import migrate

R1, R3 = "20250102_000001", "20250415_000000"


def test_resume_after_the_broker_queue_was_emptied_completes_the_run(
    pg_admin_url: str, template_url: str, tmp_path: Path, redis_url: str
) -> None:
    with running_fleet(pg_admin_url, template_url, tmp_path, concurrency=0) as idle:
        schemas = fleet_setup.fleet_names(12, prefix="rs")
        fleet_setup.provision(idle.engine, schemas, R1)
        started = migrate(idle)  # enqueued, but no worker is running
        assert started.code == 0
        run_id = int(started.out.split()[1])
        broker = redis.Redis(unix_socket_path=redis_url.removeprefix("redis+socket://"))
        queue = idle.queues.tenants
        assert broker.llen(queue) == 12
        broker.delete(queue)  # the broker lost every queued task
        worker = idle.start_worker()
        try:
            time.sleep(1.0)
            with idle.engine.connect() as connection:
                assert runs.counts(connection, run_id).queued == 12  # nothing will happen
            resumed = helpers.run_cli(
                "resume",
                str(run_id),
                "--wait",
                "--json",
                env={"TENANTFLEET_DATABASE_URL": idle.database_url},
                timeout=300,
            )
            assert resumed.code == 0, resumed.err
            report = json.loads(resumed.out)
            assert report["status"] == "succeeded" and report["counts"]["succeeded"] == 12
            assert all(t["attempts"] == 1 for t in report["tenants"])  # none migrated twice
            assert set(idle.revisions(schemas).values()) == {R3}
        finally:
            processes.stop(worker)
