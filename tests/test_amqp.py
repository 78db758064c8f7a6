"""The app's own RabbitMQ as the broker (``amqp://``), a Redis result backend for the chord.

Workers, Flower and the CLI run as real processes on this machine's RabbitMQ, in a vhost the
test creates and deletes (the default vhost's queues are never touched). The same guarantees as
on Redis: a failing tenant fails alone, a worker killed mid-run loses nothing, and a broker that
lost its queues loses no tenant (``resume``).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantfleet import db, fleet_setup, processes, runs
from tenantfleet.queues import of_database
from tests import helpers
from tests.helpers import wait_for
from tests.stack import free_port, until_flower_listens

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"
RABBITMQCTL = shutil.which("rabbitmqctl")


def rabbitmqctl(*args: str) -> str:
    assert RABBITMQCTL is not None
    done = subprocess.run(
        [RABBITMQCTL, "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.fixture
def vhost() -> Iterator[str]:
    if RABBITMQCTL is None:
        pytest.skip("no rabbitmqctl on this machine: RabbitMQ is not installed")
    name = f"tf_{uuid.uuid4().hex[:10]}"
    try:
        rabbitmqctl("add_vhost", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"RabbitMQ is not running here: {exc.stderr.strip()}")
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    yield name
    rabbitmqctl("delete_vhost", name)


class Amqp:
    """A database, the vhost as broker, the test Redis as result backend; real processes."""

    def __init__(self, url: str, vhost: str, backend: str, logs: Path) -> None:
        self.url = url
        self.engine = db.make_engine(url)
        self.vhost = vhost
        self.logs = logs
        self.env = {
            **os.environ,
            "TENANTFLEET_DATABASE_URL": url,
            "TENANTFLEET_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
            "TENANTFLEET_RESULT_BACKEND": backend,
            "TENANTFLEET_STALL_RESUME": "3",
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def cli(self, *args: str) -> helpers.Result:
        return helpers.run_cli(*args, env=self.env, timeout=300)

    def start_worker(self) -> "subprocess.Popen[bytes]":
        log = self.logs / "worker.log"
        ready = log.read_text().count(" ready.") if log.exists() else 0
        worker = processes.spawn(processes.worker_argv(2, hostname="amqp@%h"), self.env, log)
        self.processes.append(worker)
        deadline = time.monotonic() + 60
        while not log.exists() or log.read_text().count(" ready.") <= ready:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.1)
        return worker

    def tally(self, run_id: int) -> runs.Counts:
        with self.engine.connect() as connection:
            return runs.counts(connection, run_id)

    def close(self) -> None:
        for process in self.processes:
            processes.stop(process, timeout=10)
        self.engine.dispose()


@pytest.fixture
def amqp(
    vhost: str, pg_admin_url: str, template_url: str, redis_url: str, tmp_path: Path
) -> Iterator[Amqp]:
    url = helpers.create_database(pg_admin_url, template=helpers.database_name(template_url))
    stack = Amqp(url, vhost, redis_url, tmp_path)
    yield stack
    stack.close()
    helpers.drop_database(pg_admin_url, url)


def test_a_fleet_on_rabbitmq_fails_alone_survives_a_killed_worker_and_a_lost_queue(
    amqp: Amqp,
) -> None:
    schemas = fleet_setup.fleet_names(40, prefix="mq")
    fleet_setup.provision(amqp.engine, schemas, R1)
    with amqp.engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE mq00007.audit_log (id int)"))
    port = free_port()
    flower = processes.spawn(
        processes.flower_argv("127.0.0.1", port),
        {**amqp.env, "FLOWER_UNAUTHENTICATED_API": "true"},
        amqp.logs / "flower.log",
    )
    amqp.processes.append(flower)
    until_flower_listens(f"http://127.0.0.1:{port}", amqp.env)
    worker = amqp.start_worker()

    # 1. a failing tenant fails alone; Flower sees the tasks
    first = amqp.cli("migrate", "--wait", "--json", "--revision", R2)
    assert first.code == 1, first.err
    report = json.loads(first.out)
    assert (report["counts"]["succeeded"], report["counts"]["failed"]) == (39, 1)
    address = f"http://127.0.0.1:{port}/api/tasks?taskname=tenantfleet.migrate_tenant"
    wait_for(lambda: len(json.load(urllib.request.urlopen(address, timeout=10))) >= 40)

    # 2. the whole worker killed mid-run: its unacked tasks come back, nothing is lost
    with amqp.engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE mq00007.audit_log"))
    blocker = amqp.engine.connect()
    transaction = blocker.begin()
    blocker.execute(sa.text("LOCK TABLE mq00003.users IN ACCESS EXCLUSIVE MODE"))
    producer = subprocess.Popen(
        [sys.executable, "-m", "tenantfleet", "migrate", "--wait", "--json"],
        env=amqp.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: _has_run(amqp, 2) and amqp.tally(2).running >= 1)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    transaction.rollback()
    blocker.close()
    amqp.start_worker()
    out, err = producer.communicate(timeout=300)
    assert producer.returncode == 0, err
    assert json.loads(out)["counts"]["succeeded"] == 40

    # 3. the broker lost its queue: resume sends the lost tenants again
    for process in amqp.processes[1:]:
        processes.stop(process, timeout=10)
    fleet_setup.provision(amqp.engine, schemas[:10], R1)
    queued = amqp.cli("migrate")
    assert queued.code == 0, queued.err
    run_id = int(queued.out.split()[1])
    with amqp.engine.connect() as connection:
        queue = of_database(connection).tenants
    rabbitmqctl("purge_queue", "-p", amqp.vhost, queue)
    amqp.start_worker()
    resumed = amqp.cli("resume", str(run_id), "--wait", "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out)["counts"]["succeeded"] == 10
    with amqp.engine.connect() as connection:
        assert runs.counts(connection, run_id).succeeded == 10


def _has_run(amqp: Amqp, run_id: int) -> bool:
    with amqp.engine.connect() as connection:
        return any(r.id == run_id for r in runs.list_runs(connection, 5))


def test_the_benchmark_runs_on_rabbitmq_and_counts_the_chords_redis(
    vhost: str, pg_admin_url: str, redis_url: str, repo_root: Path, tmp_path: Path
) -> None:
    """``bench/fleet_bench.py`` with a RabbitMQ broker: the fleet and the floor run; the Redis it
    counts is the result backend's (the chord's commands, no queue's); the queues of the copies
    it dropped and their exchanges are gone from the broker (the workers' default exchange
    stays); ``--enqueue``, which weighs a queue in Redis, is refused in one line."""
    env = {
        "TENANTFLEET_BROKER_URL": f"amqp://guest:guest@127.0.0.1:5672/{vhost}",
        "TENANTFLEET_RESULT_BACKEND": redis_url,
    }
    argv = ["--tenants", "20", "--repeat", "1", "--contenders", "fleet,floor", "--json"]
    result = helpers.run_bench(pg_admin_url, repo_root, tmp_path, "w1", *argv, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["broker"] == "amqp"
    assert report["ratios"]["fleet_over_floor"] > 0
    counted = report["fleet"]["footprint"]["redis_top_commands_per_tenant"]
    assert "evalsha" in counted and "brpop" not in counted, counted
    left = [
        *rabbitmqctl("list_queues", "-p", vhost, "name").split(),
        *rabbitmqctl("list_exchanges", "-p", vhost, "name").split(),
    ]
    assert [n for n in left if n.startswith("tenantfleet.")] == ["tenantfleet.unrouted"], left
    refused = helpers.run_bench(
        pg_admin_url, repo_root, tmp_path, "w1", "--tenants", "20", "--enqueue", env=env
    )
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "fleet_bench: --enqueue weighs the queue in Redis's memory: it needs a Redis broker"
    ]
