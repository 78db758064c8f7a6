"""The fleet at scale: a W1 fleet of N tenants (default 100,000) in one database, migrated in
place, with the views' latency during and after the run. Kept out of CI.

    python bench/scale.py --home /var/tmp/tenantfleet-scale [--tenants 100000] [--json]

The fleet lives on a private PostgreSQL cluster kept in ``HOME/data`` between runs (W1 takes
about 0.2 GB a 1,000 tenants: 100,000 are about 20 GB, built once, in 10-15 minutes here). The
cluster is started for the run and stopped afterwards; Redis is the broker named by
TENANTFLEET_BROKER_URL, else the embedded one. A fleet found at W1's r2 (an earlier run
migrated it) is built again; ``--rebuild`` forces it.

What it measures, in this order (W = ``--workers``):

1. N = 1,000 in a database of its own on the same cluster: the per-tenant time to compare with.
2. N: ``migrate`` (the producer: enqueues and returns) — its wall time and peak RSS; the run to
   its end, from the producer's start to the run's ``finished_at`` (what ``migrate --wait``
   follows); the worker's RSS after the first 1,000 tenants and at the end; while the run goes
   and after it, the wall time of ``status``, ``status --json``, ``runs``, ``fleet``,
   ``fleet --verify``, ``report --html``, ``metrics`` and Flower's task list and task page, as
   a user runs them.
3. B: ``migrate`` of the migrated fleet to its end (nothing to do).
4. The database's size and the cluster's data directory.
"""

import argparse
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from tenantfleet import config, db, fleet_setup, names, processes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fleet_bench  # noqa: E402
import fresh_cluster  # noqa: E402
import groups  # noqa: E402
import w2  # noqa: E402

DATABASE = "tenantfleet_scale"
VIEWS = {
    "status": ["status"],
    "status_json": ["status", "--json"],
    "runs": ["runs"],
    "fleet": ["fleet"],
    "fleet_verify": ["fleet", "--verify"],
    "report_html": ["report", "--html", "{tmp}/report.html"],
    "metrics": ["metrics"],
}
LATEST_RUN_SQL = sa.text(
    "SELECT id, status, extract(epoch FROM finished_at) FROM public.migration_runs"
    " ORDER BY id DESC LIMIT 1"
)
AT_R1_SQL = sa.text("SELECT count(*) FROM public.tenant_registry WHERE current_revision = :r1")


def scalar(url: str, query: sa.TextClause, **params: Any) -> Any:
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(query, params).first()
    finally:
        engine.dispose()


def ensure_fleet(settings: config.Settings, name: str, tenants: int, rebuild: bool) -> float:
    """W1 of ``tenants`` at r1 in database ``name``; the build's seconds (0 if reused). A build
    that stopped part way is finished, not begun again."""
    url = fleet_bench.bench_url(settings, name)
    found = fleet_bench.registered(url)
    at_r1 = found and scalar(url, AT_R1_SQL, r1=fleet_bench.R1)[0]
    if not rebuild and found == tenants and at_r1 == tenants:
        return 0.0
    started = time.perf_counter()
    if rebuild or not found or at_r1 != found:
        fleet_bench.recreate_database(settings, name)
        fleet_bench.build_fleet(url, 1, 1)  # t00001 by Alembic: the pattern of the others
    clone_fleet(url, tenants, 2)
    return round(time.perf_counter() - started, 1)


REGISTERED_SQL = "SELECT schema_name FROM public.tenant_registry"
REGISTER_SQL = (
    "INSERT INTO public.tenant_registry (schema_name, tenant_name, current_revision)"
    " VALUES (%s, %s, %s)"
)


def clone_fleet(url: str, tenants: int, parallel: int) -> None:
    """The W1 tenants not registered yet, as copies of t00001: its DDL as ``pg_dump
    --schema-only`` prints it (the tables, keys and sequences Alembic made), the seed rows of
    ``fleet_setup``, the version row and the registry row, 100 tenants a transaction. Alembic per
    tenant makes 12-25 a second here, and slower as the catalog grows: 100,000 would take hours."""
    connection = psycopg2.connect(w2.dsn(url))
    with connection.cursor() as cursor:
        cursor.execute(REGISTERED_SQL)
        done = {row[0] for row in cursor.fetchall()}
    connection.close()
    missing = [n for n in fleet_setup.fleet_names(tenants) if n not in done]
    if not missing:
        return
    pattern = schema_ddl(url, "t00001")
    jobs = [(url, pattern, part) for part in fleet_bench._slices(missing, parallel)]
    with multiprocessing.get_context("fork").Pool(parallel) as pool:
        pool.map(_clone_slice, jobs)


def schema_ddl(url: str, schema: str) -> str:
    """The DDL of ``schema`` with its name as ``{schema}`` (``pg_dump --schema-only``)."""
    dumped = subprocess.run(
        [str(fresh_cluster.bin_dir() / "pg_dump"), "--schema-only", "--no-owner",
         "--no-privileges", f"--schema={schema}", w2.dsn(url)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    body = dumped[dumped.index(f"CREATE SCHEMA {schema};") :]
    statements = [line for line in body.splitlines() if not line.startswith(("--", "\\"))]
    return re.sub(rf"\b{schema}\b", "{schema}", "\n".join(statements))


def _clone_slice(job: tuple[str, str, list[str]]) -> None:
    """A new connection every 1,000 tenants: a backend that made thousands of relations keeps
    them in its caches, and made them 5 times slower by the ten thousandth."""
    url, pattern, schemas = job
    seed = f"{fleet_setup.SEED_USERS.text};\n{fleet_setup.SEED_ORDERS.text};"
    for start in range(0, len(schemas), 1000):
        connection = psycopg2.connect(w2.dsn(url))
        cursor = connection.cursor()
        for batch in range(start, min(start + 1000, len(schemas)), 100):
            for schema in schemas[batch : batch + 100]:
                names.validate_schema_name(schema)
                cursor.execute(pattern.replace("{schema}", schema))
                cursor.execute("SELECT set_config('search_path', %s, true)", (schema,))
                cursor.execute("INSERT INTO alembic_version VALUES (%s)", (fleet_bench.R1,))
                cursor.execute(seed)
                cursor.execute(REGISTER_SQL, (schema, f"Tenant {schema}", fleet_bench.R1))
            connection.commit()
        connection.close()


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Run ``argv``; (wall seconds, peak RSS in MiB, exit code)."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return round(time.perf_counter() - started, 2), usage.ru_maxrss // 1024, child.returncode


class Views:
    """Times every view, as a user runs it (a new process each), and Flower's pages."""

    def __init__(self, env: dict[str, str], flower: str, tmp: str) -> None:
        self.env, self.flower, self.tmp = env, flower, tmp
        self.cli = [sys.executable, "-m", "tenantfleet"]

    def flower_page(self, path: str) -> float:
        started = time.perf_counter()
        with urllib.request.urlopen(self.flower + path, timeout=60) as answer:
            answer.read()
        return round(time.perf_counter() - started, 2)

    def once(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for name, args in VIEWS.items():
            argv = [*self.cli, *(a.format(tmp=self.tmp) for a in args)]
            found[name] = timed(argv, self.env)[0]
        found["flower_tasks"] = self.flower_page(
            "/tasks/datatable?draw=1&start=0&length=15&order[0][column]=0&columns[0][data]=received&order[0][dir]=desc"
        )
        with urllib.request.urlopen(self.flower + "/api/tasks?limit=1", timeout=60) as answer:
            seen = json.load(answer)
        if seen:
            found["flower_task"] = self.flower_page(f"/task/{next(iter(seen))}")
        return found


def follow(url: str, run_id: int, every: float = 1.0) -> float:
    """Wait for run ``run_id`` to close; its ``finished_at`` (epoch seconds)."""
    while True:
        row = scalar(url, LATEST_RUN_SQL)
        if row[0] == run_id and row[2] is not None:
            return float(row[2])
        time.sleep(every)


def run_to_end(bench: fleet_bench.Bench, views: Views | None, every: float) -> dict[str, Any]:
    """One ``migrate`` of the bench's database, followed to the run's end; the views timed every
    ``every`` seconds meanwhile (with ``views``)."""
    assert bench._worker is not None
    before = scalar(bench.url, LATEST_RUN_SQL)
    began = time.time()
    with groups.Growth(bench.url, bench._worker.pid) as growth:
        producer_s, producer_mb, code = timed(
            [sys.executable, "-m", "tenantfleet", "migrate", "--revision", fleet_bench.R2],
            bench.env,
        )
        row = scalar(bench.url, LATEST_RUN_SQL)
        if code not in (0, 1) or row is None or (before is not None and row[0] == before[0]):
            raise RuntimeError(f"migrate exited {code} without a new run")
        samples: list[dict[str, float]] = []
        ended: list[float] = []
        watcher = threading.Thread(target=lambda: ended.append(follow(bench.url, row[0])))
        watcher.start()
        while views is not None and watcher.is_alive():
            samples.append({"at_s": round(time.time() - began, 1), **views.once()})
            watcher.join(every)
        watcher.join()
    found: dict[str, Any] = {
        "run_id": row[0],
        "producer_s": producer_s,
        "producer_peak_rss_mb": producer_mb,
        "seconds": round(ended[0] - began, 2),
        "worker_rss": growth.report(),
    }
    if samples:
        found["views_during"] = samples
    return found


def measure(args: argparse.Namespace, admin: str) -> dict[str, Any]:
    say = (lambda m: print(m, file=sys.stderr)) if args.json else print
    os.environ["TENANTFLEET_DATABASE_URL"] = admin
    settings = config.load_settings()
    result: dict[str, Any] = {"tenants": args.tenants, "workers": args.workers}
    for name, tenants in ((f"{DATABASE}_1k", 1000), (DATABASE, args.tenants)):
        say(f"W1: {tenants} tenants in {name}")
        result.setdefault("build_s", {})[name] = ensure_fleet(settings, name, tenants, args.rebuild)
    tmp = tempfile.mkdtemp(prefix="tenantfleet-scale-")
    small = fleet_bench.Bench(settings, f"{DATABASE}_1k", args.workers, say)
    small.start_workers()
    try:
        result["n1000"] = run_to_end(small, None, args.every)
    finally:
        small.stop_workers()
    say(f"N = 1,000: {result['n1000']['seconds']} s")
    bench = fleet_bench.Bench(settings, DATABASE, args.workers, say)
    port = fresh_cluster.free_port()
    flower_env = {**bench.env, "FLOWER_UNAUTHENTICATED_API": "true"}  # its task list API
    flower = processes.spawn(
        processes.flower_argv("127.0.0.1", port), flower_env, Path(tmp) / "flower.log"
    )
    bench.start_workers()
    try:
        views = Views(bench.env, f"http://127.0.0.1:{port}", tmp)
        say(f"N = {args.tenants}: migrating, the views timed every {args.every} s")
        result["run"] = run_to_end(bench, views, args.every)
        result["views_after"] = views.once()
        say(f"  {result['run']['seconds']} s; after: {result['views_after']}")
        result["noop"] = run_to_end(bench, None, args.every)
    finally:
        bench.stop_workers()
        processes.stop(flower)
    per = {k: result[k]["seconds"] / n for k, n in (("n1000", 1000), ("run", args.tenants))}
    result["ms_per_tenant"] = {k: round(1000 * v, 2) for k, v in per.items()}
    result["per_tenant_ratio"] = round(per["run"] / per["n1000"], 2)
    during = result["run"].get("views_during", [])
    result["views_during_max"] = {
        k: max(s[k] for s in during if k in s) for k in (during[0] if during else {}) if k != "at_s"
    }
    result["views_during_median"] = {
        k: statistics.median(s[k] for s in during if k in s)
        for k in (during[0] if during else {})
        if k != "at_s"
    }
    size = scalar(fleet_bench.bench_url(settings, DATABASE),
                  sa.text("SELECT pg_database_size(current_database())"))[0]  # fmt: skip
    result["database_gb"] = round(size / 1e9, 2)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--home", type=Path, required=True, help="the kept cluster's directory")
    parser.add_argument("--tenants", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--every", type=float, default=60.0, help="seconds between view timings")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TENANTFLEET_STATE_DIR", str(args.home / "state"))
    fleet_bench.compiled_as_installed()
    with fresh_cluster.kept_cluster(args.home.absolute()) as admin:
        result = measure(args, admin)
    done = subprocess.run(["du", "-sb", str(args.home / "data")], capture_output=True, text=True)
    result["data_dir_gb"] = round(int(done.stdout.split()[0]) / 1e9, 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
