"""The Celery app: ``celery -A tenantfleet.workers worker`` (and ``flower``) find it here.

This folder is installed as ``tenantfleet.workers`` (pyproject's package-dir).

Broker and backend come from ``tenantfleet.config`` (the embedded Redis when nothing is set).
"""

from tenantfleet.workers.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
