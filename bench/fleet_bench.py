"""Benchmark of workload W1 (shared/WORKLOAD.md): sequential Alembic vs the fleet vs the floor.

    python bench/fleet_bench.py --tenants 1000 --workers 2 [--repeat 2] [--json]
    python bench/fleet_bench.py --tenants 10000 --workers 2 --contenders fleet
    python bench/fleet_bench.py --tenants 10000 --workers 2 --noop --enqueue

Uses the PostgreSQL and Redis named by TENANTFLEET_DATABASE_URL / TENANTFLEET_BROKER_URL, else
the embedded stack (state in .tenantfleet-bench/). W1 is built once in a template database,
``tenantfleet_bench_w1``; every contender run gets a fresh copy of it, ``tenantfleet_bench``.
"""

import argparse
import json
import multiprocessing
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from tenantfleet import config, db, fleet_setup, processes, runs

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


def _provision_slice(args: tuple[str, list[str]]) -> None:
    url, schemas = args
    engine = db.make_engine(url)
    fleet_setup.provision(engine, schemas, R1)
    engine.dispose()


def _slices(items: Sequence[str], parts: int) -> list[list[str]]:
    return [list(items[i::parts]) for i in range(parts)]


def build_fleet(url: str, tenants: int, parallel: int) -> list[str]:
    from tenantfleet.manager import MigrationManager

    engine = db.make_engine(url)
    MigrationManager(engine=engine).upgrade_public()
    engine.dispose()
    schemas = fleet_setup.fleet_names(tenants)
    with multiprocessing.get_context("fork").Pool(parallel) as pool:
        pool.map(_provision_slice, [(url, part) for part in _slices(schemas, parallel)])
    return schemas


def _dsn(url: str) -> str:
    return (
        sa.engine.make_url(url)
        .render_as_string(hide_password=False)
        .replace("postgresql+psycopg2://", "postgresql://")
    )


def _run_sql_per_schema(args: tuple[str, list[str], str, dict[str, str]]) -> None:
    """One persistent connection; per schema one transaction: search_path + ``sql``."""
    url, schemas, sql, params = args
    connection = psycopg2.connect(_dsn(url))
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
    from tenantfleet import alembic_runtime

    engine = db.make_engine(url)
    with engine.connect() as connection:
        found = set(alembic_runtime.read_versions(connection, schemas).values())
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


def fleet(url: str, env: dict[str, str], extra: Sequence[str] = ()) -> tuple[float, int]:
    """``tenantfleet migrate --wait`` as a deploy hook runs it; (seconds, peak RSS in KiB)."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "tenantfleet", "migrate", "--revision", R2, *extra],
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


# -- measuring ---------------------------------------------------------------------------


def summary(samples: list[float], tenants: int) -> dict[str, Any]:
    median = statistics.median(samples)
    return {
        "seconds": round(median, 3),
        "tenants_per_s": round(tenants / median, 1),
        "min": round(min(samples), 3),
        "max": round(max(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


class Bench:
    """The fleet's template, the fresh copy each contender runs on, and the workers."""

    def __init__(
        self, settings: config.Settings, database: str, workers: int, say: Callable[[str], None]
    ) -> None:
        self.settings = settings
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

    def build(self, tenants: int, reuse: bool) -> list[str]:
        template_url = bench_url(self.settings, self.template)
        if reuse and registered(template_url) == tenants:
            self.say(f"reusing W1: {tenants} tenants in {self.template}")
            return fleet_setup.fleet_names(tenants)
        self.say(f"building W1: {tenants} tenants at {R1} in {self.template}")
        recreate_database(self.settings, self.template)
        return build_fleet(template_url, tenants, max(2, self.workers))

    def fresh_copy(self) -> None:
        """A new copy of the template (the workers stopped: the copy drops their database)."""
        self.stop_workers()
        recreate_database(self.settings, self.database, template=self.template)

    def start_workers(self) -> None:
        """Wait for the worker's "ready." line: importing Celery here would make the fork
        pools of the floor hang in Kombu's after-fork hook."""
        ready = self.log.read_text().count(" ready.")
        self._worker = processes.spawn(processes.worker_argv(self.workers), self.env, self.log)
        deadline = time.monotonic() + 60
        while self.log.read_text().count(" ready.") <= ready:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {self.log}")
            time.sleep(0.1)

    def stop_workers(self) -> None:
        if self._worker is not None:
            processes.stop(self._worker)
            self._worker = None

    def run_contender(self, name: str, schemas: list[str]) -> float:
        self.fresh_copy()
        if name == "fleet":
            self.start_workers()
            seconds = fleet(self.url, self.env, ["--wait"])[0]
        elif name == "sequential":
            seconds = sequential(self.url, schemas)
        else:
            seconds = floor(self.url, schemas, self.workers)
        assert versions(self.url, schemas) == {R2}, f"{name} left tenants behind"
        return seconds

    def measure_upgrade(
        self, schemas: list[str], repeat: int, contenders: Sequence[str]
    ) -> dict[str, Any]:
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for attempt in range(repeat):
            for name in contenders:
                seconds = self.run_contender(name, schemas)
                samples[name].append(seconds)
                self.say(f"  run {attempt + 1}/{repeat} {name:<10} {seconds:8.3f} s")
        result: dict[str, Any] = {name: summary(s, len(schemas)) for name, s in samples.items()}
        if "fleet" in result and "floor" in result:
            result.setdefault("ratios", {})["fleet_over_floor"] = round(
                result["fleet"]["seconds"] / result["floor"]["seconds"], 2
            )
        if "fleet" in result and "sequential" in result:
            result.setdefault("ratios", {})["sequential_over_fleet"] = round(
                result["sequential"]["seconds"] / result["fleet"]["seconds"], 2
            )
        return result

    def measure_noop(self, schemas: list[str], repeat: int) -> dict[str, Any]:
        """B: every tenant already at r2 (one upgrade first, not timed)."""
        self.fresh_copy()
        self.start_workers()
        fleet(self.url, self.env, ["--wait"])
        samples = [fleet(self.url, self.env, ["--wait"])[0] for _ in range(repeat)]
        return summary(samples, len(schemas))

    def measure_enqueue(self) -> dict[str, Any]:
        """The producer alone (no worker consuming): seconds and peak RSS; then the callback."""
        self.fresh_copy()
        seconds, rss_kib = fleet(self.url, self.env)
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
            "enqueue_seconds": round(seconds, 3),
            "producer_peak_rss_mb": round(rss_kib / 1024, 1),
            "callback_seconds": round(callback[-1], 3) if callback else None,
        }


# -- main --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--contenders", default="sequential,fleet,floor")
    parser.add_argument("--noop", action="store_true", help="also measure B (no-op migrate)")
    parser.add_argument("--enqueue", action="store_true", help="also enqueue time, RSS, callback")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--database", default=BENCH_DB, help="the bench's own database (and NAME_w1), dropped"
    )
    parser.add_argument("--reuse", action="store_true", help="keep a W1 template of this size")
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print

    os.environ.setdefault("TENANTFLEET_STATE_DIR", str(Path(".tenantfleet-bench").absolute()))
    bench = Bench(config.load_settings(), args.database, args.workers, say)
    schemas = bench.build(args.tenants, args.reuse)
    contenders = [c for c in args.contenders.split(",") if c]
    result: dict[str, Any] = {"tenants": args.tenants, "workers": args.workers}
    try:
        result.update(bench.measure_upgrade(schemas, args.repeat, contenders))
        if args.noop:
            result["noop"] = bench.measure_noop(schemas, args.repeat)
            say(f"  no-op migrate: {result['noop']['seconds']} s")
        if args.enqueue:
            result["enqueue"] = bench.measure_enqueue()
    finally:
        bench.stop_workers()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 0


def render(result: dict[str, Any]) -> str:
    lines = [f"W1, N = {result['tenants']}, W = {result['workers']} (median, min-max)"]
    for name in ("sequential", "fleet", "floor"):
        if name in result:
            r = result[name]
            lines.append(
                f"  {name:<11}{r['seconds']:9.3f} s  {r['tenants_per_s']:9.1f} tenants/s"
                f"   ({r['min']:.3f}-{r['max']:.3f})"
            )
    for key, value in result.get("ratios", {}).items():
        lines.append(f"  {key:<22}{value:6.2f}")
    if "noop" in result:
        lines.append(f"  no-op migrate       {result['noop']['seconds']:9.3f} s")
    if "enqueue" in result:
        e = result["enqueue"]
        lines.append(
            f"  enqueue {e['enqueue_seconds']} s, producer peak RSS {e['producer_peak_rss_mb']} MB,"
            f" callback {e['callback_seconds']} s"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
