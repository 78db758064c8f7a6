"""The Alembic environment that owns the tables inside every tenant schema."""
