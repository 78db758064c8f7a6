"""The public models' tables pinned to the ``public`` schema, for the modules that query them.

Queries must not depend on search_path: a tenant transaction has only its own schema on it.
"""

import sqlalchemy as sa

from tenantfleet.models import PublicBase

_metadata = sa.MetaData()
tenant_registry = PublicBase.metadata.tables["tenant_registry"].to_metadata(
    _metadata, schema="public"
)
migration_runs = PublicBase.metadata.tables["migration_runs"].to_metadata(
    _metadata, schema="public"
)
migration_run_tenants = PublicBase.metadata.tables["migration_run_tenants"].to_metadata(
    _metadata, schema="public"
)
migration_attempts = PublicBase.metadata.tables["migration_attempts"].to_metadata(
    _metadata, schema="public"
)
