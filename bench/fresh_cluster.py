"""A fresh PostgreSQL cluster for one bench run: ``initdb`` with its defaults (fsync on,
autovacuum on), on a free port, removed afterwards. A deploy hook meets a server like this
rather than a long-lived one whose catalog has grown over many runs.

The server binaries are the machine's (``pg_config --bindir``, else the newest
``/usr/lib/postgresql/*/bin``); as root, the cluster belongs to the ``postgres`` user.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def bin_dir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        asked = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        found = Path(asked.stdout.strip())
        if (found / "initdb").exists():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    if not candidates:
        raise SystemExit("--fresh-cluster: no PostgreSQL server binaries (initdb) on this machine")
    return Path(candidates[-1])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(binaries: Path, program: str, *args: str) -> None:
    """A server program, as the cluster's owner."""
    argv = [str(binaries / program), *args]
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def fresh_cluster(settings: Sequence[str] = ()) -> Iterator[str]:
    """Start a new cluster (``settings``: ``name=value`` server settings beyond initdb's);
    yield its admin URL; stop and remove it."""
    binaries = bin_dir()
    home = Path(tempfile.mkdtemp(prefix="tenantfleet-bench-pg-"))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    data, port = home / "data", free_port()
    _run(binaries, "initdb", "-D", str(data), "-A", "trust", "-U", "postgres")
    options = " ".join(
        [f"-p {port} -k {home} -c listen_addresses=127.0.0.1", *(f"-c {s}" for s in settings)]
    )
    _run(binaries, "pg_ctl", "-D", str(data), "-o", options, "-l", str(home / "log"), "-w", "start")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run(binaries, "pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(home, ignore_errors=True)
