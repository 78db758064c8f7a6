"""tenantfleet: migration workers for schema-per-tenant PostgreSQL."""

__version__ = "0.1.0"
