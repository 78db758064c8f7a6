"""The Celery app: ``celery -A workers worker`` and ``celery -A workers flower`` find it here.

Broker and backend come from ``tenantfleet.config`` (the embedded Redis when nothing is set).
"""

from workers.app import create_app

app = create_app()

__all__ = ["app", "create_app"]
