"""The original system's script: ``python migrations/migrate.py COMMAND [--schema S]``.

Its commands are spelled here as the ``tenantfleet`` commands they stand for; the operations
themselves, and ``MigrationManager``, live in the library (``tenantfleet.manager``), so
``from migrations.migrate import MigrationManager`` keeps working from the repository.
"""

import sys
from collections.abc import Sequence

from tenantfleet.errors import UsageError
from tenantfleet.manager import MigrationManager, Status

__all__ = ["MigrationManager", "Status", "legacy_argv", "main"]

# The original script's commands, as the tenantfleet commands they stand for.
_LEGACY = {
    "init-public": ["public", "init"],
    "upgrade-public": ["public", "upgrade"],
    "status-public": ["public", "status"],
    "init-tenant": ["tenant", "create"],
    "upgrade-tenant": ["tenant", "upgrade"],
    "downgrade-tenant": ["tenant", "downgrade"],
    "status": ["tenant", "status"],
}


def legacy_argv(argv: Sequence[str]) -> list[str]:
    """``init-tenant --schema demo`` -> ``tenant create demo`` (and so on)."""
    if not argv or argv[0] not in _LEGACY:
        raise UsageError(f"usage: migrate.py {{{','.join(_LEGACY)}}} [--schema S] [--revision R]")
    words = list(_LEGACY[argv[0]])
    rest = list(argv[1:])
    if "--schema" in rest:
        at = rest.index("--schema")
        if at + 1 >= len(rest):
            raise UsageError("--schema needs a value")
        words.append(rest[at + 1])
        del rest[at : at + 2]
    return words + rest


def main(argv: Sequence[str] | None = None) -> int:
    from tenantfleet import cli

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        translated = legacy_argv(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return cli.main(translated)


if __name__ == "__main__":
    sys.exit(main())
