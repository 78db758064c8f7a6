"""tenantfleet: migration workers for schema-per-tenant PostgreSQL."""

__version__ = "0.1.0"
"""The version, its one source (``pyproject.toml`` reads it; CHANGELOG.md says what it holds)."""
