"""The Alembic environment that owns the ``public`` schema: the registry and the run tables."""
