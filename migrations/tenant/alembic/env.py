"""Alembic environment of the tables inside one tenant schema.

The schema comes from ``-x schema=NAME`` or ``config.attributes["schema"]``; every statement runs
with that schema alone on the search_path, so ``alembic_version`` and every table land there.
"""

import sqlalchemy as sa
from alembic import context

from tenantfleet import alembic_runtime as runtime

config = context.config
schema = runtime.schema_from_config(config)

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or "postgresql://",
        literal_binds=True,
        **runtime.tenant_context_options(),
    )
    with context.begin_transaction():
        context.execute(
            sa.text("SELECT set_config('search_path', quote_ident(:schema), true)").bindparams(
                schema=schema
            )
        )
        context.run_migrations()
else:
    with runtime.env_connection(config, schema) as connection:
        context.configure(connection=connection, **runtime.tenant_context_options())
        with context.begin_transaction():
            runtime.confine_to_schema(connection, schema)
            context.run_migrations()
