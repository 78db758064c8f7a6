"""One fleet over three databases on two PostgreSQL servers: the main one (the control database
and ``shard1``) and a private one this module starts (``shard2``), with real worker processes.

- one run migrates every tenant wherever it lives, and records each in the control database;
- the private server stopped mid-run holds back only its own tenants, which finish once it is
  back; stopped while planning, its tenants are skipped with the reason, and ``retry`` does them;
- the cap per database is measured from the run rows and from ``pg_stat_activity``, with six
  worker processes: never more tenants of one database at once than its ``max_concurrent``.
"""

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tenantfleet import databases, db, embedded, fleet_setup, processes, runs, versions
from tenantfleet.errors import InvalidSchemaName
from tests import helpers
from tests.helpers import wait_for

R1, R2 = fleet_setup.R1, fleet_setup.R2
HEAD = helpers.SEED_HEAD
PER_DATABASE = 110  # 330 tenants in all


@dataclass
class Shards:
    """The control database, ``shard1`` beside it, ``shard2`` on the private server."""

    root: Path
    admin_url: str
    control_url: str
    shard1_url: str
    private_dir: Path
    shard2_url: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    workers: list[Any] = field(default_factory=list)

    @property
    def urls(self) -> dict[str | None, str]:
        return {None: self.control_url, "shard1": self.shard1_url, "shard2": self.shard2_url}

    def write_config(self, caps: dict[str, int] | None = None) -> Path:
        caps = caps or {}
        lines = []
        for key, variable in (("shard1", "SHARD1_URL"), ("shard2", "SHARD2_URL")):
            lines.append(f'[databases.{key}]\nurl = "env:{variable}"')
            if key in caps:
                lines.append(f"max_concurrent = {caps[key]}")
        if "default" in caps:
            lines.append(f"[databases.default]\nmax_concurrent = {caps['default']}")
        path = self.root / "tenantfleet.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "TENANTFLEET_DATABASE_URL": self.control_url,
            "TENANTFLEET_CONFIG": str(self.root / "tenantfleet.toml"),
            "SHARD1_URL": self.shard1_url,
            "SHARD2_URL": self.shard2_url,
            "TENANTFLEET_RETRY_BACKOFF_MAX": "1",
            **self.extra_env,
            **extra,
        }

    def cli(self, *args: str) -> helpers.Result:
        return helpers.run_cli(*args, env=self.env(), timeout=600)

    def cli_background(self, *args: str) -> Any:
        return subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start_workers(self, concurrency: int) -> None:
        from tenantfleet.workers import app

        log = self.root / "worker.log"
        self.workers.append(
            processes.spawn(
                processes.worker_argv(concurrency, hostname=f"s{len(self.workers)}@%h"),
                self.env(),
                log,
            )
        )
        processes.wait_for_workers(app)

    def stop_workers(self) -> None:
        for worker in self.workers:
            processes.stop(worker, timeout=20)
        self.workers.clear()

    def engine(self, database: str | None) -> Engine:
        return db.make_engine(self.urls[database])

    def stop_private(self) -> None:
        embedded.stop(self.private_dir)

    def start_private(self) -> None:
        embedded.postgres_url(self.private_dir)


@pytest.fixture(scope="module")
def shards(
    pg_admin_url: str, template_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shards]:
    root = tmp_path_factory.mktemp("shards")
    private_dir = root / "private"
    private_admin = embedded.postgres_url(private_dir)
    control = helpers.create_database(pg_admin_url, template=helpers.database_name(template_url))
    shard1 = helpers.create_database(pg_admin_url, prefix="tf_shard1")
    found = Shards(root, pg_admin_url, control, shard1, private_dir)
    found.shard2_url = helpers.create_database(private_admin, prefix="tf_shard2")
    found.write_config()
    try:
        yield found
    finally:
        found.stop_workers()
        embedded.stop(private_dir)
        helpers.drop_database(pg_admin_url, shard1)
        helpers.drop_database(pg_admin_url, control)


def provision(
    shards: Shards, prefix: str, count: int, revision: str | None
) -> dict[str, list[str]]:
    """``count`` W1 tenants per database (at ``revision``; None: empty schemas, no version
    table), registered in the control database with their key."""
    control = shards.engine(None)
    placed: dict[str, list[str]] = {}
    for index, database in enumerate((None, "shard1", "shard2")):
        names = [f"{prefix}{index}_{i:04d}" for i in range(count)]
        engine = shards.engine(database)
        if revision is None:
            with engine.begin() as tenant, control.begin() as registrar:
                for name in names:
                    tenant.execute(sa.schema.CreateSchema(name))
                    registrar.execute(
                        sa.text(
                            "INSERT INTO public.tenant_registry"
                            " (tenant_name, schema_name, database) VALUES (:n, :n, :d)"
                        ),
                        {"n": name, "d": database},
                    )
        else:
            fleet_setup.provision(
                engine,
                names,
                revision,
                control=None if database is None else control,
                database=database,
            )
        engine.dispose()
        placed[database or "default"] = names
    control.dispose()
    return placed


def revisions(shards: Shards, placed: dict[str, list[str]]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for key, names in placed.items():
        engine = shards.engine(None if key == "default" else key)
        with engine.connect() as connection:
            found.update(versions.read_versions(connection, names))
        engine.dispose()
    return found


def run_rows(shards: Shards, run_id: int) -> list[runs.RunTenant]:
    engine = shards.engine(None)
    with engine.connect() as connection:
        rows = runs.tenants_of(connection, run_id)
    engine.dispose()
    return rows


def test_one_run_over_three_databases_rides_out_a_server_stopped_mid_run(
    shards: Shards,
) -> None:
    placed = provision(shards, "a", PER_DATABASE, R1)
    shards.write_config()
    shards.start_workers(4)
    try:
        before = _latest_run(shards) or 0
        migrate = shards.cli_background("migrate", "--revision", R2, "--wait", "--json")
        run_id = wait_for(
            lambda: (_latest_run(shards) or 0) > before and _latest_run(shards), "the run"
        )

        def shard2_started() -> bool:
            rows = run_rows(shards, run_id)
            return sum(r.database == "shard2" and r.status == "succeeded" for r in rows) >= 5

        wait_for(shard2_started, "shard2's first tenants")
        shards.stop_private()
        try:

            def others_final() -> list[runs.RunTenant] | None:
                rows = run_rows(shards, run_id)
                others = [r for r in rows if r.database != "shard2"]
                if all(r.status in runs.FINAL for r in others):
                    return rows
                return None

            rows = wait_for(others_final, "the tenants of the other databases")
            held_back = [r for r in rows if r.database == "shard2" and r.status in runs.PENDING]
            assert held_back, "the server stopped after shard2 was done: nothing tested"
            assert all(r.status == "succeeded" for r in rows if r.database != "shard2")
            reasons = {r.error_message or "" for r in held_back if r.status != "queued"}
            assert any("shard2" in m or "connect" in m for m in reasons), reasons
        finally:
            shards.start_private()
        out, err = migrate.communicate(timeout=600)
        assert migrate.returncode == 0, err[-3000:]
    finally:
        shards.stop_workers()
    report = json.loads(out)
    total = 3 * PER_DATABASE
    assert report["counts"]["total"] == report["counts"]["succeeded"] == total
    assert {key: found["succeeded"] for key, found in report["databases"].items()} == {
        "default": PER_DATABASE,
        "shard1": PER_DATABASE,
        "shard2": PER_DATABASE,
    }
    assert set(revisions(shards, placed).values()) == {R2}
    labels = {t["tenant"] for t in report["tenants"]}
    assert f"shard2/{placed['shard2'][0]}" in labels and placed["default"][0] in labels
    assert f"shard2/{placed['shard2'][0]}: succeeded" in (shards.root / "worker.log").read_text()

    status = json.loads(shards.cli("status", str(run_id), "--json").out)
    assert status["databases"]["shard1"]["succeeded"] == PER_DATABASE
    listed = json.loads(shards.cli("runs", "--json").out)
    assert listed[0]["databases"]["shard2"]["succeeded"] == PER_DATABASE
    text = shards.cli("status", str(run_id)).out
    assert "shard2" in text and "database" in text
    fleet = json.loads(shards.cli("fleet", "--json").out)
    assert fleet["databases"]["shard2"]["by_revision"] == {R2: PER_DATABASE}
    assert fleet["databases"]["default"]["behind"] == PER_DATABASE  # head is R3


def _latest_run(shards: Shards) -> int | None:
    engine = shards.engine(None)
    with engine.connect() as connection:
        found = connection.execute(sa.text("SELECT max(id) FROM public.migration_runs")).scalar()
    engine.dispose()
    return int(found) if found is not None else None


def test_a_database_down_while_planning_skips_only_its_tenants_and_retry_finishes_them(
    shards: Shards,
) -> None:
    placed = provision(shards, "b", 20, R1)
    shards.write_config()
    shards.start_workers(2)
    try:
        shards.stop_private()
        try:
            first = shards.cli("migrate", "--revision", R2, "--wait", "--json")
        finally:
            shards.start_private()
        assert first.code == 1, first.err
        report = json.loads(first.out)
        assert report["status"] == "partial"
        skipped = [t for t in report["tenants"] if t["status"] == "skipped"]
        assert {t["database"] for t in skipped} == {"shard2"}
        assert all(t["error"].startswith("DatabaseUnreachable: database shard2") for t in skipped)
        again = shards.cli("retry", str(report["run_id"]), "--wait", "--json")
        assert again.code == 0, again.err
        assert json.loads(again.out)["databases"]["shard2"]["succeeded"] == 20
    finally:
        shards.stop_workers()
    assert set(revisions(shards, placed).values()) == {R2}


SLOW = """
def upgrade() -> None:
    op.execute("CREATE TABLE slow_marker (id integer)")
    op.execute("SELECT pg_sleep(0.15)")


def downgrade() -> None:
    op.execute("DROP TABLE slow_marker")
"""


MIGRATING_NOW = sa.text(
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)
"""How many tenant schemas of this database are locked by a migration right now. ``pg_locks``
is one atomic picture of the lock table; ``pg_stat_activity`` is not (it copies each backend's
entry in turn, and once showed two transactions at a cap of 1 while one had just handed over to
the next)."""


def test_no_database_ever_runs_more_tenants_at_once_than_its_cap(shards: Shards) -> None:
    """Caps 1 (shard1) and 2 (shard2) with six worker processes, measured from the run rows and
    from ``pg_locks`` sampled throughout. (How far the uncapped control database overlaps
    depends on the machine's speed, so it is not asserted; on this machine it reached 2 to 6.)"""
    ini = helpers.tenant_env(shards.root / "slow", [("slow_0001", SLOW)])
    shards.extra_env["TENANTFLEET_TENANT_ALEMBIC"] = str(ini)
    placed = provision(shards, "c", 30, None)
    broken = placed["shard1"][3]  # fails: its slot must still pass on to the waiting tenants
    shard1 = shards.engine("shard1")
    with shard1.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {broken}.slow_marker (id integer)"))
    shard1.dispose()
    shards.write_config({"shard1": 1, "shard2": 2})
    samples: dict[str, int] = {"shard1": 0, "shard2": 0}
    stop = threading.Event()

    def sample() -> None:
        engines = {key: shards.engine(key) for key in samples}
        try:
            while not stop.is_set():
                for key, engine in engines.items():
                    with engine.connect() as connection:
                        busy = connection.execute(MIGRATING_NOW).scalar_one()
                    samples[key] = max(samples[key], int(busy))
        finally:
            for engine in engines.values():
                engine.dispose()

    shards.start_workers(6)
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        done = shards.cli(
            "migrate",
            *[arg for names in placed.values() for n in names for arg in ("--tenant", n)],
            "--wait",
            "--json",
        )
    finally:
        stop.set()
        sampler.join()
        shards.stop_workers()
        shards.extra_env.clear()
    assert done.code == 1, done.err
    report = json.loads(done.out)
    rows = run_rows(shards, report["run_id"])
    assert len(rows) == 90
    assert {r.schema_name for r in rows if r.status != "succeeded"} == {broken}
    assert next(r for r in rows if r.schema_name == broken).error_class == "DuplicateTable"
    # a failure is recorded after its slot is given back: the intervals of successes only
    engine = shards.engine(None)
    times = helpers.tenant_times(engine, report["run_id"]).values()
    engine.dispose()
    succeeded = [t for t in times if t.status == "succeeded"]
    overlap = {key: _most_at_once(succeeded, None if key == "default" else key) for key in placed}
    assert overlap["shard1"] == 1, overlap
    assert overlap["shard2"] <= 2, overlap
    assert samples["shard1"] == 1 and 1 <= samples["shard2"] <= 2, samples
    log = (shards.root / "worker.log").read_text()
    assert "waiting tenants of database shard1" in log


def _most_at_once(times: Iterable[helpers.Times], database: str | None) -> int:
    """The most tenants of ``database`` whose [started_at, finished_at] overlap at one moment."""
    events: list[tuple[Any, int]] = []
    for found in times:
        if found.database == database:
            assert found.started_at is not None and found.finished_at is not None
            events += [(found.started_at, 1), (found.finished_at, -1)]
    most = now = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):
        now += step
        most = max(most, now)
    return most


def test_one_tenant_is_created_upgraded_and_read_in_its_own_database(shards: Shards) -> None:
    created = shards.cli("tenant", "create", "solo", "--database", "shard2", "--revision", R1)
    assert created.code == 0, created.err
    assert helpers.schema_names(shards.engine("shard2")) >= {"solo"}
    assert "solo" not in helpers.schema_names(shards.engine(None))
    upgraded = shards.cli("tenant", "upgrade", "solo", "--revision", R2)
    assert upgraded.code == 0 and f"{R1} -> {R2}" in upgraded.out, upgraded.err
    status = json.loads(shards.cli("tenant", "status", "solo", "--json").out)
    assert status["current"] == R2
    listed = shards.cli("tenants", "list", "--json")
    assert {"schema": "solo", "database": "shard2"}.items() <= next(
        t for t in json.loads(listed.out) if t["schema"] == "solo"
    ).items()
    unknown = shards.cli("tenant", "create", "solo2", "--database", "nowhere")
    assert unknown.code == 2 and unknown.err.count("\n") == 1, unknown.err
    assert "no database 'nowhere'" in unknown.err and "Traceback" not in unknown.err
    assert "solo2" not in helpers.schema_names(shards.engine(None))


def test_labels_name_the_database_with_the_schema() -> None:
    assert databases.label(None, "acme") == "acme"
    assert databases.label("shard2", "acme") == "shard2/acme"
    assert databases.parse_label("shard2/acme") == databases.Placed("acme", "shard2")
    assert databases.parse_label("acme") == databases.Placed("acme")
    with pytest.raises(InvalidSchemaName):
        databases.parse_label("shard2/Robert'); DROP")


def test_dry_run_canary_and_failure_budget_work_across_databases(shards: Shards) -> None:
    """A canary in shard2 that fails stops the run before any other database is touched; once
    fixed, ``retry`` finishes every database; ``--dry-run`` names each tenant's database."""
    placed = provision(shards, "d", 4, R1)
    canary = placed["shard2"][0]
    shard2 = shards.engine("shard2")
    with shard2.begin() as connection:
        connection.execute(sa.text(f"CREATE TABLE {canary}.audit_log (id integer)"))
    names = [arg for group in placed.values() for n in group for arg in ("--tenant", n)]
    plan = json.loads(shards.cli("migrate", "--revision", R2, "--dry-run", "--json", *names).out)
    assert {t["schema"]: t["database"] for t in plan["tenants"]}[canary] == "shard2"
    shards.start_workers(2)
    try:
        stopped = shards.cli(
            "migrate",
            "--revision",
            R2,
            "--canary-tenant",
            canary,
            "--max-failures",
            "5",
            "--wait",
            "--json",
            *names,
        )
        assert stopped.code == 1, stopped.err
        report = json.loads(stopped.out)
        states = {t["tenant"]: t["status"] for t in report["tenants"]}
        assert states[f"shard2/{canary}"] == "failed"
        assert set(states.values()) == {"failed", "skipped"}
        assert set(revisions(shards, placed).values()) == {R1}  # nobody else was touched
        with shard2.begin() as connection:
            connection.execute(sa.text(f"DROP TABLE {canary}.audit_log"))
        again = shards.cli("retry", str(report["run_id"]), "--wait")  # keeps --max-failures
        assert again.code == 0, again.err
    finally:
        shards.stop_workers()
        shard2.dispose()
    assert set(revisions(shards, placed).values()) == {R2}
