"""``tenantfleet init``: the config section, and a tenant Alembic environment, in an app.

Writes nothing over anything: an app already configured, or a non-empty environment folder, is
one clear error and nothing is written.
"""

import shutil
import tomllib
from pathlib import Path

from tenantfleet import versions
from tenantfleet.errors import ConfigError

SECTION = """
[tool.tenantfleet]
{tenant_alembic}tenant_alembic = "{ini}"  # the tenant Alembic environment
tenants = "registry"  # "registry" (public.tenant_registry) | "query" | "discover"
# tenants_query = "SELECT schema_name FROM public.accounts WHERE is_active"
# database_url = "env:DATABASE_URL"  # env:NAME reads a variable; TENANTFLEET_* override any key
# broker_url = "env:CELERY_BROKER_URL"
"""

ALEMBIC_INI = """# The tenant Alembic environment: `alembic -c {ini} -x schema=NAME upgrade head`.
# The database URL comes from tenantfleet's configuration unless sqlalchemy.url is set here.
[alembic]
script_location = %(here)s
file_template = %%(year)d%%(month).2d%%(day).2d_%%(hour).2d%%(minute).2d%%(second).2d_%%(slug)s
path_separator = os

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = logging.StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
datefmt = %H:%M:%S
"""

ENV_PY = '''"""The tenant Alembic environment: each run is confined to the schema of
`-x schema=NAME`, under the same per-schema lock and timeouts as tenantfleet's workers."""

from tenantfleet.environment import run_tenant_migrations

# your models' MetaData, for autogenerate (e.g. `from myapp.models import Base`, Base.metadata)
target_metadata = None

run_tenant_migrations(target_metadata)
'''


def init(project: Path, tenant_env: Path | None = None) -> list[Path]:
    """Configure tenantfleet in the app at ``project``; the files written."""
    pyproject = project / "pyproject.toml"
    target = pyproject if pyproject.is_file() else project / "tenantfleet.toml"
    existing = target.read_text() if target.is_file() else ""
    document = tomllib.loads(existing) if existing else {}
    if "tenantfleet" in document.get("tool", {}):
        raise ConfigError(f"{target} already has a [tool.tenantfleet] table")
    if tenant_env is not None and tenant_env.exists() and any(tenant_env.iterdir()):
        raise ConfigError(f"{tenant_env} exists and is not empty")
    ini = (tenant_env / "alembic.ini") if tenant_env is not None else Path("tenant/alembic.ini")
    shown = _relative(ini, project)
    section = SECTION.format(tenant_alembic="" if tenant_env else "# ", ini=shown)
    tomllib.loads(existing + section)  # still a valid TOML document
    written = []
    if tenant_env is not None:
        written += _tenant_env(tenant_env, shown)
    with open(target, "a") as handle:
        handle.write(section)
    return [target, *written]


def _tenant_env(folder: Path, shown_ini: str) -> list[Path]:
    (folder / "versions").mkdir(parents=True, exist_ok=True)
    files = {
        folder / "alembic.ini": ALEMBIC_INI.format(ini=shown_ini),
        folder / "env.py": ENV_PY,
    }
    for path, text in files.items():
        path.write_text(text)
    template = versions.TENANT_INI.parent / "alembic" / "script.py.mako"
    shutil.copyfile(template, folder / "script.py.mako")
    (folder / "versions" / ".keep").write_text("")
    return [*files, folder / "script.py.mako", folder / "versions"]


def _relative(path: Path, project: Path) -> str:
    try:
        return str(path.absolute().relative_to(project.absolute()))
    except ValueError:
        return str(path.absolute())
