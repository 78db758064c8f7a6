"""CPU-seconds and memory per process group while a contender runs: the producer (the bench's
children), the worker's main process, its pool processes, PostgreSQL, Redis, and the rest.

PostgreSQL is found from a backend's parent (the postmaster): its own time, its reaped children's
(backends that ended during the run) and its live children's; of it, the ``postgres:workers``
and ``postgres:server`` parts say what the worker's backends and the server's own processes
spent. Redis is found by the pid it gives in ``INFO server``. A server on another machine counts
as "rest".
"""

import contextlib
import os
import re
import resource
import threading
from pathlib import Path
from typing import Any

import psutil
import sqlalchemy as sa

from tenantfleet import db, runs


def machine_busy() -> float:
    """CPU-seconds the whole machine has spent busy since boot (``/proc/stat``)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system


def _with_reaped(process: psutil.Process) -> float:
    """A process's time and its ended children's."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system + times.children_user + times.children_system


def _tree(process: psutil.Process) -> float:
    """The live children's time, and what they reaped."""
    try:
        children = process.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    return sum(_with_reaped(child) for child in children) + (_with_reaped(process) - _own(process))


def _server(postmaster: psutil.Process) -> float:
    """The postmaster's time, its reaped backends' and its live ones'. A backend reaped while
    the live ones are read would count in neither (a backend ends as the contender's client
    disconnects, just before the snapshot: a third of the floor's runs lost one backend's CPU
    this way), so read again until nothing was reaped meanwhile."""
    while True:
        reaped = _with_reaped(postmaster)
        live = sum(_own(c) for c in postmaster.children())
        if _with_reaped(postmaster) == reaped:
            return reaped + live


SERVER_PROCESS = re.compile(r"postgres: (?:[^ ]+: )?[a-z ]+$")
"""The command line of a server process that is no backend (checkpointer, background writer,
walwriter, autovacuum launcher, ...): no user, database and client."""
CLIENT_PORT = re.compile(r"\((\d+)\)")


def _server_parts(postmaster: psutil.Process, clients: set[int]) -> dict[str, float]:
    """PostgreSQL's CPU split (the ``postgres:`` groups, inside ``postgres``): the live backends
    of connections from ``clients`` (local TCP ports: the worker's), and the server's own
    processes (what its WAL, checkpoints and statistics cost). The rest of ``postgres`` is the
    other backends: the producer's, ``--wait``'s and the bench's own, mostly ended by then, and
    the worker's sessions that ended (a worker replaces a session after 1,000 uses: past 1,000
    tenants most of the worker's backends count there)."""
    workers = server = 0.0
    for child in postmaster.children():
        try:
            line = " ".join(child.cmdline())
        except psutil.NoSuchProcess:
            continue
        port = CLIENT_PORT.search(line)
        if port is not None and int(port.group(1)) in clients:
            workers += _own(child)
        elif SERVER_PROCESS.match(line):
            server += _own(child)
    return {"postgres:workers": workers, "postgres:server": server}


def _ports(root: psutil.Process) -> set[int]:
    """The local TCP ports of ``root``'s and its children's connections."""
    found: set[int] = set()
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            found |= {c.laddr.port for c in process.net_connections("tcp") if c.laddr}
    return found


def postmaster_pid(url: str) -> int | None:
    """The PostgreSQL server's pid, when it runs on this machine."""
    engine = db.make_engine(url)
    try:
        with engine.connect() as connection:
            backend = int(connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())
        return psutil.Process(backend).ppid()
    except (psutil.Error, sa.exc.SQLAlchemyError):
        return None
    finally:
        engine.dispose()


def redis_pid(client: Any) -> int | None:
    try:
        pid = int(client.info("server")["process_id"])
        psutil.Process(pid)
    except (psutil.Error, KeyError, ValueError):
        return None
    return pid


TOOL = ("producer", "worker_main", "pool", "redis")
"""The groups a deployment pays on its worker hosts (PostgreSQL's share is the app's server)."""


class Groups:
    """Snapshots of each group's CPU-seconds; ``since(before)`` is what a block cost. Without a
    worker (the floor), "producer" is the bench's own children, which run the DDL."""

    def __init__(self, worker: int | None, postgres: int | None, redis: int | None) -> None:
        self.worker = worker
        self.postgres = postgres
        self.redis = redis

    def snapshot(self) -> dict[str, float]:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        found = {
            "machine": machine_busy(),
            "producer": children.ru_utime + children.ru_stime,
            "worker_main": 0.0 if self.worker is None else _own(psutil.Process(self.worker)),
            "pool": 0.0 if self.worker is None else _tree(psutil.Process(self.worker)),
        }
        if self.postgres is not None:
            postmaster = psutil.Process(self.postgres)
            found["postgres"] = _server(postmaster)
            clients = set() if self.worker is None else _ports(psutil.Process(self.worker))
            found.update(_server_parts(postmaster, clients))
        if self.redis is not None:
            found["redis"] = _own(psutil.Process(self.redis))
        return found

    @staticmethod
    def since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        spent = {key: round(after[key] - before[key], 2) for key in before}
        known = sum(value for key, value in spent.items() if key != "machine" and ":" not in key)
        spent["rest"] = round(spent["machine"] - known, 2)
        return spent


def rss_mb(pid: int) -> dict[str, float]:
    """Resident set size of a worker's main process and of each pool process (MB)."""
    root = psutil.Process(pid)
    found = {"main": round(root.memory_info().rss / 2**20, 1)}
    for child in root.children():
        try:
            found[f"pool-{child.pid}"] = round(child.memory_info().rss / 2**20, 1)
        except psutil.NoSuchProcess:
            continue
    return found


PROGRESS_SQL = sa.text(
    "SELECT count(*) FILTER (WHERE NOT status = ANY(CAST(:pending AS text[]))), count(*)"
    " FROM public.migration_run_tenants WHERE run_id = (SELECT max(id) FROM"
    " public.migration_runs)"
).bindparams(pending=list(runs.PENDING))


class Growth:
    """Samples the worker's RSS while a run goes: after its first ``mark`` tenants finished,
    the last time before every tenant had finished (the chord then fires: its callback carries
    every tenant's result), and when the block ends. Growth per tenant shows as a difference
    between the first two; what closing the run leaves behind, between the last two."""

    def __init__(self, url: str, worker: int, mark: int = 1000, every: float = 0.25) -> None:
        self.url, self.worker, self.mark, self.every = url, worker, mark, every
        self.at_mark: dict[str, float] | None = None
        self.before_close: dict[str, float] | None = None
        self.at_end: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "Growth":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.at_end = rss_mb(self.worker)

    def _watch(self) -> None:
        engine = db.make_engine(self.url)
        try:
            while not self._stop.wait(self.every):
                with engine.connect() as connection:
                    finished, total = connection.execute(PROGRESS_SQL).one()
                if total and finished >= total:
                    break
                sample = rss_mb(self.worker)
                if finished >= self.mark:
                    self.at_mark = self.at_mark or sample
                    self.before_close = sample
        except sa.exc.SQLAlchemyError:
            pass  # no run table yet; the end is still sampled
        finally:
            engine.dispose()

    def report(self) -> dict[str, Any]:
        """RSS after the first ``mark`` tenants, before the close and at the end, per process,
        and the largest change in per cent over the tenants and over the whole run."""
        found: dict[str, Any] = {
            "after_first_mb": self.at_mark,
            "before_close_mb": self.before_close,
            "at_end_mb": self.at_end,
        }
        if self.at_mark and self.before_close:
            found["largest_change_pct"] = _largest_change(self.at_mark, self.at_end)
            found["largest_change_before_close_pct"] = _largest_change(
                self.at_mark, self.before_close
            )
        return found


def _largest_change(before: dict[str, float], after: dict[str, float]) -> float:
    return max(round(100 * (after[p] - before[p]) / before[p], 1) for p in before if p in after)
