"""Validation of the schema names tenantfleet accepts."""

import re
from collections.abc import Sequence

from tenantfleet.errors import InvalidSchemaName

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
RESERVED = frozenset({"public", "information_schema"})


def shorten(names: Sequence[str], limit: int = 5) -> str:
    """``a, b, c and 7 more``: a list of names fit for a one-line message (a name with a
    character that does not print, such as a newline, is shown quoted with its escapes)."""
    shown = ", ".join(n if n.isprintable() else repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def validate_schema_name(name: str) -> str:
    """Return ``name`` if it is a safe tenant schema name, else raise ``InvalidSchemaName``.

    Checked before any SQL runs; names are still always quoted as identifiers afterwards.
    """
    if not isinstance(name, str) or not SCHEMA_NAME.fullmatch(name):
        raise InvalidSchemaName(
            f"invalid schema name {name!r}: use 1-63 characters of a-z, 0-9 and _, "
            "not starting with a digit"
        )
    if name in RESERVED or name.startswith("pg_"):
        raise InvalidSchemaName(f"invalid schema name {name!r}: reserved by PostgreSQL")
    return name


def refusal(name: object) -> str | None:
    """Why tenantfleet will not touch the schema ``name`` (None: it will)."""
    try:
        validate_schema_name(name)  # type: ignore[arg-type]
    except InvalidSchemaName as exc:
        return str(exc)
    return None
