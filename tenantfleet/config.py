"""The one place configuration is read: ``TENANTFLEET_*`` environment variables.

Anything left unset for the database or the broker falls back to the embedded default stack
(a PostgreSQL and a Redis from wheels, kept under ``TENANTFLEET_STATE_DIR``).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tenantfleet.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """Every knob, with its default. Field docs live in the README's configuration table."""

    database_url: str | None = None
    broker_url: str | None = None
    result_backend: str | None = None
    state_dir: Path = Path(".tenantfleet")
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
    tenant_alembic: Path | None = None

    def __post_init__(self) -> None:
        if self.visibility_timeout <= self.task_time_limit:
            raise ConfigError(
                "TENANTFLEET_VISIBILITY_TIMEOUT must exceed TENANTFLEET_TASK_TIME_LIMIT "
                f"({self.visibility_timeout:g} <= {self.task_time_limit:g}): a task still running "
                "would be delivered a second time"
            )

    @property
    def soft_time_limit(self) -> float:
        """Raised inside the task first, so it can roll back and record the failure itself."""
        return max(self.task_time_limit * 0.9, self.task_time_limit - 30.0)


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ConfigError(f"{name} must be a whole number, got {raw!r}")
    return int(raw)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read ``TENANTFLEET_*`` from ``env`` (default: the process environment)."""
    env = os.environ if env is None else env
    time_limit = _number(env, "TENANTFLEET_TASK_TIME_LIMIT", 900.0, minimum=1.0)
    return Settings(
        database_url=env.get("TENANTFLEET_DATABASE_URL") or None,
        broker_url=env.get("TENANTFLEET_BROKER_URL") or None,
        result_backend=env.get("TENANTFLEET_RESULT_BACKEND") or None,
        state_dir=state_dir(env.get("TENANTFLEET_STATE_DIR")),
        lock_timeout=_number(env, "TENANTFLEET_LOCK_TIMEOUT", 5.0, minimum=0.001),
        statement_timeout=_number(env, "TENANTFLEET_STATEMENT_TIMEOUT", 300.0, minimum=0.001),
        task_time_limit=time_limit,
        visibility_timeout=_number(
            env, "TENANTFLEET_VISIBILITY_TIMEOUT", max(3600.0, 2 * time_limit), minimum=1.0
        ),
        max_retries=_integer(env, "TENANTFLEET_MAX_RETRIES", 5),
        retry_backoff=_number(env, "TENANTFLEET_RETRY_BACKOFF", 1.0),
        retry_backoff_max=_number(env, "TENANTFLEET_RETRY_BACKOFF_MAX", 60.0),
        task_events=_flag(env, "TENANTFLEET_TASK_EVENTS", True),
        poll_interval=_number(env, "TENANTFLEET_POLL_INTERVAL", 0.1, minimum=0.01),
        stale_run_after=_number(env, "TENANTFLEET_STALE_RUN_AFTER", 600.0, minimum=1.0),
        replay_sql=_flag(env, "TENANTFLEET_REPLAY_SQL", True),
        stall_resume=_number(env, "TENANTFLEET_STALL_RESUME", 30.0),
        tenant_alembic=_existing_file(env, "TENANTFLEET_TENANT_ALEMBIC"),
    )


STATE_DIR_NAME = ".tenantfleet"


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


def _existing_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw).absolute()
    if not path.is_file():
        raise ConfigError(f"{name} names no file: {raw!r}")
    return path


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


def result_backend(settings: Settings) -> str:
    """The result backend; the broker's Redis unless set apart."""
    return settings.result_backend or broker_url(settings)
