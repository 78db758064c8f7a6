"""The public tables pinned to the ``public`` schema, for the modules that query them.

Queries must not depend on search_path: a tenant transaction has only its own schema on it.
"""

import sqlalchemy as sa

from tenantfleet import models

_metadata = sa.MetaData()
tenant_registry = models.metadata.tables["tenant_registry"].to_metadata(_metadata, schema="public")
migration_runs = models.metadata.tables["migration_runs"].to_metadata(_metadata, schema="public")
migration_run_tenants = models.metadata.tables["migration_run_tenants"].to_metadata(
    _metadata, schema="public"
)
migration_attempts = models.metadata.tables["migration_attempts"].to_metadata(
    _metadata, schema="public"
)
migration_backfills = models.metadata.tables["migration_backfills"].to_metadata(
    _metadata, schema="public"
)
