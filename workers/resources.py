"""What every task in one worker process needs, prepared once per process.

The engine is made after the fork (a pool must never be shared between processes); the parsed
tenant scripts are loaded in the parent when it imports this, so children inherit them.
"""

import os
from functools import cache

from celery.signals import worker_process_init
from sqlalchemy.engine import Engine

from tenantfleet import alembic_runtime, config, db


@cache
def settings() -> config.Settings:
    return config.load_settings()


_engines: dict[int, Engine] = {}


def engine() -> Engine:
    """This process's engine: one connection, kept open between tasks."""
    pid = os.getpid()
    if pid not in _engines:
        _engines[pid] = db.make_engine(config.database_url(settings()), pool_size=1, max_overflow=1)
    return _engines[pid]


@worker_process_init.connect
def _prepare_process(**_: object) -> None:
    alembic_runtime.tenant_script()


alembic_runtime.tenant_script()
