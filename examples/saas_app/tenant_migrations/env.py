"""The tenant environment: confined to the schema of -x schema=NAME, locked, with timeouts."""

from saas_app.models import TenantBase

from tenantfleet.environment import run_tenant_migrations

run_tenant_migrations(TenantBase.metadata)
