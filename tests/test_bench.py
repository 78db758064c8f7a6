"""A smoke run of the benchmark at N = 20: it runs end to end and reports what it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import helpers


def test_the_benchmark_runs_and_reports_every_contender(
    pg_admin_url: str, repo_root: Path, tmp_path: Path
) -> None:
    argv = ["--tenants", "20", "--workers", "2", "--repeat", "1", "--json", "--noop"]
    result = helpers.run_bench(pg_admin_url, repo_root, tmp_path, "w1", *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["broker"] in ("redis", "redis+socket")
    for name in ("sequential", "fleet", "floor"):
        assert report[name]["seconds"] > 0 and report[name]["tenants_per_s"] > 0
    assert {"fleet_over_floor", "sequential_over_fleet"} <= set(report["ratios"])
    assert report["fleet"]["cpu_ms_per_tenant"]["tool"] > 0
    if "postgres" in report["floor"]["cpu_seconds_per_1k"]:  # the server runs on this machine
        assert report["ratios"]["postgres_cpu_over_floor"] > 0
    assert report["noop"]["seconds"] > 0


def test_the_w3_benchmark_reports_the_writers_and_the_fleet_plain_and_batched(
    pg_admin_url: str, repo_root: Path, tmp_path: Path
) -> None:
    """``--workload W3 --json``: per way of writing r3, the writers' latencies, errors and
    throughput (and their baseline), the fleet's time and whether every row is right; batched
    is always right (old app code's rows included)."""
    argv = ["--workload", "W3", "--tenants", "20", "--json"]
    result = helpers.run_bench(pg_admin_url, repo_root, tmp_path, "w2", *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)["w3"]
    keys = {"writer_max_ms", "writer_p99_ms", "writer_errors", "writer_tps"}
    for way in ("plain", "batched"):
        assert keys | {"fleet_s", "correct"} <= set(found[way]), way
        assert keys <= set(found[f"{way}_baseline"]), way
        assert found[way]["writer_tps"] > 0 and found[way]["fleet_s"] > 0
    assert found["batched"]["correct"] is True and found["batched"]["writer_errors"] == 0
    assert found["batched_over_plain"] > 0 and "correct" in found


def test_the_w2_benchmark_reports_the_schedules_ratios(
    pg_admin_url: str, repo_root: Path, tmp_path: Path
) -> None:
    """``--workload W2 --json``: the ratios the issue names, and per fleet run its makespan,
    lower bound and the gaps between tenants, with every tenant of the run counted."""
    argv = ["--workload", "W2", "--tenants", "20", "--repeat", "1", "--json"]
    result = helpers.run_bench(pg_admin_url, repo_root, tmp_path, "w2", *argv)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)["w2"]
    for key in ("makespan_over_lb", "unordered_makespan_over_lb", "fleet_over_floor"):
        assert found[key] > 0, key
    assert found["gap_ms_median"] >= 0
    assert {run["contender"] for run in found["runs"]} == {"fleet", "unordered"}
    for run in found["runs"]:
        assert run["tenants"] == 20
        assert run["makespan_s"] > 0 and run["max_d_s"] > 0 and run["lb_s"] > 0
        assert run["gaps_s"] >= 0 and run["gap_ms_median"] >= 0


def test_the_benchmark_shows_the_servers_time_per_tenant_by_statement(
    repo_root: Path, tmp_path: Path
) -> None:
    """``--statements``: a fresh cluster of the machine's PostgreSQL with pg_stat_statements;
    the fleet's and the floor's server time per tenant, the migration's DDL among the fleet's
    top statements beside its own bookkeeping."""
    sys.path.insert(0, str(repo_root / "bench"))
    import fresh_cluster

    try:
        fresh_cluster.bin_dir()
    except SystemExit:
        pytest.skip("no PostgreSQL server binaries (initdb) on this machine")
    env = {key: value for key, value in os.environ.items() if key != "TENANTFLEET_DATABASE_URL"}
    env["TENANTFLEET_STATE_DIR"] = str(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "bench/fleet_bench.py",
            "--statements",
            "--tenants",
            "20",
            "--repeat",
            "1",
            "--contenders",
            "fleet,floor",
            "--json",
        ],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    for name in ("fleet", "floor"):
        found = report[name]["statements"]
        assert found["server_ms_per_tenant"] > 0
        (run,) = found["runs"]
        assert run["evicted"] == 0 and run["top"]
    fleet_top = [t["statement"] for t in report["fleet"]["statements"]["runs"][0]["top"]]
    assert any("CREATE TABLE audit_log" in s for s in fleet_top)
    assert any("tenantfleet_mark_running" in s for s in fleet_top)
