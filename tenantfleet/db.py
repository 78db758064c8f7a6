"""The database adapter: engines, connection checks, and the translation of driver errors.

The rest of the code never inspects psycopg2 exceptions; it asks ``is_transient`` or catches the
``tenantfleet.errors`` classes raised here.
"""

import re
import select
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from tenantfleet.errors import ConfigError, ConnectionFailed, LoginRefused

CONNECT_TIMEOUT_S = 5
DRIVER = "postgresql+psycopg2"

# SQLSTATEs worth another attempt: the same SQL can succeed once the condition passes.
TRANSIENT_SQLSTATES = frozenset(
    {
        "55P03",  # lock_not_available (lock_timeout)
        "40P01",  # deadlock_detected
        "40001",  # serialization_failure
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now
        "53300",  # too_many_connections
    }
)


def make_engine(url: str, setting: str = "TENANTFLEET_DATABASE_URL", **options: Any) -> Engine:
    """A psycopg2 engine whose connection attempts give up after a bounded time; ``setting``
    names where the URL came from, for errors.

    Plain ``postgresql://`` URLs get the psycopg2 driver (SQLAlchemy 2.1 would pick psycopg 3).
    """
    try:
        parsed = sa.engine.make_url(url)
    except ArgumentError:
        raise ConfigError(f"{setting} is not a valid database URL") from None
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername=DRIVER)
    if parsed.drivername != DRIVER:
        raise ConfigError(
            f"{setting} must be a PostgreSQL URL (postgresql:// or {DRIVER}://),"
            f" not {parsed.drivername}://"
        )
    connect_args = {"connect_timeout": CONNECT_TIMEOUT_S, **options.pop("connect_args", {})}
    return sa.create_engine(parsed, connect_args=connect_args, **options)


def retire_after(engine: Engine, uses: int) -> None:
    """Replace each pooled connection of ``engine`` by a new one after ``uses`` checkouts.

    A PostgreSQL backend keeps every relation it has touched in its caches for as long as it
    lives: a worker's session that migrated tens of thousands of schemas grew to hundreds of
    megabytes on the database server (bench/scale.py, docs/PERFORMANCE.md). A new session every
    ``uses`` checkouts bounds that for one connect (milliseconds) per ``uses`` tenants. Raising
    ``DisconnectionError`` at checkout is SQLAlchemy's way to have the pool connect anew.
    """

    @sa.event.listens_for(engine, "checkout")
    def count(_dbapi: Any, record: Any, _proxy: Any) -> None:
        record.info["uses"] = record.info.get("uses", 0) + 1
        if record.info["uses"] > uses:
            record.info["uses"] = 0
            raise sa.exc.DisconnectionError(f"retired after {uses} uses")


def where(engine: Engine) -> str:
    """``host:port/database`` of the engine, for messages: never its user or a credential."""
    url = engine.url
    host = url.host or url.query.get("host") or "local socket"
    if isinstance(host, tuple):
        host = ",".join(host)
    return f"{host}{f':{url.port}' if url.port else ''}/{url.database or ''}"


REFUSED_LOGIN = re.compile(
    r"FATAL:\s+(password authentication failed|role \".*\" does not exist"
    r"|database \".*\" does not exist|no pg_hba\.conf entry|permission denied for database)"
)
"""What libpq says when the server answers and refuses the login (no SQLSTATE comes with it)."""


def connection_error(engine: Engine, exc: DBAPIError) -> ConnectionFailed | LoginRefused:
    """A one-line ``ConnectionFailed`` for a failed connect (``LoginRefused`` when the server
    refused the login), naming the server, never a credential; its ``reason`` (the driver's
    first line alone) is what run records keep."""
    reason = first_line(exc)
    secrets = [engine.url.password, *(v for k, v in engine.url.query.items() if "password" in k)]
    for secret in secrets:
        for value in secret if isinstance(secret, tuple) else (secret,):
            if value:
                reason = reason.replace(str(value), "***")
    if REFUSED_LOGIN.search(str(exc.orig or exc)):
        return LoginRefused(
            f"the database at {where(engine)} refuses the login: {reason}", {"reason": reason}
        )
    return ConnectionFailed(
        f"cannot connect to the database at {where(engine)}: {reason}", {"reason": reason}
    )


@contextmanager
def connect(engine: Engine) -> Iterator[Connection]:
    """A connection, with a failed connect turned into ``ConnectionFailed``."""
    try:
        connection = engine.connect()
    except OperationalError as exc:
        raise connection_error(engine, exc) from None
    with connection:
        yield connection


@contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A connection inside one transaction, committed on success, rolled back on error."""
    with connect(engine) as connection, connection.begin():
        yield connection


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind ``exc``, if it carries one."""
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "pgcode", None)


UNREACHABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_unreachable(exc: BaseException) -> bool:
    """True when the server cannot be talked to right now: connect failures, lost connections,
    a server shutting down or starting up, no free connection slot."""
    if isinstance(exc, ConnectionFailed):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    code = sqlstate(exc)
    if code is None:
        refused = REFUSED_LOGIN.search(str(exc.orig if isinstance(exc, DBAPIError) else exc))
        return isinstance(exc, OperationalError) and refused is None
    return code in UNREACHABLE_SQLSTATES or code.startswith("08")


def is_transient(exc: BaseException) -> bool:
    """True when the same work may succeed if tried again: lost connections, lock waits, ..."""
    return is_unreachable(exc) or sqlstate(exc) in TRANSIENT_SQLSTATES


def first_line(exc: BaseException) -> str:
    """The first line of the driver's message: what one-line errors show."""
    return describe_error(exc)[1].splitlines()[0]


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(class, message) of an error as people want to read it and run records keep it: the
    driver's, not the wrapper's; for a failed connect, the driver's reason without where the
    database is (records name databases by key)."""
    if isinstance(exc, ConnectionFailed | LoginRefused) and "reason" in exc.details:
        return type(exc).__name__, str(exc.details["reason"])
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    message = str(orig).strip() or type(orig).__name__
    return type(orig).__name__, message


_interruptions: list[BaseException] = []


def wait_cancelling(connection: Any) -> None:
    """A psycopg2 wait callback under which a query can be interrupted.

    libpq blocks in C, where Python signals (Celery's soft time limit) cannot reach. Waiting in
    Python instead, an exception raised meanwhile sends PostgreSQL a cancel request and is kept
    aside; the statement then fails with ``QueryCanceled`` on a connection still usable, the
    transaction rolls back, and ``interruption`` tells the caller what really happened.
    """
    while True:
        try:
            state = connection.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            if state == psycopg2.extensions.POLL_READ:
                select.select([connection.fileno()], [], [])
            elif state == psycopg2.extensions.POLL_WRITE:
                select.select([], [connection.fileno()], [])
        except psycopg2.Error:
            raise
        except BaseException as exc:  # a signal handler's exception, e.g. SoftTimeLimitExceeded
            _interruptions.append(exc)
            connection.cancel()


def interruption(error: BaseException) -> BaseException:
    """What interrupted the query that raised ``error`` (``wait_cancelling``), else ``error``."""
    if _interruptions:
        cause = _interruptions.pop()
        _interruptions.clear()
        return cause
    return error


def install_cancelling_waits() -> None:
    """Make every psycopg2 wait in this process interruptible (see ``wait_cancelling``)."""
    psycopg2.extensions.set_wait_callback(wait_cancelling)
