"""Private servers for fault tests: a PostgreSQL and a Redis that the test starts, breaks and
stops, never the machine's shared ones; workers and the CLI run as real subprocesses."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, db, embedded, fleet_setup, processes, versions
from tests import helpers

R1, R2 = fleet_setup.R1, fleet_setup.R2
STRUCTURE_R1 = "r1"
STRUCTURE_R2 = "r2"


@dataclass
class Private:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list["subprocess.Popen[bytes]"] = field(default_factory=list)

    @property
    def pg_dir(self) -> Path:
        return self.root / "pg"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def log(self) -> Path:
        return self.root / "worker.log"

    def start(self) -> None:
        self.admin_url = embedded.postgres_url(self.pg_dir)
        self.broker_url = embedded.redis_url(self.redis_dir)

    def stop(self) -> None:
        for worker in self.workers:
            processes.stop(worker, timeout=10)
        embedded.stop(self.redis_dir)
        embedded.stop(self.pg_dir)

    def env(self, database_url: str, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "TENANTFLEET_DATABASE_URL": database_url,
            "TENANTFLEET_BROKER_URL": self.broker_url,
            "TENANTFLEET_RESULT_BACKEND": self.broker_url,
            "TENANTFLEET_STATE_DIR": str(self.root / "state"),
            **self.extra_env,
            **extra,
        }

    # -- faults ------------------------------------------------------------------------

    def restart_postgres(self, down_for: float = 0.5) -> None:
        embedded.stop(self.pg_dir)
        time.sleep(down_for)
        embedded.postgres_url(self.pg_dir)

    def restart_redis_empty(self) -> None:
        embedded.stop(self.redis_dir)
        embedded.redis_url(self.redis_dir)

    # -- workers and the CLI -----------------------------------------------------------

    def start_worker(self, database_url: str, concurrency: int = 2, **extra: str) -> Any:
        ready = self.log.read_text().count(" ready.") if self.log.exists() else 0
        worker = processes.spawn(
            processes.worker_argv(concurrency, hostname=f"w{len(self.workers)}@%h"),
            self.env(database_url, **extra),
            self.log,
        )
        self.workers.append(worker)
        deadline = time.monotonic() + 60
        while self.log.read_text().count(" ready.") <= ready:
            assert time.monotonic() < deadline, self.log.read_text()[-2000:]
            time.sleep(0.1)
        return worker

    def cli(self, database_url: str, *args: str, **extra: str) -> helpers.Result:
        proc = subprocess.run(
            [sys.executable, "-m", "tenantfleet", *args],
            env=self.env(database_url, **extra),
            capture_output=True,
            text=True,
            timeout=600,
        )
        return helpers.Result(proc.returncode, proc.stdout, proc.stderr)

    def cli_background(self, database_url: str, *args: str, **extra: str) -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", *args],
            env=self.env(database_url, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def new_database(self) -> str:
        from tenantfleet.manager import MigrationManager

        url = helpers.create_database(self.admin_url)
        engine = db.make_engine(url)
        MigrationManager(engine=engine).upgrade_public()
        engine.dispose()
        return url


def kill_hard(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def worker_children(worker: Any) -> list[psutil.Process]:
    return psutil.Process(worker.pid).children()


def finish(process: Any, timeout: float = 300) -> helpers.Result:
    out, err = process.communicate(timeout=timeout)
    return helpers.Result(process.returncode, out, err)


# -- the three checks every scenario ends with -------------------------------------------


def reference_structures(engine: Engine) -> dict[str, set[tuple[str, ...]]]:
    """The catalog picture of a tenant at r1 and at r2, with the schema name taken out."""
    fleet_setup.provision(engine, ["ref_r1", "ref_r2"], R1)
    with engine.begin() as connection:
        alembic_runtime.confine_to_schema(connection, "ref_r2")
        alembic_runtime.migrate_tenant(connection, "ref_r2", R2)
    pictures = {
        STRUCTURE_R1: _anonymous(helpers.snapshot(engine, ["ref_r1"])),
        STRUCTURE_R2: _anonymous(helpers.snapshot(engine, ["ref_r2"])),
    }
    with engine.begin() as connection:
        for schema in ("ref_r1", "ref_r2"):
            connection.execute(sa.schema.DropSchema(schema, cascade=True))
            connection.execute(
                sa.text("DELETE FROM public.tenant_registry WHERE schema_name = :s"), {"s": schema}
            )
    return pictures


def _anonymous(picture: set[tuple[str, ...]]) -> set[tuple[str, ...]]:
    return {(kind, *rest) for kind, _schema, *rest in picture}


def check_all_or_nothing(
    engine: Engine, schemas: list[str], references: dict[str, set[tuple[str, ...]]]
) -> dict[str, str]:
    """(a) Each tenant is exactly at r2 with the whole r2 structure, or exactly at r1 with no
    trace of r2. Returns schema -> "r1" / "r2"; fails on anything half-way."""
    with engine.connect() as connection:
        found = versions.read_versions(connection, schemas)
    outcome: dict[str, str] = {}
    half_way = []
    for schema in schemas:
        picture = _anonymous(helpers.snapshot(engine, [schema]))
        if found[schema] == R2 and picture == references[STRUCTURE_R2]:
            outcome[schema] = STRUCTURE_R2
        elif found[schema] == R1 and picture == references[STRUCTURE_R1]:
            outcome[schema] = STRUCTURE_R1
        else:
            half_way.append(schema)
    assert half_way == [], f"half-migrated tenants: {half_way}"
    return outcome


def check_run_accounts_for_everyone(
    engine: Engine, run_id: int, schemas: list[str]
) -> dict[str, str]:
    """(b) Every tenant of the run has a final state; returns schema -> state."""
    from tenantfleet import runs

    with engine.connect() as connection:
        rows = {t.schema_name: t.status for t in runs.tenants_of(connection, run_id)}
        run = runs.get_run(connection, run_id)
    assert set(rows) == set(schemas)
    assert set(rows.values()) <= set(runs.FINAL), rows
    assert run.finished_at is not None
    return rows
