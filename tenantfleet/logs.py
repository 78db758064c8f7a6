"""Log lines: plain text by default; with ``log_format = "json"`` one JSON object per line
(``python-json-logger``), from the workers and from the CLI alike.

A tenant's outcome is logged with its fields as ``extra`` (``TENANT_FIELDS``): the text format
shows the message, the JSON format every field, so a log pipeline can filter on ``run_id`` or
``outcome`` without parsing sentences.
"""

import logging
import os
from collections.abc import Iterable
from typing import Any

TENANT_FIELDS = (
    "run_id",
    "schema",
    "database",
    "from_revision",
    "to_revision",
    "attempt",
    "outcome",
    "duration_ms",
    "sqlstate",
    "worker",
    "task_id",
)
JSON_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def formatter(log_format: str, text_format: str) -> logging.Formatter:
    """The formatter of ``log_format``: ``text_format`` for text, else one JSON object."""
    if log_format != "json":
        return logging.Formatter(text_format)
    from pythonjsonlogger.json import JsonFormatter

    return JsonFormatter(JSON_FORMAT, rename_fields=RENAMED, timestamp=False)


def use(handlers: Iterable[logging.Handler], log_format: str) -> None:
    """Switch ``handlers`` (e.g. the ones Celery set up) to JSON when asked; text is left as
    it was configured."""
    if log_format != "json":
        return
    for handler in handlers:
        handler.setFormatter(formatter(log_format, ""))


def prepare_worker(log_format: str) -> None:
    """A worker's main process, before Celery sets up its logging: with JSON, what is said
    before (Python warnings included) is JSON too."""
    if log_format != "json":
        return
    logging.captureWarnings(True)
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format, ""))
    logging.getLogger().addHandler(handler)
    # Celery prints a few lines itself, from signal handlers ("worker: Warm shutdown
    # (MainProcess)"): the same, as JSON, written as Celery writes them (no logging lock)
    from celery.apps import worker

    def say(message: str, *_: object) -> None:
        record = logging.LogRecord(
            "celery.apps.worker", logging.WARNING, __file__, 0, message.strip(), None, None
        )
        os.write(2, (handler.format(record) + "\n").encode())

    worker.safe_say = say


def tenant_extra(**fields: Any) -> dict[str, Any]:
    """The ``extra`` of a tenant's log line: every field of ``TENANT_FIELDS``, None if unknown."""
    unknown = set(fields) - set(TENANT_FIELDS)
    assert not unknown, unknown
    return {name: fields.get(name) for name in TENANT_FIELDS}
