"""The two Alembic environments (``public/`` and ``tenant/``) and the MigrationManager."""
