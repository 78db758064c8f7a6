"""The code stays ruff- and mypy-clean: the linters run as part of the test command."""

import subprocess
import sys
from pathlib import Path

PACKAGES = ["tenantfleet", "workers", "tasks", "migrations", "tests", "bench"]
EXAMPLES = "examples"  # linted; not type-checked here (each example app has two env.py files)


def run(
    repo_root: Path, *args: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    present = [p for p in (*PACKAGES, *extra) if any((repo_root / p).rglob("*.py"))]
    return subprocess.run(
        [sys.executable, "-m", *args, *present],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ruff(repo_root: Path) -> None:
    result = run(repo_root, "ruff", "check", extra=(EXAMPLES,))
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy(repo_root: Path) -> None:
    result = run(repo_root, "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
