"""Benchmark of workload W1 (shared/WORKLOAD.md): sequential Alembic vs the fleet vs the floor.

    python bench/fleet_bench.py --tenants 1000 --workers 2 [--repeat 2] [--json]
    python bench/fleet_bench.py --tenants 10000 --workers 2 --contenders fleet
    python bench/fleet_bench.py --tenants 10000 --workers 2 --noop --enqueue
    python bench/fleet_bench.py --tenants 10000 --contenders fleet,split --split 25,25,25,25
    python bench/fleet_bench.py --tenants 10000 --contenders split --split 30,30,30,10 --cap s3=1
    python bench/fleet_bench.py --fresh-cluster --contenders fleet,floor --repeat 3
    python bench/fleet_bench.py --statements --contenders fleet,floor --repeat 3
    python bench/fleet_bench.py --workload W2 --statements --repeat 2 --json

Uses the PostgreSQL and Redis named by TENANTFLEET_DATABASE_URL / TENANTFLEET_BROKER_URL, else
the embedded stack (state in .tenantfleet-bench/); with --fresh-cluster, a new PostgreSQL cluster
of the machine's (initdb defaults), as a deploy hook meets a server rather than a warm one;
--statements is that cluster with pg_stat_statements, and reports the server's time per tenant
by statement for the fleet and the floor, of W1 or W2 (bench/statements.py). W1 is
built once in a template database, ``tenantfleet_bench_w1``; every contender run gets a fresh
copy of it, ``tenantfleet_bench``.
"""

import argparse
import compileall
import importlib.util
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from tenantfleet import config, db, fleet_setup, processes, queues, runs
from tenantfleet.errors import ConfigError

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fresh_cluster  # noqa: E402
import groups  # noqa: E402
import statements  # noqa: E402
import w2  # noqa: E402
import w3  # noqa: E402

BENCH_DB = "tenantfleet_bench"
R1, R2 = fleet_setup.R1, fleet_setup.R2
R2_SQL = """
ALTER TABLE users ADD COLUMN phone varchar(64);
CREATE INDEX ix_orders_status ON orders (status);
CREATE TABLE audit_log (
  id bigserial PRIMARY KEY,
  user_id bigint REFERENCES users(id),
  action varchar(64) NOT NULL,
  at timestamptz NOT NULL DEFAULT now());
UPDATE alembic_version SET version_num = %(r2)s;
"""


# -- the database and the fleet ----------------------------------------------------------


def bench_url(settings: config.Settings, name: str) -> str:
    server = sa.engine.make_url(config.database_url(settings))
    return server.set(database=name).render_as_string(hide_password=False)


def recreate_database(settings: config.Settings, name: str, template: str | None = None) -> str:
    """An empty database ``name`` (or a copy of ``template``), dropped first if it exists.

    Each contender runs on a fresh copy of the W1 template: every reset and upgrade leaves dead
    catalog rows behind (about 1,300 in pg_attribute per tenant and round), and with autovacuum
    off, as on this machine's server, each contender would run on a bigger catalog than the one
    before it.
    """
    admin = db.make_engine(config.database_url(settings), isolation_level="AUTOCOMMIT")
    quote = admin.dialect.identifier_preparer.quote
    copy = f" TEMPLATE {quote(template)} STRATEGY FILE_COPY" if template else ""
    with admin.connect() as connection:
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {quote(name)} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {quote(name)}{copy}"))
    admin.dispose()
    return bench_url(settings, name)


DELETE_QUEUES = """
import sys
from tenantfleet.workers import app
with app.connection_for_write() as connection:
    for name in sys.argv[1:]:
        connection.default_channel.queue_delete(name)
        connection.default_channel.exchange_delete(name)  # the producer's, named after it
"""


def queue_names(url: str) -> tuple[str, ...]:
    """The broker queues of the database at ``url``."""
    engine = db.make_engine(url)
    with engine.connect() as connection:
        names = queues.of_database(connection).names
    engine.dispose()
    return names


def registered(url: str) -> int:
    """How many tenants the bench database holds (0 if it does not exist)."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(sa.text("SELECT count(*) FROM public.tenant_registry")).scalar()
                or 0
            )
    except Exception:
        return 0
    finally:
        engine.dispose()


def _provision_slice(args: tuple[str, list[str], str | None, str | None]) -> None:
    """Tenants at r1 in ``url``; registered in ``control`` under ``key`` if given."""
    url, schemas, control_url, key = args
    engine = db.make_engine(url)
    control = db.make_engine(control_url) if control_url else None
    fleet_setup.provision(engine, schemas, R1, control=control, database=key)
    engine.dispose()
    if control is not None:
        control.dispose()


def _slices(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def build_fleet(
    url: str, tenants: int, parallel: int, shards: Sequence[tuple[str, str, int]] = ()
) -> list[str]:
    """W1 in ``url``; with ``shards`` (key, url, how many), that many of the tenants live in
    each shard database instead, registered in ``url`` under the key."""
    from tenantfleet.manager import MigrationManager

    engine = db.make_engine(url)
    MigrationManager(engine=engine).upgrade_public()
    engine.dispose()
    schemas = fleet_setup.fleet_names(tenants)
    jobs: list[tuple[str, list[str], str | None, str | None]] = []
    start = tenants - sum(count for _, _, count in shards)
    jobs += [(url, part, None, None) for part in _slices(schemas[:start], parallel)]
    for key, shard_url, count in shards:
        mine = schemas[start : start + count]
        start += count
        jobs += [(shard_url, part, url, key) for part in _slices(mine, parallel)]
    with multiprocessing.get_context("fork").Pool(parallel) as pool:
        pool.map(_provision_slice, jobs)
    return schemas


def _run_sql_per_schema(args: tuple[str, list[str], str, dict[str, str]]) -> None:
    """One persistent connection; per schema one transaction: search_path + ``sql``."""
    url, schemas, sql, params = args
    connection = psycopg2.connect(w2.dsn(url))
    cursor = connection.cursor()
    for schema in schemas:
        cursor.execute("SELECT set_config('search_path', quote_ident(%s), true)", (schema,))
        cursor.execute(sql, params)
        connection.commit()
    connection.close()


def per_schema_sql(url: str, schemas: Sequence[str], sql: str, workers: int) -> float:
    """Run ``sql`` in every schema with ``workers`` processes; the wall time."""
    params = {"r2": R2}
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_run_sql_per_schema, [(url, p, sql, params) for p in _slices(schemas, workers)])
    return time.perf_counter() - started


def versions(url: str, schemas: Sequence[str]) -> set[str | None]:
    """The revisions ``schemas`` are at, in ``url`` (those it does not hold left out)."""
    from tenantfleet import versions

    engine = db.make_engine(url)
    with engine.connect() as connection:
        found = set(versions.read_versions(connection, schemas).values())
    engine.dispose()
    return found


# -- the contenders ----------------------------------------------------------------------


def sequential(url: str, schemas: Sequence[str]) -> float:
    """Plain Alembic: a fresh Config and ``command.upgrade`` per tenant, ``-x schema=S``."""
    code = (
        "import sys, time\n"
        "from argparse import Namespace\n"
        "from alembic import command\n"
        "from alembic.config import Config\n"
        "from tenantfleet.alembic_runtime import TENANT_INI\n"
        "schemas = sys.stdin.read().split()\n"
        "started = time.perf_counter()\n"
        "for schema in schemas:\n"
        "    cfg = Config(str(TENANT_INI))\n"
        "    cfg.cmd_opts = Namespace(x=[f'schema={schema}'])\n"
        f"    command.upgrade(cfg, {R2!r})\n"
        "print(time.perf_counter() - started)\n"
    )
    env = {**os.environ, "TENANTFLEET_DATABASE_URL": url}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", code],
        input=" ".join(schemas),
        env=env,
        text=True,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


def fleet(
    url: str, env: dict[str, str], extra: Sequence[str] = (), revision: str = R2
) -> tuple[float, int]:
    """``tenantfleet migrate --wait`` as a deploy hook runs it; (seconds, peak RSS in KiB)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tenantfleet", "migrate", "--revision", revision, *extra],
        env={**env, "TENANTFLEET_DATABASE_URL": url},
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"migrate exited {proc.returncode}: {proc.stderr.strip()}")
    return elapsed, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss


def floor(url: str, schemas: Sequence[str], workers: int) -> float:
    return per_schema_sql(url, schemas, R2_SQL, workers)


def _bookkeep_slice(args: tuple[str, int, str, list[str]]) -> None:
    """The control database's share of a tenant of another database, for each of ``schemas``,
    as the common case sends it (``attempt.remote_at_once``): slot, mark lock, running mark,
    succeeded mark; then duration, COMMIT, slot and lock given back."""
    from tenantfleet import attempt
    from tenantfleet import config as tf_config

    url, run_id, uid, schemas = args
    settings = tf_config.load_settings()
    engine = db.make_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as control:
        for schema in schemas:
            task = runs.TenantTask(run_id, uid, schema, R2, "elsewhere")
            params = {**task.binds(), **task.slot_binds(settings)}
            control.execute(
                attempt._REMOTE_AT_ONCE,
                {
                    **params,
                    "worker": "bench",
                    "label": task.label,
                    "from_revision": R1,
                    "elapsed_ms": 0,
                },
            ).first()
            control.exec_driver_sql(
                attempt._REMOTE_DONE, {**task.binds(), "elapsed_ms": 1, "label": task.label}
            )
    engine.dispose()


def control_ceiling(url: str, schemas: Sequence[str], workers: int) -> float:
    """How fast the control database records tenants that live elsewhere (no DDL at all): the
    ceiling the run tables put on a fleet of many databases, with ``workers`` processes."""
    engine = db.make_engine(url)
    with engine.begin() as connection:
        run_id = runs.create_run(connection, R2, [(s, R1) for s in schemas])
        uid = str(runs.get_run(connection, run_id).uid)
    engine.dispose()
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_bookkeep_slice, [(url, run_id, uid, p) for p in _slices(schemas, workers)])
    return time.perf_counter() - started


# -- measuring ---------------------------------------------------------------------------


def rotated(contenders: Sequence[str], attempt: int) -> list[str]:
    """The contenders in the order of repetition ``attempt``: each starts one repetition in
    turn, so none always runs first on a cluster still cold (after initdb, a first W2 run's
    backfill took a third longer)."""
    shift = attempt % len(contenders)
    return [*contenders[shift:], *contenders[:shift]]


def summary(samples: list[float], tenants: int) -> dict[str, Any]:
    median = statistics.median(samples)
    return {
        "seconds": round(median, 3),
        "tenants_per_s": round(tenants / median, 1),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


def cpu_per_1k(found: list[dict[str, float]], tenants: int) -> dict[str, float]:
    """The median CPU-seconds of each process group per 1,000 tenants, over runs."""
    keys = found[0].keys() if found else []
    return {
        key: round(statistics.median(run[key] for run in found) * 1000 / tenants, 2) for key in keys
    }


def per_run_medians(found: list[dict[str, Any]], tenants: int) -> dict[str, Any]:
    """Over the fleet's runs: the median time to the first tenant, the median CPU-seconds of
    each process group per 1,000 tenants, and per tenant in ms the tool's (``groups.TOOL``:
    what worker hosts pay) and PostgreSQL's."""
    per_1k = cpu_per_1k([run["cpu_seconds"] for run in found], tenants)
    return {
        "first_tenant_s": statistics.median(run["first_tenant_s"] for run in found),
        "cpu_seconds_per_1k": per_1k,
        "cpu_ms_per_tenant": {
            "tool": round(sum(per_1k.get(key, 0.0) for key in groups.TOOL), 2),
            "postgres": per_1k.get("postgres"),
        },
    }


SPAN_SQL = sa.text(
    "SELECT coalesce(database, 'default'), count(*),"
    " extract(epoch FROM max(finished_at) - min(started_at))"
    " FROM public.migration_run_tenants WHERE run_id = (SELECT max(id) FROM"
    " public.migration_runs) GROUP BY 1 ORDER BY 1"
)


def spans(url: str) -> dict[str, dict[str, float]]:
    """Per database of the latest run: its tenants, and first start to last finish (s)."""
    engine = db.make_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(SPAN_SQL).all()
    engine.dispose()
    return {key: {"tenants": int(n), "span_s": round(float(span), 3)} for key, n, span in rows}


FIRST_START_SQL = sa.text(
    "SELECT extract(epoch FROM min(started_at)) FROM public.migration_run_tenants"
    " WHERE run_id = (SELECT max(id) FROM public.migration_runs)"
)


def first_tenant_s(url: str, began: float) -> float:
    """From ``began`` (the command's start, epoch seconds) to the latest run's first attempt."""
    engine = db.make_engine(url)
    with engine.connect() as connection:
        first = float(connection.execute(FIRST_START_SQL).scalar_one())
    engine.dispose()
    return round(first - began, 3)


def redis_client(url: str) -> Any:
    import redis

    if url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(url)


def command_counts(client: Any) -> dict[str, int]:
    """Redis's own count of each command served so far (``INFO commandstats``)."""
    return {
        name.removeprefix("cmdstat_"): int(stats["calls"])
        for name, stats in client.info("commandstats").items()
    }


ROW_BYTES_SQL = sa.text(
    "SELECT pg_total_relation_size('public.migration_run_tenants')::float / count(*),"
    " count(*) FROM public.migration_run_tenants"
)


def footprint(url: str, client: Any, before: dict[str, int], tenants: int) -> dict[str, Any]:
    """What one run cost the broker (commands per tenant) and the run table (bytes per row)."""
    after = command_counts(client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}
    engine = db.make_engine(url)
    with engine.connect() as connection:
        per_row, rows = connection.execute(ROW_BYTES_SQL).one()
    engine.dispose()
    return {
        "redis_commands_per_tenant": round(sum(delta.values()) / tenants, 1),
        "redis_top_commands_per_tenant": {
            k: round(v / tenants, 2) for k, v in list(delta.items())[:8]
        },
        "run_table_bytes_per_row": round(per_row),
        "run_table_rows": int(rows),
    }


class Bench:
    """The fleet's template, the fresh copy each contender runs on, and the workers.

    With ``split`` (percentages, the control database's first), the ``split`` contender runs
    the same W1 spread over that many databases on the same server: the control database
    ``NAME_split`` and the shards ``NAME_split_s1``..., each a fresh copy of its template.
    """

    def __init__(
        self,
        settings: config.Settings,
        database: str,
        workers: int,
        say: Callable[[str], None],
        split: Sequence[int] = (),
        caps: dict[str, int] | None = None,
        server_statements: bool = False,
    ) -> None:
        self.settings = settings
        self.server_statements = server_statements
        self.last_statements: dict[str, Any] = {}
        self.database = database
        self.template = f"{database}_w1"
        self.workers = workers
        self.say = say
        self.url = bench_url(settings, database)
        self.env = processes.child_env(settings, TENANTFLEET_DATABASE_URL=self.url)
        self.log = settings.state_dir / "bench-worker.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self._worker: subprocess.Popen[bytes] | None = None
        self.copies_queues: set[str] = set()  # the broker's queues of every copy made
        self.postgres_pid = groups.postmaster_pid(config.database_url(settings))
        # the chord's Redis: the broker's unless a RabbitMQ broker has a Redis result backend
        self.backend = config.result_backend(settings)
        self.redis_pid = groups.redis_pid(redis_client(self.backend))
        self.split = list(split)
        self.split_names = [f"{database}_split"] + [
            f"{database}_split_s{i}" for i in range(1, len(self.split))
        ]
        self.split_url = bench_url(settings, self.split_names[0])
        toml = settings.state_dir / "bench-split.toml"
        caps = caps or {}
        lines = []
        for index, name in enumerate(self.split_names[1:], start=1):
            lines.append(f'[databases.s{index}]\nurl = "{bench_url(settings, name)}"')
            if f"s{index}" in caps:
                lines.append(f"max_concurrent = {caps[f's{index}']}")
        if "default" in caps:
            lines.append(f"[databases.default]\nmax_concurrent = {caps['default']}")
        toml.write_text("\n".join(lines) + "\n")
        self.split_env = processes.child_env(
            settings, TENANTFLEET_DATABASE_URL=self.split_url, TENANTFLEET_CONFIG=str(toml)
        )

    def shard_counts(self, tenants: int) -> list[tuple[str, str, int]]:
        """(key, template URL, tenants) of each shard of the split layout."""
        counts = [tenants * share // sum(self.split) for share in self.split]
        return [
            (f"s{i}", bench_url(self.settings, f"{self.split_names[i]}_w1"), counts[i])
            for i in range(1, len(self.split))
        ]

    def build(self, tenants: int, reuse: bool, contenders: Sequence[str]) -> list[str]:
        if any(c != "split" for c in contenders):
            self._build(self.template, tenants, reuse, ())
        if "split" in contenders:
            control = f"{self.split_names[0]}_w1"
            if not (reuse and registered(bench_url(self.settings, control)) == tenants):
                for name in self.split_names[1:]:
                    recreate_database(self.settings, f"{name}_w1")
            self._build(control, tenants, reuse, self.shard_counts(tenants))
        return fleet_setup.fleet_names(tenants)

    def _build(
        self, template: str, tenants: int, reuse: bool, shards: Sequence[tuple[str, str, int]]
    ) -> None:
        template_url = bench_url(self.settings, template)
        if reuse and registered(template_url) == tenants:
            self.say(f"reusing W1: {tenants} tenants in {template}")
            return
        where = f" ({len(shards) + 1} databases)" if shards else ""
        self.say(f"building W1: {tenants} tenants at {R1} in {template}{where}")
        recreate_database(self.settings, template)
        build_fleet(template_url, tenants, max(2, self.workers), shards)

    def fresh_copy(self, split: bool = False, workload: str = "w1") -> None:
        """A new copy of the workload's template(s) (the workers stopped: the copy drops their
        database), checkpointed and flushed to disk before the clock starts: the copy's writes
        would otherwise still be flushing during the run (that made runs of one contender
        differ by up to 40 %)."""
        self.stop_workers()
        for name in self.split_names if split else [self.database]:
            copy = recreate_database(self.settings, name, template=f"{name}_{workload}")
            self.copies_queues.update(queue_names(copy))
        admin = db.make_engine(config.database_url(self.settings), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql("CHECKPOINT")
        admin.dispose()
        os.sync()

    def start_workers(self, env: dict[str, str] | None = None) -> None:
        """Wait for the worker's "ready." line: importing Celery here would make the fork
        pools of the floor hang in Kombu's after-fork hook."""
        ready = self.log.read_text().count(" ready.")
        self._worker = processes.spawn(
            processes.worker_argv(self.workers, hostname="bench@%h"), env or self.env, self.log
        )
        deadline = time.monotonic() + 60
        while self.log.read_text().count(" ready.") <= ready:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {self.log}")
            time.sleep(0.1)

    @contextmanager
    def cpu(self) -> Iterator[dict[str, float]]:
        """CPU-seconds spent while the block runs, per process group (``groups.Groups``; the
        worker's groups are 0 when none runs, as for the floor)."""
        found: dict[str, float] = {}
        worker = self._worker.pid if self._worker is not None else None
        watched = groups.Groups(worker, self.postgres_pid, self.redis_pid)
        before = watched.snapshot()
        yield found
        found.update(watched.since(before, watched.snapshot()))

    @contextmanager
    def server_time(self, tenants: int) -> Iterator[dict[str, Any]]:
        """With ``--statements``, the server's time per tenant of what runs in the block
        (``statements.read``), filled when it ends; else nothing."""
        found: dict[str, Any] = {}
        admin = config.database_url(self.settings)
        if self.server_statements:
            statements.reset(admin)
        yield found
        if self.server_statements:
            found.update(statements.read(admin, self.database, tenants))

    def stop_workers(self) -> None:
        if self._worker is not None:
            processes.stop(self._worker)
            self._worker = None

    def close(self) -> None:
        """Stop the workers; delete the copies' queues and their exchanges from the broker. Every
        copy is a database with queues of its own (``queues.py``), which RabbitMQ would keep,
        empty and durable, after the copy is dropped (a Redis list goes when it is empty; Kombu
        leaves its small binding sets, as for any database a worker ever consumed). In a child:
        Celery imported here would make the floor's fork pools hang."""
        self.stop_workers()
        if not self.copies_queues:
            return
        done = subprocess.run(
            [sys.executable, "-c", DELETE_QUEUES, *sorted(self.copies_queues)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:  # said, not raised: it would hide why a run stopped
            lines = done.stderr.strip().splitlines() or ["no message"]
            print(
                f"fleet_bench: the copies' queues are left in the broker: {lines[-1]}",
                file=sys.stderr,
            )
        self.copies_queues.clear()

    def run_contender(self, name: str, schemas: list[str]) -> float:
        self.last_statements = {}
        self.fresh_copy(split=name == "split")
        if name == "split":
            self.start_workers(self.split_env)
            with self.cpu() as cpu:
                seconds = fleet(self.split_url, self.split_env, ["--wait"])[0]
            self.last_split_cpu = cpu
            found: set[str | None] = set()
            for database in self.split_names:
                found |= versions(bench_url(self.settings, database), schemas)
            assert found == {R2}, f"split left tenants behind: {found}"
            self.last_spans = spans(self.split_url)
            return seconds
        if name == "control":
            return control_ceiling(self.url, schemas, self.workers)
        if name == "fleet":
            self.start_workers()
            client = redis_client(self.backend)
            before = command_counts(client)
            began = time.time()
            assert self._worker is not None
            with (
                self.server_time(len(schemas)) as self.last_statements,
                self.cpu() as cpu,
                groups.Growth(self.url, self._worker.pid) as growth,
            ):
                seconds = fleet(self.url, self.env, ["--wait"])[0]
            self.last_footprint = footprint(self.url, client, before, len(schemas))
            self.last_footprint["cpu_seconds"] = cpu
            self.last_footprint["first_tenant_s"] = first_tenant_s(self.url, began)
            self.last_footprint["worker_rss"] = growth.report()
        elif name == "sequential":
            seconds = sequential(self.url, schemas)
        else:
            with self.server_time(len(schemas)) as self.last_statements, self.cpu() as cpu:
                seconds = floor(self.url, schemas, self.workers)
            self.last_floor_cpu = cpu
        assert versions(self.url, schemas) == {R2}, f"{name} left tenants behind"
        return seconds

    def measure_upgrade(
        self, schemas: list[str], repeat: int, contenders: Sequence[str]
    ) -> dict[str, Any]:
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        split_spans: list[dict[str, dict[str, float]]] = []
        fleet_runs: list[dict[str, Any]] = []
        floor_cpu: list[dict[str, float]] = []
        seen: dict[str, list[dict[str, Any]]] = {}
        for attempt in range(repeat):
            for name in rotated(contenders, attempt):
                seconds = self.run_contender(name, schemas)
                samples[name].append(seconds)
                self.say(f"  run {attempt + 1}/{repeat} {name:<10} {seconds:8.3f} s")
                if self.last_statements:  # --statements, for the fleet and the floor
                    seen.setdefault(name, []).append(self.last_statements)
                    self.say(
                        f"    server {self.last_statements['server_ms_per_tenant']} ms a tenant"
                    )
                if name == "split":
                    split_spans.append({**self.last_spans, "cpu_seconds": self.last_split_cpu})
                    self.say(f"    per database: {self.last_spans}, cpu {self.last_split_cpu}")
                if name == "floor":
                    floor_cpu.append(self.last_floor_cpu)
                    self.say(f"    cpu {self.last_floor_cpu}")
                if name == "fleet":
                    fleet_runs.append(dict(self.last_footprint))
                    self.say(
                        f"    cpu {self.last_footprint['cpu_seconds']},"
                        f" first tenant {self.last_footprint['first_tenant_s']} s"
                    )
        result: dict[str, Any] = {name: summary(s, len(schemas)) for name, s in samples.items()}
        if split_spans:
            result["split"]["databases"] = split_spans
        if "fleet" in result:
            result["fleet"]["footprint"] = self.last_footprint
            result["fleet"].update(per_run_medians(fleet_runs, len(schemas)))
        for name, runs_seen in seen.items():
            result[name]["statements"] = {
                "server_ms_per_tenant": statistics.median(
                    r["server_ms_per_tenant"] for r in runs_seen
                ),
                "runs": runs_seen,
            }
        if "fleet" in result and "split" in result:
            result.setdefault("ratios", {})["split_over_fleet"] = round(
                result["split"]["seconds"] / result["fleet"]["seconds"], 2
            )
        if floor_cpu:
            result["floor"]["cpu_seconds_per_1k"] = cpu_per_1k(floor_cpu, len(schemas))
        if "fleet" in result and "floor" in result:
            ratios = result.setdefault("ratios", {})
            ratios["fleet_over_floor"] = round(
                result["fleet"]["seconds"] / result["floor"]["seconds"], 2
            )
            postgres = [c["postgres"] for c in floor_cpu if c.get("postgres")]
            if postgres and "postgres" in result["fleet"]["cpu_seconds_per_1k"]:
                ratios["postgres_cpu_over_floor"] = round(
                    statistics.median(r["cpu_seconds"]["postgres"] for r in fleet_runs)
                    / statistics.median(postgres),
                    2,
                )
        if "fleet" in result and "sequential" in result:
            result.setdefault("ratios", {})["sequential_over_fleet"] = round(
                result["sequential"]["seconds"] / result["fleet"]["seconds"], 2
            )
        return result

    def w2_template(self, tenants: int, reuse: bool) -> None:
        """The W2 template database (W3 uses it too), built unless ``reuse`` finds it."""
        template = f"{self.database}_w2"
        template_url = bench_url(self.settings, template)
        if reuse and registered(template_url) == tenants:
            self.say(f"reusing W2: {tenants} tenants in {template}")
        else:
            self.say(f"building W2: {tenants} tenants at {R2} in {template}")
            recreate_database(self.settings, template)
            w2.build(template_url, tenants, max(2, self.workers))

    def measure_w2(self, tenants: int, repeat: int, reuse: bool) -> dict[str, Any]:
        """W2: the fleet largest first, the same fleet in plan order, the floor; interleaved,
        each on a fresh copy of the W2 template."""
        self.w2_template(tenants, reuse)
        ini = w2.tenant_env(self.settings.state_dir)
        env = {**self.env, "TENANTFLEET_TENANT_ALEMBIC": str(ini)}
        unordered_env = {**env, "TENANTFLEET_SCHEDULE_BY_SIZE": "false"}
        schemas = w2.names(tenants)
        samples: dict[str, list[float]] = {"fleet": [], "unordered": [], "floor": []}
        ratios: dict[str, list[float]] = {"fleet": [], "unordered": []}
        details: list[dict[str, Any]] = []
        for attempt in range(repeat):
            for name in rotated(("fleet", "unordered", "floor"), attempt):
                self.fresh_copy(workload="w2")
                if name == "floor":
                    with self.server_time(tenants) as server:
                        seconds = w2.floor(self.url, schemas, self.workers)
                    cpu: dict[str, float] = {}
                else:
                    self.start_workers(env)
                    with self.server_time(tenants) as server, self.cpu() as cpu:
                        seconds = fleet(
                            self.url,
                            env if name == "fleet" else unordered_env,
                            ["--wait", *w2.GATE],
                            revision=w2.R3,
                        )[0]
                    span = w2.makespan(self.url, self.workers)
                    ratios[name].append(span["makespan_over_lb"])
                    self.say(
                        f"    makespan/LB {span['makespan_over_lb']}, gaps between tenants"
                        f" {span['gaps_s']} s (median {span['gap_ms_median']} ms)"
                    )
                    details.append({"contender": name, **span, "cpu_seconds": cpu})
                if server:  # --statements
                    if name == "floor":
                        details.append({"contender": name})
                    details[-1]["statements"] = server
                    self.say(f"    server {server['server_ms_per_tenant']} ms a tenant")
                assert versions(self.url, schemas) == {w2.R3}, f"{name} left tenants behind"
                samples[name].append(seconds)
                self.say(f"  W2 run {attempt + 1}/{repeat} {name:<10} {seconds:8.3f} s {cpu}")
        self.stop_workers()
        result: dict[str, Any] = {name: summary(s, tenants) for name, s in samples.items()}
        result["makespan_over_lb"] = round(statistics.median(ratios["fleet"]), 3)
        result["gap_ms_median"] = statistics.median(
            d["gap_ms_median"] for d in details if d.get("contender") == "fleet"
        )
        result["unordered_makespan_over_lb"] = round(statistics.median(ratios["unordered"]), 3)
        result["fleet_over_floor"] = round(
            result["fleet"]["seconds"] / result["floor"]["seconds"], 3
        )
        result["unordered_over_floor"] = round(
            result["unordered"]["seconds"] / result["floor"]["seconds"], 3
        )
        result["runs"] = details
        return result

    def measure_w3(self, tenants: int, reuse: bool) -> dict[str, Any]:
        """W3: W2's change, plain and batched, each on a fresh copy of the W2 template while
        four writers hit the five largest tenants (a baseline first)."""
        self.w2_template(tenants, reuse)
        schemas = w2.names(tenants)
        ways = {
            "plain": (w2.tenant_env(self.settings.state_dir), w2.R3, w2.GATE),
            "batched": (w3.batched_env(self.settings.state_dir), w3.R4_INDEX, []),
        }
        result: dict[str, Any] = {}
        for name, (ini, revision, gate) in ways.items():
            env = {**self.env, "TENANTFLEET_TENANT_ALEMBIC": str(ini)}
            self.fresh_copy(workload="w2")
            self.start_workers(env)
            app = w3.Writers(self.url, w3.largest(tenants))
            app.start()
            time.sleep(w3.BASELINE_S)  # the baseline: the app alone
            app.enter(name)
            try:
                seconds = fleet(self.url, env, ["--wait", *gate], revision=revision)[0]
            finally:
                app.finish()
            correct = (
                versions(self.url, schemas) == {revision} and w3.wrong_rows(self.url, schemas) == 0
            )
            result[name] = {**app.figures(name), "fleet_s": round(seconds, 3), "correct": correct}
            result[f"{name}_baseline"] = app.figures("baseline")
            self.say(f"  W3 {name:<8} {result[name]}")
        self.stop_workers()
        result["correct"] = result["plain"]["correct"] and result["batched"]["correct"]
        result["batched_over_plain"] = round(
            result["batched"]["fleet_s"] / result["plain"]["fleet_s"], 3
        )
        return result

    def measure_noop(self, schemas: list[str], repeat: int) -> dict[str, Any]:
        """B: every tenant already at r2 (one upgrade first, not timed)."""
        self.fresh_copy()
        self.start_workers()
        fleet(self.url, self.env, ["--wait"])
        samples = [fleet(self.url, self.env, ["--wait"])[0] for _ in range(repeat)]
        return summary(samples, len(schemas))

    def measure_enqueue(self, tenants: int) -> dict[str, Any]:
        """The producer alone (no worker consuming): seconds and peak RSS; then the callback."""
        self.fresh_copy()
        client = redis_client(config.broker_url(self.settings))
        memory = int(client.info("memory")["used_memory"])
        seconds, rss_kib = fleet(self.url, self.env)
        queued_bytes = int(client.info("memory")["used_memory"]) - memory
        self.start_workers()
        engine = db.make_engine(self.url)
        with engine.connect() as connection:
            run_id = runs.latest_run_id(connection)
        from tenantfleet import follow

        follow.until_closed(engine, run_id, follow.Watch(poll_interval=0.5))
        engine.dispose()
        callback = [
            float(m)
            for m in re.findall(
                r"Task tenantfleet\.finalize_run\[[^\]]+\] succeeded in ([0-9.]+)s",
                self.log.read_text(),
            )
        ]
        return {
            "redis_bytes_per_queued_tenant": round(queued_bytes / tenants),
            "enqueue_seconds": round(seconds, 3),
            "producer_peak_rss_mb": round(rss_kib / 1024, 1),
            "callback_seconds": round(callback[-1], 3) if callback else None,
        }


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workload", choices=["W1", "W2", "W3"], default="W1")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--contenders",
        help="W1's contenders (default sequential,fleet,floor); W2 always runs its three",
    )
    parser.add_argument("--noop", action="store_true", help="also measure B (no-op migrate)")
    parser.add_argument("--enqueue", action="store_true", help="also enqueue time, RSS, callback")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--database", default=BENCH_DB, help="the bench's own database (and NAME_w1), dropped"
    )
    parser.add_argument("--reuse", action="store_true", help="keep a W1 template of this size")
    parser.add_argument(
        "--fresh-cluster",
        action="store_true",
        help="run on a new PostgreSQL cluster (initdb defaults), removed afterwards",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="--fresh-cluster with pg_stat_statements: the server's time per tenant by statement",
    )
    parser.add_argument(
        "--split",
        default="25,25,25,25",
        help="the split contender's share of tenants per database, the control one's first",
    )
    parser.add_argument(
        "--cap", action="append", default=[], metavar="KEY=N", help="max_concurrent (split)"
    )
    args = parser.parse_args(argv)
    if args.workload in ("W2", "W3"):
        for given, option in ((args.contenders, "--contenders"), (args.noop, "--noop"),
                              (args.enqueue, "--enqueue")):  # fmt: skip
            if given:
                parser.error(f"{option} is for W1 (W2 and W3 run contenders of their own)")
    if args.fresh_cluster or args.statements:
        settings = statements.SETTINGS if args.statements else []
        with fresh_cluster.fresh_cluster(settings) as url:
            os.environ["TENANTFLEET_DATABASE_URL"] = url
            if args.statements:
                statements.install(url)
            return measure(args)
    return measure(args)


def refusal(settings: config.Settings, enqueue: bool) -> str | None:
    """Why the bench cannot run with these brokers, if it cannot: it counts the chord's commands
    in the result backend's Redis (a RabbitMQ broker needs one), and ``--enqueue`` weighs the
    queue in the broker's Redis."""
    try:
        backend = config.result_backend(settings)
    except ConfigError as exc:
        return str(exc)
    if not config.is_redis(backend):
        return "the bench counts the chord's commands in Redis: set TENANTFLEET_RESULT_BACKEND"
    if enqueue and not config.is_redis(config.broker_url(settings)):
        return "--enqueue weighs the queue in Redis's memory: it needs a Redis broker"
    return None


def compiled_as_installed() -> None:
    """Write the bytecode of tenantfleet's own modules, as ``pip install`` of a wheel does: in
    a checkout with ``PYTHONDONTWRITEBYTECODE=1`` (this machine sets it) every command would
    otherwise compile them from source, about 0.06 CPU-seconds a command."""
    for package in (
        "tenantfleet",
        "tenantfleet.workers",
        "tenantfleet.tasks",
        "tenantfleet.migrations",
    ):
        spec = importlib.util.find_spec(package)
        for directory in (spec.submodule_search_locations or []) if spec else []:
            compileall.compile_dir(directory, quiet=1)


def measure(args: argparse.Namespace) -> int:
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print
    compiled_as_installed()

    os.environ.setdefault("TENANTFLEET_STATE_DIR", str(Path(".tenantfleet-bench").absolute()))
    contenders = [c for c in (args.contenders or "sequential,fleet,floor").split(",") if c]
    caps = {key: int(n) for key, _, n in (c.partition("=") for c in args.cap)}
    split = [int(share) for share in args.split.split(",")]
    settings = config.load_settings()
    refused = refusal(settings, args.enqueue)
    if refused:
        print(f"fleet_bench: {refused}", file=sys.stderr)
        return 2
    bench = Bench(settings, args.database, args.workers, say, split, caps, args.statements)
    broker = config.broker_url(settings).partition("://")[0]  # redis, redis+socket, amqp
    say(f"broker: {broker}")
    if args.workload == "W3":
        try:
            measured = bench.measure_w3(args.tenants, args.reuse)
            found = {"workload": "W3", "tenants": args.tenants, "workers": args.workers,
                     "broker": broker, "w3": measured}  # fmt: skip
        finally:
            bench.close()
        print(json.dumps(found, indent=2) if args.json else json.dumps(found["w3"], indent=2))
        return 0
    if args.workload == "W2":
        try:
            found = {
                "workload": "W2",
                "tenants": args.tenants,
                "workers": args.workers,
                "broker": broker,
            }
            found["w2"] = bench.measure_w2(args.tenants, args.repeat, args.reuse)
        finally:
            bench.close()
        print(json.dumps(found, indent=2) if args.json else render_w2(found))
        return 0
    schemas = bench.build(args.tenants, args.reuse, contenders)
    result: dict[str, Any] = {"tenants": args.tenants, "workers": args.workers, "broker": broker}
    if "split" in contenders:
        result["split_layout"] = {"shares": split, "caps": caps}
    try:
        result.update(bench.measure_upgrade(schemas, args.repeat, contenders))
        if args.noop:
            result["noop"] = bench.measure_noop(schemas, args.repeat)
            say(f"  no-op migrate: {result['noop']['seconds']} s")
        if args.enqueue:
            result["enqueue"] = bench.measure_enqueue(args.tenants)
    finally:
        bench.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"W1, N = {result['tenants']}, W = {result['workers']} (median, min-max)"]
    for name in ("sequential", "fleet", "split", "floor", "control"):
        if name in result:
            r = result[name]
            lines.append(
                f"  {name:<11}{r['seconds']:9.3f} s  {r['tenants_per_s']:9.1f} tenants/s"
                f"   ({r['min']:.3f}-{r['max']:.3f})"
            )
    for key, value in result.get("ratios", {}).items():
        lines.append(f"  {key:<22}{value:6.2f}")
    for name in ("fleet", "floor"):
        if "statements" in result.get(name, {}):
            found = result[name]["statements"]
            lines.append(
                f"  {name}: server {found['server_ms_per_tenant']} ms a tenant"
                " (pg_stat_statements, median); the last run's top statements:"
            )
            lines.extend(
                f"    {t['ms_per_tenant']:7.3f} ms  {t['calls_per_tenant']:5.2f}x  {t['statement']}"
                for t in found["runs"][-1]["top"]
            )
    if "noop" in result:
        lines.append(f"  no-op migrate       {result['noop']['seconds']:9.3f} s")
    if "enqueue" in result:
        e = result["enqueue"]
        lines.append(
            f"  enqueue {e['enqueue_seconds']} s, producer peak RSS {e['producer_peak_rss_mb']} MB,"
            f" callback {e['callback_seconds']} s"
        )
    return "\n".join(lines)


def render_w2(result: dict[str, Any]) -> str:
    found = result["w2"]
    lines = [f"W2, N = {result['tenants']}, W = {result['workers']} (median, min-max)"]
    for name in ("fleet", "unordered", "floor"):
        r = found[name]
        lines.append(f"  {name:<11}{r['seconds']:9.3f} s   ({r['min']:.3f}-{r['max']:.3f})")
    for key in ("makespan_over_lb", "unordered_makespan_over_lb", "fleet_over_floor"):
        lines.append(f"  {key:<28}{found[key]:6.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
