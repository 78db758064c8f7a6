"""SQL read by PostgreSQL's own parser (``pglast``, libpg_query): the statements of a string and
their trees, for the lint gate and for checking the tenant query. Comments hide nothing, and
every statement of a string is its own."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pglast
import pglast.ast
import pglast.parser
from pglast.stream import RawStream

ParseError = pglast.parser.ParseError


@dataclass(frozen=True)
class Parsed:
    text: str
    """The statement as written (its comments before it left out)."""
    tree: dict[str, Any]
    """As the parser reads it, in pglast's dict form (``@``: the node's type)."""

    @property
    def kind(self) -> str:
        return str(self.tree.get("@", ""))


def parse(sql: str) -> list[Parsed]:
    """Every statement of ``sql``; ``ParseError`` when it does not parse."""
    encoded = sql.encode()  # the parser's locations count bytes
    found = []
    for raw in pglast.parse_sql(sql):
        begin = raw.stmt_location or 0
        end = begin + raw.stmt_len if raw.stmt_len else len(encoded)
        tree: dict[str, Any] = raw.stmt() if raw.stmt is not None else {}
        if tree:
            found.append(Parsed(encoded[begin:end].decode().strip(), tree))
    return found


def walk(value: Any) -> Iterator[dict[str, Any]]:
    """Every node of a tree, the root first."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from walk(child)
    elif isinstance(value, list | tuple):
        for child in value:
            yield from walk(child)


def names(value: Any) -> list[str]:
    """The parts of a dotted name in a tree (``[schema, table]``, ...)."""
    if isinstance(value, dict):
        value = value.get("objname", value.get("items", value.get("names")))
    if not isinstance(value, list | tuple):
        return []
    return [str(v["sval"]) for v in value if isinstance(v, dict) and "sval" in v]


WRITES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
"""Statements that write rows."""


def writes(tree: dict[str, Any]) -> bool:
    """Whether the statement writes rows anywhere in it (a data-modifying WITH, SELECT INTO)."""
    return any(
        node.get("@") in WRITES or (node.get("@") == "SelectStmt" and node.get("intoClause"))
        for node in walk(tree)
    )


def built_in_a_transaction(statement: str) -> tuple[str, str] | None:
    """For one ``CREATE INDEX CONCURRENTLY`` statement on a table named without its schema: the
    same statement without ``CONCURRENTLY`` (the same index, built under a lock that holds
    writes off while it builds) and the table's name; None for anything else."""
    try:
        parsed = pglast.parse_sql(statement)
    except ParseError:
        return None
    if len(parsed) != 1 or not isinstance(parsed[0].stmt, pglast.ast.IndexStmt):
        return None
    index = parsed[0].stmt
    if not index.concurrent or index.relation is None or index.relation.schemaname:
        return None
    index.concurrent = False
    return str(RawStream()(index)), str(index.relation.relname)
