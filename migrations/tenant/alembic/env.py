"""Alembic environment of the tables inside one tenant schema (the seed's application).

The schema comes from ``-x schema=NAME`` or ``config.attributes["schema"]``; every statement runs
with that schema alone on the search_path, so ``alembic_version`` and every table land there,
under the same per-schema lock and timeouts as the workers (``tenantfleet.environment``).
"""

from tenantfleet.environment import run_tenant_migrations
from tenantfleet.migrations.tenant.models import TenantBase

run_tenant_migrations(TenantBase.metadata)
