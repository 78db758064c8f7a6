"""SQL kept whole and by name in files beside this module (``-- name: NAME --`` blocks)."""

import re
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_BLOCK = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def blocks(text: str, *, comments: bool = True) -> dict[str, str]:
    """The named blocks of ``text``, each without its name line and surrounding blank lines
    (what comes before the first name is the file's header, left out); without ``comments``,
    also without the lines that start with ``--`` (a block's documentation)."""
    parts = _BLOCK.split(text)
    found = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = body.strip().splitlines()
        if not comments:
            lines = [line for line in lines if not line.lstrip().startswith("--")]
        found[name] = "\n".join(lines).strip()
    return found


@cache
def queries() -> dict[str, str]:
    """``queries.sql``: the statements of a tenant's attempt, by name, as they are sent."""
    return blocks((_HERE / "queries.sql").read_text(), comments=False)


def query(name: str) -> str:
    """One statement (or, for ``confine``, two) of ``queries.sql``."""
    return queries()[name]


@cache
def functions() -> dict[str, str]:
    """``functions.sql``: the current definition of each tenantfleet function, by name."""
    return blocks((_HERE / "functions.sql").read_text())
