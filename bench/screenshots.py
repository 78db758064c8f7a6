"""The pictures in the README and docs/: Flower during a real fleet run, and the report of that
run, both taken with headless Chromium.

    python bench/screenshots.py --admin-url postgresql://postgres@127.0.0.1:5432/postgres

A fresh database with 1,000 W1 tenants (20 of them broken on purpose, two held by a lock for a
while so that they retry), two worker processes, Flower, a state directory (and embedded Redis,
stopped at the end) of its own; `tenantfleet migrate --wave 5%
--max-failures 50 --wait`. Writes docs/images/flower-tasks.png, docs/images/report-1000.png and
docs/images/report-1000.html.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tenantfleet import config, db, fleet_setup, processes  # noqa: E402
from tests import helpers  # noqa: E402
from tests.stack import free_port, wait_for_http  # noqa: E402

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    "--hide-scrollbars",
]


def shoot(chromium: str, url: str, target: Path, size: str, budget_ms: int = 4000) -> None:
    subprocess.run(
        [
            chromium,
            *FLAGS,
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={size}",
            f"--screenshot={target}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    print(f"wrote {target.relative_to(REPO)} ({target.stat().st_size:,} bytes)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--admin-url", required=True)
    parser.add_argument("--tenants", type=int, default=1000)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("no chromium: apt-get install chromium", file=sys.stderr)
        return 2
    images = REPO / "docs" / "images"
    images.mkdir(parents=True, exist_ok=True)
    url = helpers.create_database(args.admin_url)
    work = Path(tempfile.mkdtemp(prefix="tf-shots-"))
    os.environ["TENANTFLEET_DATABASE_URL"] = url
    os.environ.setdefault("TENANTFLEET_STATE_DIR", str(work / "state"))  # its own broker
    os.environ["TENANTFLEET_LOCK_TIMEOUT"] = "1"
    os.environ["TENANTFLEET_RETRY_BACKOFF"] = "0.5"
    settings = config.load_settings()
    engine = db.make_engine(url)
    started: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([sys.executable, "-m", "tenantfleet", "public", "init"], check=True)
        schemas = fleet_setup.fleet_names(args.tenants, prefix="acme")
        fleet_setup.provision(engine, schemas, fleet_setup.R1)
        with engine.begin() as connection:
            for schema in schemas[7::50]:
                connection.execute(sa.text(f"CREATE TABLE {schema}.audit_log (id int)"))
        env = processes.child_env(settings)
        port = free_port()
        started.append(
            processes.spawn(
                processes.flower_argv("127.0.0.1", port),
                {**env, "FLOWER_UNAUTHENTICATED_API": "true"},
                work / "flower.log",
            )
        )
        started.append(
            processes.spawn(processes.worker_argv(2, hostname="shots@%h"), env, work / "worker.log")
        )
        wait_for_http(f"http://127.0.0.1:{port}/api/tasks")
        blocker = engine.connect()
        blocker.begin()
        blocker.execute(
            sa.text(f"LOCK TABLE {schemas[60]}.users, {schemas[61]}.users IN ACCESS EXCLUSIVE MODE")
        )
        migrate = subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", "migrate", "--revision", fleet_setup.R2,
             "--wave", "5%", "--max-failures", "50", "--wait"],
            env=env,
        )  # fmt: skip
        with engine.connect() as watcher:
            while (
                watcher.execute(
                    sa.text("SELECT count(*) FROM migration_run_tenants WHERE status = 'succeeded'")
                ).scalar_one()
                < args.tenants // 3
            ):
                time.sleep(0.05)
        shoot(chromium, f"http://127.0.0.1:{port}/tasks", images / "flower-tasks.png", "1400,900")
        time.sleep(2.5)
        blocker.rollback()
        blocker.close()
        migrate.wait(timeout=600)
        with engine.connect() as connection:
            run_id = connection.execute(sa.text("SELECT max(id) FROM migration_runs")).scalar_one()
        page = images / "report-1000.html"
        subprocess.run(
            [sys.executable, "-m", "tenantfleet", "report", str(run_id), "--html", str(page)],
            env=env,
            check=True,
        )
        shoot(chromium, page.as_uri(), images / "report-1000.png", "1200,2000", 1000)
    finally:
        for process in started:
            processes.stop(process)
        # the embedded Redis the commands started (when no broker is configured)
        subprocess.run([sys.executable, "-m", "tenantfleet", "dev", "down"], capture_output=True)
        engine.dispose()
        helpers.drop_database(args.admin_url, url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
