"""What every task in one worker process needs, prepared once per process.

The engines are made after the fork (a pool must never be shared between processes); the parsed
tenant scripts are loaded in the parent when it imports this, so children inherit them.
"""

import logging
import os
import time
from functools import cache
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    celeryd_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.worker.control import inspect_command
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tenantfleet import __version__, alembic_runtime, config, databases, db, logs, metrics
from tenantfleet import queues as fleet_queues
from tenantfleet.errors import ConnectionFailed

logger = logging.getLogger(__name__)
DATABASE_WAIT_S = 2.0


@cache
def settings() -> config.Settings:
    return config.load_settings()


_engines: dict[tuple[int, str, str | None], Engine] = {}
APPLICATION_NAME = "tenantfleet-worker"
"""How the workers' sessions show in ``pg_stat_activity``."""
SESSION_USES = 1000
"""A worker's database session is replaced after this many uses (``db.retire_after``)."""


def engine() -> Engine:
    """This process's engine for outcomes in the control database: one connection, kept open."""
    return _engine("durable", None, {})


def attempt_engine(database: str | None = None) -> Engine:
    """This process's engine for tenant attempts (``tenantfleet.attempt``) in ``database`` (None:
    the control database): autocommit at the driver level, so the attempt's own BEGIN and
    COMMIT ride along with its statements."""
    return _engine("attempt", database, {"isolation_level": "AUTOCOMMIT"})


def steps_engine(database: str | None = None) -> Engine:
    """This process's engine for spans that commit part way (``tenantfleet.stepwise``): plain
    transactions, as Alembic expects them."""
    return _engine("steps", database, {})


def _engine(kind: str, database: str | None, options: dict[str, Any]) -> Engine:
    key = (os.getpid(), kind, database)
    if key not in _engines:
        _engines[key] = databases.make_engine(
            settings(),
            database,
            pool_size=1,
            max_overflow=1,
            connect_args={"application_name": APPLICATION_NAME},
            **options,
        )
        db.retire_after(_engines[key], SESSION_USES)
    return _engines[key]


@cache
def database_name(database: str | None) -> str:
    """The PostgreSQL database name behind a key (None: the control database), for spans."""
    url = databases.url(settings(), database)
    return make_url(url).database or ""


@cache
def queues() -> fleet_queues.Queues:
    """This worker's database's queues; waits (logging why) until the database answers."""
    probe = db.make_engine(config.database_url(settings()), poolclass=NullPool)
    try:
        while True:
            try:
                with db.connect(probe) as connection:
                    return fleet_queues.of_database(connection)
            except (ConnectionFailed, DBAPIError) as exc:
                logger.warning("waiting for the database: %s", db.first_line(exc))
                time.sleep(DATABASE_WAIT_S)
    finally:
        probe.dispose()


@celeryd_after_setup.connect
def _consume_this_databases_queues(instance: Any, **_: object) -> None:
    """``celery -A tenantfleet.workers worker`` consumes its database's queues, and only those."""
    chosen = queues()
    amqp_queues = instance.app.amqp.queues
    for name in chosen.names:
        amqp_queues.add(name)
    amqp_queues.select(chosen.names)
    logger.info("consuming %s", ", ".join(chosen.names))


@inspect_command(args=[("revision", str)])
def tenantfleet_knows(_state: Any, revision: str) -> dict[str, bool]:
    """``app.control.broadcast("tenantfleet_knows", {"revision": R})``: whether this worker's
    scripts define R (read again from disk if not yet)."""
    return {"knows": alembic_runtime.knows_revision(revision)}


@worker_process_init.connect
def _prepare_process(**_: object) -> None:
    alembic_runtime.tenant_script()
    db.install_cancelling_waits()


@celeryd_init.connect
def _prepare_worker(**_: object) -> None:
    """The main process, before its pool starts: where the pool's metrics go, how it logs."""
    metrics.prepare_worker(settings())
    logs.prepare_worker(settings().log_format)


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    logging.getLogger(__name__).info("tenantfleet %s worker ready", __version__)
    metrics.serve_worker(settings())


@worker_process_shutdown.connect
def _process_gone(pid: int | None = None, **_: object) -> None:
    metrics.process_exited(pid or os.getpid())


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: object) -> None:
    """``log_format = "json"``: every handler Celery set up writes one JSON object per line."""
    logs.use(logger.handlers, settings().log_format)


alembic_runtime.tenant_script()
