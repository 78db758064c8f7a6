"""Alembic environment of the ``public`` schema (tenant registry and run tables)."""

import sqlalchemy as sa
from alembic import context

from tenantfleet import alembic_runtime as runtime

config = context.config

if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url") or "postgresql://",
        literal_binds=True,
        **runtime.public_context_options(),
    )
    with context.begin_transaction():
        context.execute(sa.text("SET search_path TO public"))
        context.run_migrations()
else:
    with runtime.env_connection(config, "public") as connection:
        context.configure(connection=connection, **runtime.public_context_options())
        with context.begin_transaction():
            runtime.lock_public(connection)
            runtime.adopt_legacy_public_version(connection)
            context.run_migrations()
