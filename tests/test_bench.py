"""A smoke run of the benchmark at N = 20: it runs end to end and reports what it promises."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests import helpers


def test_the_benchmark_runs_and_reports_every_contender(
    pg_admin_url: str, repo_root: Path, tmp_path: Path
) -> None:
    database = f"tf_bench_{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "TENANTFLEET_DATABASE_URL": pg_admin_url,
        "TENANTFLEET_STATE_DIR": str(tmp_path),
    }
    try:
        result = subprocess.run(
            [
                sys.executable,
                "bench/fleet_bench.py",
                "--tenants",
                "20",
                "--workers",
                "2",
                "--repeat",
                "1",
                "--json",
                "--noop",
                "--database",
                database,
            ],
            cwd=repo_root,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for name in (database, f"{database}_w1"):  # the copy and the W1 template
            url = sa.engine.make_url(pg_admin_url).set(database=name)
            helpers.drop_database(pg_admin_url, url.render_as_string(hide_password=False))
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for name in ("sequential", "fleet", "floor"):
        assert report[name]["seconds"] > 0 and report[name]["tenants_per_s"] > 0
    assert set(report["ratios"]) == {"fleet_over_floor", "sequential_over_fleet"}
    assert report["noop"]["seconds"] > 0
