"""``tenantfleet demo``: a whole fleet migration on the embedded stack, start to finish.

Provisions demo tenants at W1's first revision, starts worker processes (and Flower if asked),
runs ``migrate --wait`` and leaves the summary on screen.
"""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tenantfleet import config, fleet_setup, processes
from tenantfleet.manager import MigrationManager

Say = Callable[[str], None]
PROGRESS_EVERY_S = 2.0


def provision(manager: MigrationManager, tenants: int, say: Say) -> list[str]:
    manager.upgrade_public()
    schemas = fleet_setup.fleet_names(tenants, prefix="demo")
    say(f"provisioning {tenants} demo tenants at {fleet_setup.R1} (50 users, 200 orders each)")
    next_line = [time.monotonic() + PROGRESS_EVERY_S]

    def progress(done: int) -> None:
        if time.monotonic() >= next_line[0] or done == tenants:
            next_line[0] = time.monotonic() + PROGRESS_EVERY_S
            say(f"  {done}/{tenants} tenants provisioned")

    fleet_setup.provision(manager.engine, schemas, fleet_setup.R1, manager.settings, progress)
    return schemas


def start_workers(settings: config.Settings, workers: int, say: Say) -> subprocess.Popen[bytes]:
    log = settings.state_dir / "worker.log"
    say(f"starting {workers} worker processes (log: {log})")
    proc = processes.spawn(
        processes.worker_argv(workers, hostname="demo@%h"), processes.child_env(settings), log
    )
    from tenantfleet.workers import app

    processes.wait_for_workers(app)
    return proc


def start_flower(settings: config.Settings, port: int, say: Say) -> subprocess.Popen[bytes]:
    log: Path = settings.state_dir / "flower.log"
    env = processes.child_env(settings, FLOWER_UNAUTHENTICATED_API="true")
    say(f"Flower on http://127.0.0.1:{port} (log: {log})")
    return processes.spawn(processes.flower_argv("127.0.0.1", port), env, log)
