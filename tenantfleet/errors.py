"""Every error a user can cause, each with a one-line message and an exit code.

Driver exceptions are translated into these at the adapter boundary (``db.py``, ``embedded.py``),
so the CLI prints ``str(error)`` and exits with ``error.exit_code``.
"""

from typing import Any

EXIT_OK = 0
EXIT_TENANT_FAILURES = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130

EXIT_CODES: tuple[tuple[int, str, str], ...] = (
    (EXIT_OK, "ok", "done: every selected tenant is at the target (or there was nothing to do);"
     " `status`: the run closed so"),
    (EXIT_TENANT_FAILURES, "tenants failed or skipped", "one or more tenants failed, were skipped"
     " or were cancelled (they are listed, and in the run record); `status`: the run closed so,"
     " or it is abandoned"),
    (EXIT_USAGE, "usage/config/connection error", "usage, configuration or connection error: one"
     " line on stderr, nothing changed; the lint gate refused the run (one more line per"
     " blocking finding); `rollback` refused"),
    (EXIT_TIMEOUT, "--timeout reached or the run is still open", "the command stopped following"
     " a run that goes on: `--timeout` reached (while waiting for an active run, for the"
     " canaries, for a wave `continue` sent, or for the run), or the database was unreachable"
     " for 10 minutes without `--timeout`; `status`: the run is still open and alive (or held)"),
    (EXIT_INTERRUPTED, "interrupted", "interrupted (Ctrl-C); a run already recorded goes on,"
     " `resume` finishes what was not sent"),
)  # fmt: skip
"""Every exit code: (code, what the CLI's help says, what the reference says)."""


class TenantfleetError(Exception):
    """Base of every error the CLI turns into a one-line message (``details``: what ``--json``
    adds to it, e.g. the lint gate's findings as a list)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class UsageError(TenantfleetError):
    """The command line asks for something that cannot be done."""


class ConfigError(TenantfleetError):
    """A ``TENANTFLEET_*`` setting is malformed or inconsistent."""


class MissingExtra(ConfigError):
    """A command needs a part of tenantfleet that is installed as an extra, and it is not."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra} extra: pip install 'tenantfleet[{extra}]'")


class ConnectionFailed(TenantfleetError):
    """The database or the broker cannot be reached."""


class LoginRefused(ConfigError):
    """The database answers but refuses the login (a wrong password, an unknown role or
    database, no pg_hba.conf entry): a configuration to fix, not an outage to wait out."""


class InvalidSchemaName(UsageError):
    """A schema name that tenantfleet refuses to touch."""


class UnknownRevision(UsageError):
    """A revision that the migration scripts do not define."""


class UnknownTenant(UsageError):
    """A schema that is not in ``public.tenant_registry``."""


class DuplicateTenant(UsageError):
    """A schema name or api_key that is already registered."""


class TenantStateError(UsageError):
    """A tenant whose schema is missing or holds a revision the scripts do not know."""


class RunActive(UsageError):
    """Another run is active; a second one would race it."""


class LintRefused(UsageError):
    """The lint gate found a blocking finding in a pending revision: nothing was touched."""


class MigrationFailed(TenantfleetError):
    """A revision's SQL failed; the tenant was rolled back to where it was."""

    exit_code = EXIT_TENANT_FAILURES


class UnsupportedRevision(MigrationFailed):
    """A revision the fleet cannot run as written (e.g. ``autocommit_block``)."""
