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


def progress_engine() -> Engine:
    """This process's engine for progress marks (running, retrying): autocommit, and commits
    that do not wait for the WAL flush. A lost mark costs nothing: the outcome row written with
    the migration is durable, and ``resume`` reads the schema locks, not these marks."""
    return _engine(
        "progress",
        {"isolation_level": "AUTOCOMMIT", "connect_args": {"options": "-c synchronous_commit=off"}},
    )


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
