"""What every task in one worker process needs, prepared once per process.

The engines are made after the fork (a pool must never be shared between processes); the parsed
tenant scripts are loaded in the parent when it imports this, so children inherit them.
"""

import os
from functools import cache
from typing import Any

from celery.signals import worker_process_init
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, config, db


@cache
def settings() -> config.Settings:
    return config.load_settings()


_engines: dict[tuple[int, str], Engine] = {}


def engine() -> Engine:
    """This process's engine for migrations and outcomes: one connection, kept open."""
    return _engine("durable", {})


def attempt_engine() -> Engine:
    """This process's engine for tenant attempts (``tenantfleet.attempt``): autocommit at the
    driver level, so the attempt's own BEGIN and COMMIT ride along with its statements."""
    return _engine("attempt", {"isolation_level": "AUTOCOMMIT"})


def _engine(kind: str, options: dict[str, Any]) -> Engine:
    key = (os.getpid(), kind)
    if key not in _engines:
        _engines[key] = db.make_engine(
            config.database_url(settings()), pool_size=1, max_overflow=1, **options
        )
    return _engines[key]


@worker_process_init.connect
def _prepare_process(**_: object) -> None:
    alembic_runtime.tenant_script()
    db.install_cancelling_waits()


alembic_runtime.tenant_script()
