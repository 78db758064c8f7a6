"""SQL kept whole and by name in files beside this module (``-- name: NAME --`` blocks)."""

import re
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_BLOCK = re.compile(r"^-- name: (\w+) --$", re.MULTILINE)


def blocks(text: str) -> dict[str, str]:
    """The named blocks of ``text``, each without its name line and surrounding blank lines
    (what comes before the first name is the file's header, left out)."""
    parts = _BLOCK.split(text)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


@cache
def functions() -> dict[str, str]:
    """``functions.sql``: the current definition of each tenantfleet function, by name."""
    return blocks((_HERE / "functions.sql").read_text())
