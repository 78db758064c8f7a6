"""The helper a tenant Alembic ``env.py`` calls: one line gives plain ``alembic`` the workers'
confinement, per-schema lock and timeouts.

```python
# env.py of an app's tenant environment
from myapp.models import Base
from tenantfleet.environment import run_tenant_migrations

run_tenant_migrations(Base.metadata)
```

``alembic -c tenant/alembic.ini -x schema=acme upgrade head`` (or ``downgrade``, ``current``,
``check``, ``revision --autogenerate``, ``--sql``) then runs with ``acme`` alone on the
search_path, inside one transaction that holds the schema's advisory lock, under
``TENANTFLEET_LOCK_TIMEOUT`` and ``TENANTFLEET_STATEMENT_TIMEOUT``: exactly what a worker does.
"""

from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context

from tenantfleet import alembic_runtime as runtime
from tenantfleet import replay

__all__ = ["run_tenant_migrations"]


def run_tenant_migrations(target_metadata: Any = None, **configure: Any) -> None:
    """Run the tenant migrations Alembic asked for, on the schema of ``-x schema=NAME`` (or
    ``config.attributes["schema"]``). ``target_metadata`` (a ``MetaData`` or a list of them)
    serves autogenerate; ``configure`` adds or overrides ``context.configure`` options."""
    config = context.config
    if (
        config.config_file_name is not None
        and config.attributes.get("configure_logger", True)
        and config.file_config.has_section("formatters")
    ):
        # plain `alembic ... upgrade` says what it runs, as Alembic's own env.py makes it (an ini
        # without logging sections, as an app's own may be, keeps the logging it has)
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    schema = runtime.schema_from_config(config)
    options = {**runtime.tenant_context_options(), "target_metadata": target_metadata, **configure}
    if context.is_offline_mode():
        # rendered as it will run: a % in a literal stays one % (psql and the workers alike)
        context.configure(dialect_name=replay.RENDER_DIALECT, literal_binds=True, **options)
        with context.begin_transaction():
            context.execute(
                sa.text("SELECT set_config('search_path', quote_ident(:schema), true)").bindparams(
                    schema=schema
                )
            )
            context.run_migrations()
        return
    with runtime.env_connection(config, schema) as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            runtime.confine_to_schema(connection, schema)
            context.run_migrations()
