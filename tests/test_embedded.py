"""The embedded default stack and the demo: no server configured, nothing installed."""

import os
import subprocess
import sys
from pathlib import Path

from tests import helpers


def clean_env(state_dir: Path) -> dict[str, str]:
    """No URL configured at all, as on a fresh machine: the embedded stack must serve."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLEET_")}
    env["TENANTFLEET_STATE_DIR"] = str(state_dir)
    return env


def run(state_dir: Path, *args: str) -> helpers.Result:
    proc = subprocess.run(
        [sys.executable, "-m", "tenantfleet", *args],
        env=clean_env(state_dir),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return helpers.Result(proc.returncode, proc.stdout, proc.stderr)


def test_demo_runs_twice_on_the_embedded_stack_and_dev_down_stops_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    try:
        first = run(state, "demo", "--tenants", "12", "--workers", "2")
        assert first.code == 0, first.out + first.err
        assert "run 1: succeeded - 12 succeeded, 0 failed" in first.out
        assert "12/12 tenants provisioned" in first.out
        assert "started a new, empty embedded PostgreSQL" in first.err
        second = run(state, "demo", "--tenants", "12", "--workers", "2")
        assert second.code == 0, second.out + second.err
        assert "run 2: succeeded - 12 succeeded" in second.out
        status = run(state, "dev", "status")
        assert "postgres: postgresql+psycopg2://" in status.out
        assert "redis: redis+socket://" in status.out
        listed = run(state, "tenants", "list")
        assert sum(line.startswith("demo000") for line in listed.out.splitlines()) == 12
        assert "new, empty" not in listed.err
        below = state.parent / "app" / "sub"  # found from below, as git finds .git
        below.mkdir(parents=True)
        (state.parent / ".tenantfleet").symlink_to(state)
        found = subprocess.run(
            [sys.executable, "-m", "tenantfleet", "status"],
            env={k: v for k, v in clean_env(state).items() if k != "TENANTFLEET_STATE_DIR"},
            cwd=below,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert found.returncode == 0 and "run 2: succeeded" in found.stdout, found.stderr
    finally:
        down = run(state, "dev", "down")
    assert down.code == 0 and "postgres" in down.out and "redis" in down.out
    assert "postgres: stopped" in run(state, "dev", "status").out
