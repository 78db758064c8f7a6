"""A running fleet for tests: a database, real ``celery worker`` processes and a real Flower."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import config, db, fleet_setup, follow, processes, runs, versions
from tenantfleet.queues import Queues, of_database
from tests import helpers


@dataclass
class Stack:
    database_url: str
    engine: Engine
    flower_url: str
    logs: Path
    env: dict[str, str]
    background: list["subprocess.Popen[str]"] = field(default_factory=list)

    def start_worker(self, concurrency: int = 2) -> "subprocess.Popen[bytes]":
        from tenantfleet.workers import app

        name = f"fleet-{uuid.uuid4().hex[:6]}@%h"
        worker = processes.spawn(
            processes.worker_argv(
                concurrency, hostname=name, quiet=self.env.get("TENANTFLEET_LOG_FORMAT") == "json"
            ),
            self.env,
            self.logs / "worker.log",
        )
        processes.wait_for_workers(app)
        return worker

    def flower(self, path: str) -> Any:
        with urllib.request.urlopen(self.flower_url + path, timeout=10) as response:
            return json.load(response)

    def failed_in_flower(self, run_id: int, expected: int, timeout: float = 30) -> dict[str, str]:
        """schema -> exception of this run's FAILURE tasks, once Flower shows ``expected``."""
        deadline = time.monotonic() + timeout
        found: dict[str, str] = {}
        while time.monotonic() < deadline:
            tasks = self.flower("/api/tasks?state=FAILURE&taskname=tenantfleet.migrate_tenant")
            found = {}
            for task in tasks.values():
                args = task.get("args") or ""
                if args.startswith(f"({run_id}, "):
                    found[args.split("'")[1]] = task.get("exception") or ""
            if len(found) >= expected:
                return found
            time.sleep(0.3)
        return found

    @property
    def queues(self) -> Queues:
        with self.engine.connect() as connection:
            return of_database(connection)

    def send_by_hand(self, run_id: int, schema: str, target: str, uid: str | None = None) -> Any:
        """One tenant task as the producer sends it, asking for its result (the fleet's own
        tasks store none)."""
        from tenantfleet.tasks.tenant import migrate_tenant

        if uid is None:
            with self.engine.connect() as connection:
                uid = runs.get_run(connection, run_id).uid
        return migrate_tenant.apply_async(
            (run_id, schema, target),
            {"run_uid": uid},
            queue=self.queues.tenants,
            ignore_result=False,
        )

    def until_closed(self, run_id: int, timeout: float = 120) -> runs.Run | None:
        return follow.until_closed(self.engine, run_id, follow.Watch(timeout=timeout))

    def cli(self, *args: str, **env: str) -> helpers.Result:
        """``tenantfleet ARGS`` on this fleet's database, as a subprocess."""
        return helpers.run_cli(
            *args, env={"TENANTFLEET_DATABASE_URL": self.database_url, **env}, timeout=300
        )

    def cli_background(self, *args: str) -> "subprocess.Popen[str]":
        """``tenantfleet ARGS`` on this fleet's database, started and left running (killed and
        reaped when the fleet stops, should the test not have waited for it)."""
        started = subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", *args],
            env={**os.environ, "TENANTFLEET_DATABASE_URL": self.database_url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.background.append(started)
        return started

    def reap(self) -> None:
        for started in self.background:
            if started.poll() is None:
                started.kill()
            started.communicate()

    def provision(self, prefix: str, count: int, revision: str = fleet_setup.R1) -> list[str]:
        """``count`` W1 tenants named ``prefix00001``... at ``revision``."""
        schemas = fleet_setup.fleet_names(count, prefix=prefix)
        fleet_setup.provision(self.engine, schemas, revision)
        return schemas

    def revisions(self, schemas: list[str]) -> dict[str, str | None]:
        with self.engine.connect() as connection:
            return versions.read_versions(connection, schemas)

    def deactivate_all(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.text("UPDATE public.tenant_registry SET is_active = false"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(url)


def until_flower_listens(flower_url: str, env: dict[str, str]) -> None:
    """Flower's event consumer subscribes (binds its queue, on RabbitMQ) after its HTTP server
    answers, and events sent before are lost to it: send a probe worker's heartbeat until Flower
    lists that worker, then take the probe offline."""
    from tenantfleet.workers.app import create_app

    wait_for_http(f"{flower_url}/api/tasks")
    probe = create_app(config.load_settings(env))
    hostname = f"flower-probe-{uuid.uuid4().hex[:6]}@tests"
    with probe.connection_for_write() as connection:
        dispatcher = probe.events.Dispatcher(connection, hostname=hostname)

        def listed() -> bool:
            dispatcher.send("worker-heartbeat")
            with urllib.request.urlopen(f"{flower_url}/workers?json=1", timeout=10) as response:
                return any(w.get("hostname") == hostname for w in json.load(response)["data"])

        helpers.wait_for(listed, "Flower to receive events", timeout=60, every=0.2)
        dispatcher.send("worker-offline")
        dispatcher.close()
    probe.close()


@contextmanager
def running_fleet(
    admin_url: str, template_url: str, logs: Path, concurrency: int = 2, **worker_env: str
) -> Iterator[Stack]:
    """A database cloned from the template, ``concurrency`` worker processes (none if 0), Flower."""
    url = helpers.create_database(admin_url, template=helpers.database_name(template_url))
    logs.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TENANTFLEET_DATABASE_URL", url)
        env = processes.child_env(config.load_settings(), **worker_env)
        port = free_port()
        flower = processes.spawn(
            processes.flower_argv("127.0.0.1", port),
            {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
            logs / "flower.log",
        )
        engine = db.make_engine(url)
        stack = Stack(url, engine, f"http://127.0.0.1:{port}", logs, env)
        worker = stack.start_worker(concurrency) if concurrency else None
        try:
            until_flower_listens(stack.flower_url, env)
            yield stack
        finally:
            stack.reap()
            processes.stop(flower)
            if worker is not None:
                processes.stop(worker)
            engine.dispose()
            helpers.drop_database(admin_url, url)
