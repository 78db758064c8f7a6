"""Starting and stopping ``celery worker`` and Flower processes for the demo, bench and tests."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tenantfleet import config
from tenantfleet.errors import ConnectionFailed

READY_TIMEOUT_S = 60.0


def child_env(settings: config.Settings, **extra: str) -> dict[str, str]:
    """The environment for a child: the resolved URLs, so every process uses the same stack."""
    env = dict(os.environ)
    env["TENANTFLEET_DATABASE_URL"] = config.database_url(settings)
    env["TENANTFLEET_BROKER_URL"] = config.broker_url(settings)
    env["TENANTFLEET_RESULT_BACKEND"] = config.result_backend(settings)
    env["TENANTFLEET_STATE_DIR"] = str(settings.state_dir)
    if settings.config_file is not None:
        env[config.CONFIG_VARIABLE] = str(settings.config_file.absolute())
    env.update(extra)
    return env


CELERY = [sys.executable, "-m", "celery", "-A", "tenantfleet.workers"]


def worker_argv(
    concurrency: int, hostname: str, loglevel: str = "INFO", quiet: bool = False
) -> list[str]:
    """``quiet``: no start-up banner (with JSON logs, every line is an object)."""
    return [
        *CELERY, *(["--quiet"] if quiet else []), "worker",
        "--concurrency", str(concurrency),
        "--hostname", hostname,
        "--loglevel", loglevel,
        "--without-mingle", "--without-gossip",
    ]  # fmt: skip


TASKS_COLUMNS = "name,uuid,state,args,received,started,runtime,worker"
"""Flower's task list with the arguments shown: a task's second argument names its tenant."""


def flower_argv(address: str, port: int) -> list[str]:
    return [
        *CELERY, "flower", f"--address={address}", f"--port={port}",
        f"--tasks_columns={TASKS_COLUMNS}",
    ]  # fmt: skip


def spawn(
    argv: list[str], env: dict[str, str], log: Path | None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in its own process group (in ``cwd``), its output to ``log`` (or
    discarded)."""
    if log is None:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    with open(log, "ab") as sink:  # the child keeps its own descriptor
        return subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )


def wait_for_workers(app: Any, count: int = 1, timeout: float = READY_TIMEOUT_S) -> None:
    """Block until ``count`` workers answer a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=0.5) or []) >= count:
            return
    raise ConnectionFailed(f"no Celery worker answered within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Warm shutdown (SIGTERM to the group), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
