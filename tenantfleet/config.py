"""The one place configuration is read.

Each setting has one key, and comes from (highest first): its ``TENANTFLEET_<KEY>`` environment
variable; the config file (``[tool.tenantfleet]`` of the app's ``pyproject.toml``, or a
``tenantfleet.toml`` beside it, found from the current directory upwards as git finds ``.git``,
or named by ``--config`` / ``TENANTFLEET_CONFIG``); its default. ``describe`` says where each
value came from (``tenantfleet config``). Anything left unset for the database or the broker
falls back to the embedded default stack (a PostgreSQL and a Redis from wheels, kept under the
state directory).

In the file, a value ``"env:NAME"`` is read from the variable ``NAME`` when the settings load,
so secrets stay in the environment; paths are relative to the file's folder.
"""

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from tenantfleet.errors import ConfigError

ENV_PREFIX = "TENANTFLEET_"
CONFIG_VARIABLE = "TENANTFLEET_CONFIG"
STATE_DIR_NAME = ".tenantfleet"
FILE_NAMES = ("tenantfleet.toml", "pyproject.toml")
TENANT_SOURCES = ("registry", "query", "discover")
LOG_FORMATS = ("text", "json")
DATABASES_TABLE = "databases"
CONTROL_DATABASE = "default"
"""The key of the control database (the one ``database_url`` names): tenants with no key."""
DATABASE_KEY = re.compile(r"[a-z][a-z0-9_]{0,30}")
DATABASE_FIELDS = ("url", "max_concurrent")


@dataclass(frozen=True)
class Database:
    """One ``[tool.tenantfleet.databases.KEY]`` table: where the key's tenants live."""

    key: str
    url: str | None
    """None for the control database (``database_url``)."""
    max_concurrent: int | None = None
    """Its cap; None: the ``max_concurrent`` setting."""


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    state_dir: Path = Path(STATE_DIR_NAME)
    lock_timeout: float = 5.0
    statement_timeout: float = 300.0
    task_time_limit: float = 900.0
    visibility_timeout: float = 3600.0
    max_retries: int = 5
    retry_backoff: float = 1.0
    retry_backoff_max: float = 60.0
    task_events: bool = True
    poll_interval: float = 0.1
    stale_run_after: float = 600.0
    replay_sql: bool = True
    stall_resume: float = 30.0
    backfill_max_lock_waits: int = 10
    backfill_max_transaction_s: float = 300.0
    backfill_max_replication_lag_s: float = 10.0
    tenant_alembic: Path | None = None
    tenants: str = "registry"
    tenants_query: str | None = None
    max_concurrent: int = 16
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    log_format: str = "text"
    schedule_by_size: bool = True
    tracing: bool = False
    wave_order: str | None = None
    lint_allow: tuple[str, ...] = ()
    small_index_rows: int = 1000
    lint_big_table_rows: int = 100_000
    databases: Mapping[str, Database] = field(default_factory=dict)
    """The tenant databases by key (``[tool.tenantfleet.databases.KEY]``), besides this one."""
    config_file: Path | None = field(default=None, compare=False)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    """Where each key's value came from: ``default``, the file, or ``env TENANTFLEET_...``."""

    def __post_init__(self) -> None:
        if self.visibility_timeout <= self.task_time_limit:
            raise ConfigError(
                "visibility_timeout must exceed task_time_limit "
                f"({self.visibility_timeout:g} <= {self.task_time_limit:g}): a task still running "
                "would be delivered a second time"
            )
        if self.tenants == "query" and not self.tenants_query:
            raise ConfigError('tenants = "query" needs tenants_query (an SQL query)')
        if self.max_concurrent < 1:
            raise ConfigError(f"max_concurrent must be at least 1, got {self.max_concurrent}")

    def cap(self, database: str | None) -> int:
        """How many tenants of ``database`` (None: the control database) may migrate at once."""
        found = self.databases.get(database or CONTROL_DATABASE)
        if found is None or found.max_concurrent is None:
            return self.max_concurrent
        return found.max_concurrent

    def database(self, key: str) -> Database:
        """The configured database ``key``; ``ConfigError`` naming the known keys if none."""
        found = self.databases.get(key)
        if found is None or found.url is None:
            known = ", ".join(sorted(k for k, d in self.databases.items() if d.url)) or "none"
            raise ConfigError(
                f"no database {key!r} in the configuration ([tool.tenantfleet.databases.{key}]"
                f" with a url; configured: {known})"
            )
        return found

    @property
    def soft_time_limit(self) -> float:
        """Raised inside the task first, so it can roll back and record the failure itself."""
        return max(self.task_time_limit * 0.9, self.task_time_limit - 30.0)


Parse = Callable[[str, str, Path | None], Any]
"""(raw value, where it came from, the config file's folder) -> value."""


def _seconds(minimum: float) -> Parse:
    def parse(raw: str, where: str, _base: Path | None) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{where} must be a number of seconds, got {raw!r}") from None
        if value < minimum:
            raise ConfigError(f"{where} must be at least {minimum:g}, got {raw!r}")
        return value

    return parse


def _whole(raw: str, where: str, _base: Path | None) -> int:
    if not raw.isdigit():
        raise ConfigError(f"{where} must be a whole number, got {raw!r}")
    return int(raw)


def _positive(raw: str, where: str, base: Path | None) -> int:
    value = _whole(raw, where, base)
    if value < 1:
        raise ConfigError(f"{where} must be at least 1, got {raw!r}")
    return value


RULE_NAME = re.compile(r"[a-z][a-z0-9-]{1,63}")


def _rule_names(raw: str, where: str, _base: Path | None) -> tuple[str, ...]:
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    for name in names:
        if not RULE_NAME.fullmatch(name):
            raise ConfigError(f"{where}: {name!r} is not a lint rule name (e.g. ban-drop-column)")
    return names


def _flag(raw: str, where: str, _base: Path | None) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where} must be true or false, got {raw!r}")


def _text(raw: str, _where: str, _base: Path | None) -> str:
    return raw


def _one_of(*choices: str) -> Parse:
    def parse(raw: str, where: str, _base: Path | None) -> str:
        if raw not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse


def _path(raw: str, _where: str, base: Path | None) -> Path:
    path = Path(raw).expanduser()
    return (base / path if base and not path.is_absolute() else path).absolute()


def _existing_file(raw: str, where: str, base: Path | None) -> Path:
    path = _path(raw, where, base)
    if not path.is_file():
        raise ConfigError(f"{where} names no file: {raw!r}")
    return path


@dataclass(frozen=True)
class Key:
    """One setting: a key of ``[tool.tenantfleet]`` and the variable ``TENANTFLEET_`` + KEY.
    ``default`` and ``meaning`` are what the configuration reference says of it."""

    name: str
    parse: Parse
    default: str
    meaning: str
    secret: bool = False
    """A URL whose password is masked wherever it is shown."""

    @property
    def variable(self) -> str:
        return ENV_PREFIX + self.name.upper()


KEYS = (
    Key("database_url", _text, "embedded PostgreSQL", "the control database (`postgresql://...`;"
        " the psycopg2 driver is used): the registry, the run tables and its own tenants",
        secret=True),
    Key("broker_url", _text, "embedded Redis", "the Celery broker (`redis://host:6379/0`,"
        " `redis+socket:///path`, `amqp://user:pass@host:5672/vhost`)", secret=True),
    Key("result_backend", _text, "the broker URL", "the Celery result backend (holds the chord"
        " state; with RabbitMQ, `redis://...` or `db+postgresql://...`)", secret=True),
    Key("state_dir", _path, "the nearest `.tenantfleet` here or above, else `./.tenantfleet`",
        "where the embedded stack keeps its data, sockets and logs (a new, empty one is"
        " announced on stderr)"),
    Key("lock_timeout", _seconds(0.001), "`5`", "seconds a tenant's DDL may wait for a lock"
        " (then retried)"),
    Key("statement_timeout", _seconds(0.001), "`300`", "seconds one statement of a migration"
        " may run"),
    Key("task_time_limit", _seconds(1.0), "`900`", "hard time limit of a tenant task (soft"
        " limit: 90 % of it; at the soft limit the running statement is cancelled, the tenant"
        " rolled back and recorded `failed`). The workers' setting decides"),
    Key("visibility_timeout", _seconds(1.0), "`max(3600, 2 × time limit)`", "Redis redelivery"
        " delay; must exceed the time limit"),
    Key("max_retries", _whole, "`5`", "retries of a tenant after transient errors"),
    Key("retry_backoff", _seconds(0.0), "`1`", "first retry delay in seconds, doubled each"
        " time, ±50 % jitter"),
    Key("retry_backoff_max", _seconds(0.0), "`60`", "ceiling of the retry delay"),
    Key("task_events", _flag, "`true`", "task events for Flower (sent in batches)"),
    Key("poll_interval", _seconds(0.01), "`0.1`", "how often `--wait` reads the run tables (one"
        " aggregate query)"),
    Key("stale_run_after", _seconds(1.0), "`600`", "an open run idle this long, with no tenant"
        " lock held, no longer blocks new runs"),
    Key("replay_sql", _flag, "`true`", "replay each opted-in upgrade span's SQL, rendered once"
        " per worker process"),
    Key("stall_resume", _seconds(0.0), "`30`", "`--wait` sends lost tenants again after this"
        " many seconds without progress (0: never)"),
    Key("backfill_max_lock_waits", _whole, "`10`", "a backfill's batches pause while more"
        " sessions than this wait for a lock in its database"),
    Key("backfill_max_transaction_s", _seconds(1.0), "`300`", "a backfill's batches pause while"
        " a transaction has been open longer than this in its database"),
    Key("backfill_max_replication_lag_s", _seconds(0.1), "`10`", "a backfill's batches pause"
        " while a streaming replica of its database is further behind than this"
        " (`pg_stat_replication`; the role needs `pg_monitor` to see it)"),
    Key("tenant_alembic", _existing_file, "the seed's `migrations/tenant/alembic.ini`", "the"
        " tenant Alembic environment's `alembic.ini` (in the file: relative to the file's"
        " folder)"),
    Key("tenants", _one_of(*TENANT_SOURCES), "`registry`", "the tenant source: `registry`,"
        " `query` or `discover`"),
    Key("tenants_query", _text, "unset", "with `query`: SQL returning the schema names (first"
        " column) and, optionally, a `database` column (the key) and a `size_hint` column"
        " (bytes)"),
    Key("max_concurrent", _positive, "`16`", "the cap of tenants migrating at once in each"
        " database that sets none"),
    Key("metrics_port", _positive, "unset (off)", "a worker serves its Prometheus metrics on"
        " this port"),
    Key("metrics_address", _text, "`127.0.0.1`", "... on this address (`0.0.0.0` for a remote"
        " Prometheus)"),
    Key("log_format", _one_of(*LOG_FORMATS), "`text`", "`json`: one JSON object per line from"
        " the workers and the CLI"),
    Key("schedule_by_size", _flag, "`true`", "send the largest tenants first (their table"
        " bytes, read while planning); `false`: plan order"),
    Key("tracing", _flag, "`false`", "OpenTelemetry spans for runs and tenant attempts"
        " (`tenantfleet[otel]`)"),
    Key("wave_order", _text, "unset", "a `tenant_registry` column (e.g. `tenant_state`) that"
        " orders tenants into waves and canaries, then the schema name; unset: the schema name"),
    Key("lint_allow", _rule_names, "none", "lint rules that never block a run (comma-separated;"
        " in the file a list)"),
    Key("small_index_rows", _whole, "`1000`", "a replayed `CREATE INDEX CONCURRENTLY` on a"
        " table of at most this many rows is built in its span's one transaction instead; `0`:"
        " always concurrently"),
    Key("lint_big_table_rows", _whole, "`100000`", "`index-on-big-table`: from this many rows"
        " in a tenant's copy, a blocking `CREATE INDEX` blocks the run"),
)  # fmt: skip
KEY_NAMES = tuple(key.name for key in KEYS)


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    values: dict[str, Any]

    @property
    def label(self) -> str:
        table = "[tool.tenantfleet]" if self.path.name == "pyproject.toml" else ""
        return f"{self.path} {table}".strip()


def find_config_file(start: Path | None = None) -> Path | None:
    """The nearest ``tenantfleet.toml``, or ``pyproject.toml`` with a ``[tool.tenantfleet]``
    table, in ``start`` (default: the current directory) or above it."""
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        for name in FILE_NAMES:
            candidate = folder / name
            if candidate.is_file() and (
                name != "pyproject.toml" or "tenantfleet" in _toml(candidate).get("tool", {})
            ):
                return candidate
    return None


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def read_config_file(path: Path) -> ConfigFile:
    """The tenantfleet table of ``path``; unknown keys are one clear error."""
    document = _toml(path)
    if path.name == "pyproject.toml" or "tool" in document:
        values = document.get("tool", {}).get("tenantfleet")
        if values is None:
            raise ConfigError(f"{path} has no [tool.tenantfleet] table")
    else:
        values = document
    unknown = sorted(set(values) - {*KEY_NAMES, DATABASES_TABLE})
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {path}"
            f" (known: {', '.join(KEY_NAMES)}, [{DATABASES_TABLE}.KEY])"
        )
    return ConfigFile(path, dict(values))


def _databases(found: ConfigFile, env: Mapping[str, str]) -> dict[str, Database]:
    """The ``databases`` tables of the file, each checked: a key, a URL (``env:NAME`` read now)
    and a cap. The control database's own table (``default``) may only set its cap."""
    tables = found.values.get(DATABASES_TABLE, {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{DATABASES_TABLE} in {found.label} must be a table of tables")
    databases: dict[str, Database] = {}
    for key, table in tables.items():
        where = f"[{DATABASES_TABLE}.{key}] in {found.label}"
        if not DATABASE_KEY.fullmatch(key):
            raise ConfigError(
                f"{where}: a database key is 1-31 characters of a-z, 0-9 and _, starting"
                " with a letter"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table (url = ..., max_concurrent = ...)")
        unknown = sorted(set(table) - set(DATABASE_FIELDS))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in {where} (known: {', '.join(DATABASE_FIELDS)})"
            )
        url = _from_file(table["url"], f"url of {where}", env) if "url" in table else None
        if key == CONTROL_DATABASE and url is not None:
            raise ConfigError(
                f"{where}: {CONTROL_DATABASE!r} is the control database (database_url);"
                " its table may only set max_concurrent"
            )
        if key != CONTROL_DATABASE and not url:
            raise ConfigError(f'{where} needs a url (a PostgreSQL URL, or "env:NAME")')
        cap = table.get("max_concurrent")
        if cap is not None:
            cap = _positive(_from_file(cap, f"max_concurrent of {where}", env), where, None)
        databases[key] = Database(key, url, cap)
    return databases


def _from_file(value: Any, where: str, env: Mapping[str, str]) -> str:
    """A file value as text; ``env:NAME`` read from the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, a number, a boolean or a list of strings")
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        if not env.get(name):
            raise ConfigError(f"{where} reads the environment variable {name}, which is not set")
        return env[name]
    return value


def load_settings(env: Mapping[str, str] | None = None, config: Path | None = None) -> Settings:
    """Read the settings: environment over config file over defaults."""
    env = os.environ if env is None else env
    given = config or (Path(env[CONFIG_VARIABLE]) if env.get(CONFIG_VARIABLE) else None)
    if given is not None and not given.is_file():
        raise ConfigError(f"the config file {str(given)!r} does not exist")
    path = given or find_config_file()
    found = read_config_file(path) if path else None
    base = path.absolute().parent if path else None
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key in KEYS:
        raw = env.get(key.variable)
        if raw:
            values[key.name] = key.parse(raw, key.variable, Path.cwd())
            sources[key.name] = f"env {key.variable}"
        elif found is not None and key.name in found.values:
            where = f"{key.name} in {found.label}"
            text = _from_file(found.values[key.name], where, env)
            values[key.name] = key.parse(text, where, base)
            sources[key.name] = found.label
        else:
            sources[key.name] = "default"
    if "visibility_timeout" not in values:
        limit = values.get("task_time_limit", Settings.task_time_limit)
        values["visibility_timeout"] = max(3600.0, 2 * limit)
    if "state_dir" not in values:
        values["state_dir"] = state_dir(None)
    if found is not None and DATABASES_TABLE in found.values:
        values[DATABASES_TABLE] = _databases(found, env)
        sources[DATABASES_TABLE] = found.label
    return Settings(**values, config_file=path, sources=sources)


def state_dir(given: str | None, start: Path | None = None) -> Path:
    """The embedded stack's directory: the one given, else the nearest ``.tenantfleet`` in the
    current directory or above it (as git finds ``.git``), else a new one here."""
    if given:
        return Path(given).absolute()
    here = (start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        if (folder / STATE_DIR_NAME).is_dir():
            return folder / STATE_DIR_NAME
    return here / STATE_DIR_NAME


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, value as shown, where it came from) for every key; passwords masked."""
    secret = {key.name for key in KEYS if key.secret}
    rows = []
    for item in fields(Settings):
        if item.name not in KEY_NAMES:
            continue
        value = getattr(settings, item.name)
        shown = "" if value is None else str(value)
        if isinstance(value, tuple):
            shown = ",".join(value)
        if item.name in secret and shown:
            shown = mask_password(shown)
        rows.append((item.name, shown, settings.sources.get(item.name, "default")))
    where = settings.sources.get(DATABASES_TABLE, "default")
    for key, database in sorted(settings.databases.items()):
        if database.url is not None:
            rows.append((f"databases.{key}.url", mask_password(database.url), where))
        rows.append((f"databases.{key}.max_concurrent", str(settings.cap(key)), where))
    return rows


_SECRET_PARAMETER = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)


def mask_password(url: str) -> str:
    """``scheme://user:***@host/...?password=***``: a URL fit to print. Every credential form
    is masked: the userinfo's password and any query parameter named like a password
    (``password=``, ``sslpassword=``)."""
    url = _SECRET_PARAMETER.sub(r"\1***", url)
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


def database_url(settings: Settings) -> str:
    """The database URL, starting the embedded PostgreSQL when none is configured."""
    if settings.database_url:
        return settings.database_url
    from tenantfleet import embedded

    return embedded.postgres_url(settings.state_dir)


def broker_url(settings: Settings) -> str:
    """The broker URL, starting the embedded Redis when none is configured."""
    if settings.broker_url:
        return settings.broker_url
    from tenantfleet import embedded

    return embedded.redis_url(settings.state_dir)


REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")


def is_redis(url: str) -> bool:
    return url.startswith(REDIS_SCHEMES)


def result_backend(settings: Settings) -> str:
    """The result backend (it holds the chord's state); the broker's Redis unless set apart.
    Another broker (RabbitMQ: ``amqp://``) needs one named: Redis or a database."""
    if settings.result_backend:
        return settings.result_backend
    broker = broker_url(settings)
    if not is_redis(broker):
        raise ConfigError(
            "with a broker that is not Redis, set result_backend (e.g. redis://host:6379/1 or"
            " db+postgresql://...): it holds the chord's state"
        )
    return broker
