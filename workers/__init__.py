"""The Celery app."""
