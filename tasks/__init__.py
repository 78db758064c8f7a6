"""Celery tasks of tenantfleet."""
