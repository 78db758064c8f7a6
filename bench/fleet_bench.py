"""Benchmark of workload W1 (shared/WORKLOAD.md): sequential Alembic vs the fleet vs the floor.

    python bench/fleet_bench.py --tenants 1000 --workers 2 [--repeat 2] [--json]
    python bench/fleet_bench.py --tenants 10000 --workers 2 --contenders fleet
    python bench/fleet_bench.py --tenants 10000 --workers 2 --noop --enqueue

Uses the PostgreSQL and Redis named by TENANTFLEET_DATABASE_URL / TENANTFLEET_BROKER_URL, else
the embedded stack (state in .tenantfleet-bench/). The fleet is built in a database of its own,
``tenantfleet_bench``, dropped and made again at the start.
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
RESET_SQL = """
DROP TABLE IF EXISTS audit_log;
DROP INDEX IF EXISTS ix_orders_status;
ALTER TABLE users DROP COLUMN IF EXISTS phone;
UPDATE alembic_version SET version_num = %(r1)s;
"""


# -- the database and the fleet ----------------------------------------------------------


def bench_url(settings: config.Settings, name: str) -> str:
    server = sa.engine.make_url(config.database_url(settings))
    return server.set(database=name).render_as_string(hide_password=False)


def recreate_database(settings: config.Settings, name: str) -> str:
    server_url = config.database_url(settings)
    admin = db.make_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote(name)
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        connection.execute(sa.text(f"CREATE DATABASE {quoted}"))
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
    from migrations.migrate import MigrationManager

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
    params = {"r1": R1, "r2": R2}
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        pool.map(_run_sql_per_schema, [(url, p, sql, params) for p in _slices(schemas, workers)])
    return time.perf_counter() - started


def reset_to_r1(url: str, schemas: Sequence[str], workers: int) -> None:
    per_schema_sql(url, schemas, RESET_SQL, workers)


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


def measure_upgrade(
    url: str,
    schemas: list[str],
    workers: int,
    repeat: int,
    contenders: Sequence[str],
    env: dict[str, str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for attempt in range(repeat):
        for name in contenders:
            reset_to_r1(url, schemas, workers)
            if name == "sequential":
                seconds = sequential(url, schemas)
            elif name == "fleet":
                seconds = fleet(url, env, ["--wait"])[0]
            else:
                seconds = floor(url, schemas, workers)
            assert versions(url, schemas) == {R2}, f"{name} left tenants behind"
            samples[name].append(seconds)
            say(f"  run {attempt + 1}/{repeat} {name:<10} {seconds:8.3f} s")
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


def measure_noop(url: str, schemas: list[str], repeat: int, env: dict[str, str]) -> dict[str, Any]:
    """B: every tenant already at r2."""
    if versions(url, schemas) != {R2}:
        fleet(url, env, ["--wait"])
    return summary([fleet(url, env, ["--wait"])[0] for _ in range(repeat)], len(schemas))


def measure_enqueue(
    url: str,
    schemas: list[str],
    workers: int,
    env: dict[str, str],
    start_workers: Callable[[], Any],
    stop_workers: Callable[[], None],
    log: Path,
) -> dict[str, Any]:
    """The producer alone (no worker consuming): seconds and peak RSS; then the callback."""
    stop_workers()
    reset_to_r1(url, schemas, workers)
    seconds, rss_kib = fleet(url, env)
    start_workers()
    engine = db.make_engine(url)
    with engine.connect() as connection:
        run_id = runs.latest_run_id(connection)
    from tenantfleet import producer

    producer.wait(engine, run_id, poll_interval=0.5)
    engine.dispose()
    callback = [
        float(m)
        for m in re.findall(
            r"Task tenantfleet\.finalize_run\[[^\]]+\] succeeded in ([0-9.]+)s", log.read_text()
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
    parser.add_argument("--database", default=BENCH_DB, help="the bench's own database (dropped)")
    parser.add_argument("--reuse", action="store_true", help="keep a fleet of this size if built")
    args = parser.parse_args(argv)
    say: Callable[[str], None] = (lambda m: print(m, file=sys.stderr)) if args.json else print

    os.environ.setdefault("TENANTFLEET_STATE_DIR", str(Path(".tenantfleet-bench").absolute()))
    settings = config.load_settings()
    if args.reuse and registered(bench_url(settings, args.database)) == args.tenants:
        url, schemas = bench_url(settings, args.database), fleet_setup.fleet_names(args.tenants)
        say(f"reusing W1: {args.tenants} tenants in {args.database}")
    else:
        url = recreate_database(settings, args.database)
        say(f"building W1: {args.tenants} tenants at {R1} in {args.database}")
        schemas = build_fleet(url, args.tenants, max(2, args.workers))
    env = processes.child_env(settings, TENANTFLEET_DATABASE_URL=url)
    log = settings.state_dir / "bench-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    worker: list[Any] = []

    def start_workers() -> None:
        """Wait for the worker's "ready." line: importing Celery here would make the fork
        pools of the floor hang in Kombu's after-fork hook."""
        ready = log.read_text().count(" ready.")
        worker.append(processes.spawn(processes.worker_argv(args.workers), env, log))
        deadline = time.monotonic() + 60
        while log.read_text().count(" ready.") <= ready:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {log}")
            time.sleep(0.1)

    def stop_workers() -> None:
        while worker:
            processes.stop(worker.pop())

    start_workers()
    try:
        contenders = [c for c in args.contenders.split(",") if c]
        result: dict[str, Any] = {"tenants": args.tenants, "workers": args.workers}
        result.update(
            measure_upgrade(url, schemas, args.workers, args.repeat, contenders, env, say)
        )
        if args.noop:
            result["noop"] = measure_noop(url, schemas, args.repeat, env)
            say(f"  no-op migrate: {result['noop']['seconds']} s")
        if args.enqueue:
            result["enqueue"] = measure_enqueue(
                url, schemas, args.workers, env, start_workers, stop_workers, log
            )
    finally:
        stop_workers()
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
