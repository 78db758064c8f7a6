"""A fresh PostgreSQL cluster for one bench run: ``initdb`` with its defaults (fsync on,
autovacuum on), on a free port, removed afterwards. A deploy hook meets a server like this
rather than a long-lived one whose catalog has grown over many runs. With a streaming standby
(``primary_and_standby``) for the tests of a replica's lag.

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


def _home(prefix: str) -> Path:
    """A new directory the cluster's owner may write."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    home.chmod(0o755)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    return home


def _start(binaries: Path, home: Path, port: int, settings: Sequence[str] = ()) -> None:
    options = " ".join(
        [f"-p {port} -k {home} -c listen_addresses=127.0.0.1", *(f"-c {s}" for s in settings)]
    )
    _run(
        binaries, "pg_ctl", "-D", str(home / "data"), "-o", options, "-l", str(home / "log"),
        "-w", "start",
    )  # fmt: skip


def _stop(binaries: Path, home: Path) -> None:
    _run(binaries, "pg_ctl", "-D", str(home / "data"), "-m", "fast", "-w", "stop")
    shutil.rmtree(home, ignore_errors=True)


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
    home, port = _home("tenantfleet-bench-pg-"), free_port()
    _run(binaries, "initdb", "-D", str(home / "data"), "-A", "trust", "-U", "postgres")
    _start(binaries, home, port, settings)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _stop(binaries, home)


@contextmanager
def kept_cluster(home: Path) -> Iterator[str]:
    """The cluster in ``home/data`` (made with initdb's defaults if absent), started on a free
    port; its admin URL; stopped afterwards, its data kept (bench/scale.py's fleet)."""
    binaries = bin_dir()
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    if not (home / "data").exists():
        _run(binaries, "initdb", "-D", str(home / "data"), "-A", "trust", "-U", "postgres")
    port = free_port()
    _start(binaries, home, port)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _run(binaries, "pg_ctl", "-D", str(home / "data"), "-m", "fast", "-w", "stop")


@contextmanager
def primary_and_standby() -> Iterator[tuple[str, str]]:
    """A new cluster and a streaming standby of it (``pg_basebackup -R``): their admin URLs."""
    binaries = bin_dir()
    with fresh_cluster() as primary:
        primary_port = str(port_of(primary))
        home, port = _home("tenantfleet-standby-"), free_port()
        _run(
            binaries, "pg_basebackup", "-h", "127.0.0.1", "-p", primary_port, "-U", "postgres",
            "-D", str(home / "data"), "-R", "-X", "stream",
        )  # fmt: skip
        _start(binaries, home, port)
        try:
            yield primary, f"postgresql://postgres@127.0.0.1:{port}/postgres"
        finally:
            _stop(binaries, home)


def port_of(url: str) -> int:
    """The port of a ``postgresql://user@host:port/db`` URL."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
