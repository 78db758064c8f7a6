"""The lint gate: the SQL of every pending revision, checked before a fleet runs it.

Each revision is rendered on its own by Alembic's offline mode (``alembic upgrade --sql``) for a
probe schema, and checked by **squawk** (the PostgreSQL migration linter, ``squawk-cli``, pinned
in ``pyproject.toml``) and by rules only a fleet has:

- ``outside-tenant-schema``: DDL, a foreign key, or a write (``INSERT``, ``UPDATE``, ``DELETE``,
  ``MERGE``) that names an object outside the tenant's schema (a shared table every tenant would
  change or lock at once);
- ``unchecked-code``: a ``DO`` block (its dynamic ``EXECUTE`` cannot be read): blocks until
  allowed by name, once a person has read it;
- ``truncate``, ``cluster``, ``volatile-default``: a plain ``TRUNCATE`` (data gone in every
  tenant), ``CLUSTER`` and ``ADD COLUMN ... DEFAULT`` of a volatile function (a rewrite of the
  whole table under an exclusive lock in every tenant);
- ``index-on-big-table``: ``CREATE INDEX`` without ``CONCURRENTLY`` on a table whose largest
  tenant copy holds ``lint_big_table_rows`` rows or more (the planner's estimate, read across
  the fleet in one catalog pass per database); below that a warning. It stands in for squawk's
  ``require-concurrent-index-creation``, which cannot know sizes;
- ``data-change-on-big-table``: an ``UPDATE`` or ``DELETE`` in the revision's transaction on
  such a table (its rows stay locked until the tenant's migration commits): a batched backfill
  (``tenantfleet.backfill``) does it without blocking the app;
- ``missing-downgrade``: a revision whose ``downgrade()`` is missing or does nothing (its runs
  cannot be rolled back);
- ``not-rendered``: a revision offline mode cannot render (it reads the database): not checked,
  and said so.

The rendered SQL is split and read by PostgreSQL's own parser (``pglast``, libpg_query): every
statement of an ``op.execute`` string counts, comments hide nothing, and SQL that does not parse
is an ``unchecked-code`` finding too.

A finding is an ``error`` (it blocks ``migrate``) or a ``warning``; an error of a rule allowed by
name (``--allow RULE``, ``lint_allow``) is shown as ``allowed`` and blocks nothing.
"""

import ast
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic.script import Script, ScriptDirectory
from sqlalchemy.engine import Connection

from tenantfleet import alembic_runtime, databases, sqltree, versions
from tenantfleet.databases import Placed
from tenantfleet.errors import ConfigError

PROBE = "tenantfleet_lint_probe"
"""The schema the revisions are rendered for: any name outside it is outside the tenant."""

ERROR = "error"
WARNING = "warning"
ALLOWED = "allowed"

OUTSIDE = "outside-tenant-schema"
BIG_INDEX = "index-on-big-table"
BIG_CHANGE = "data-change-on-big-table"
NO_DOWNGRADE = "missing-downgrade"
NOT_RENDERED = "not-rendered"
UNCHECKED = "unchecked-code"
TRUNCATE = "truncate"
CLUSTER = "cluster"
VOLATILE_DEFAULT = "volatile-default"
FLEET_RULES = (
    OUTSIDE,
    BIG_INDEX,
    BIG_CHANGE,
    NO_DOWNGRADE,
    NOT_RENDERED,
    UNCHECKED,
    TRUNCATE,
    CLUSTER,
    VOLATILE_DEFAULT,
)
INSIDE = frozenset({PROBE, "pg_catalog"})
"""The schemas a tenant's statements may name: its own, and the catalog."""
READS = frozenset({"SelectStmt", "VariableSetStmt", "VariableShowStmt", "ExplainStmt"})
VOLATILE = frozenset(
    {"random", "clock_timestamp", "timeofday", "gen_random_uuid", "uuid_generate_v1",
     "uuid_generate_v4", "nextval", "txid_current", "statement_timestamp"}
)  # fmt: skip
"""Functions whose value as a new column's default makes PostgreSQL rewrite the table."""

SQUAWK_ERRORS = frozenset(
    {
        "ban-drop-database",
        "ban-drop-table",
        "ban-drop-column",
        "ban-truncate-cascade",
        "renaming-column",
        "renaming-table",
        "changing-column-type",
        "adding-required-field",
        "ban-concurrent-index-creation-in-transaction",
    }
)
"""squawk's rules that block a fleet run: data lost in every tenant, a rename or type change the
running app breaks on in every tenant at once, a statement that fails in every tenant with
rows. squawk's other rules warn."""
SQUAWK_OFF = (
    "require-concurrent-index-creation",  # index-on-big-table decides, knowing the sizes
    "prefer-robust-stmts",  # each tenant is one transaction: all or nothing, re-runnable
    "require-timeout-settings",  # the workers set lock_timeout and statement_timeout
    "require-lock-timeout",
    "require-statement-timeout",
)

_SIZES_SQL = sa.text(
    "SELECT c.relname, max(c.reltuples)::bigint,"
    " (array_agg(n.nspname ORDER BY c.reltuples DESC))[1]"
    f" FROM {databases.SCHEMAS_JOINED} WHERE c.relname = ANY(CAST(:tables AS text[]))"
    " AND c.relkind IN ('r', 'p') GROUP BY c.relname"
)
"""Per table name, its largest copy among the given schemas (rows, the planner's estimate) and
the schema holding it: one catalog pass."""


@dataclass(frozen=True)
class Finding:
    revision: str
    rule: str
    level: str
    statement: str
    """The statement's first line ("" for a finding about the whole revision)."""
    message: str


@dataclass(frozen=True)
class Findings:
    revisions: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def blocking(self) -> list[Finding]:
        return [f for f in self.findings if f.level == ERROR]

    def as_dict(self) -> dict[str, Any]:
        return {
            "revisions": self.revisions,
            "blocking": len(self.blocking),
            "findings": [f.__dict__ for f in self.findings],
        }


@dataclass(frozen=True)
class _Statement:
    text: str
    line: int
    """Its first line in the text given to squawk (0-based, as squawk counts)."""
    tree: dict[str, Any] = field(default_factory=dict)
    """The statement as PostgreSQL's parser reads it (pglast's dict form; ``@``: node type)."""

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0][:160]

    @property
    def kind(self) -> str:
        return str(self.tree.get("@", ""))


Sizes = Callable[[Sequence[str]], dict[str, tuple[int, str]]]
"""Table names -> {name: (rows of its largest tenant copy, that tenant)}."""


def pending_revisions(
    script: ScriptDirectory, froms: Iterable[str | None], target: str
) -> list[Script]:
    """Every revision between any of ``froms`` and ``target``, oldest first."""
    found: dict[str, Script] = {}
    for start in set(froms):
        for rev in script.iterate_revisions(target, start or "base"):
            if rev.revision != start:
                found[rev.revision] = rev
    order = [r.revision for r in script.walk_revisions()][::-1]
    return sorted(found.values(), key=lambda r: order.index(r.revision))


def check(
    revisions: Sequence[Script], sizes: Sizes, allow: Iterable[str], big_table_rows: int
) -> Findings:
    """Every finding of ``revisions``; errors of rules in ``allow`` are ``allowed``."""
    allowed = set(allow)
    findings: list[Finding] = []
    for rev in revisions:
        findings += _check_revision(rev, sizes, big_table_rows)
    return Findings(
        [r.revision for r in revisions],
        [
            Finding(f.revision, f.rule, ALLOWED, f.statement, f.message)
            if f.level == ERROR and f.rule in allowed
            else f
            for f in findings
        ],
    )


def _check_revision(rev: Script, sizes: Sizes, big_table_rows: int) -> list[Finding]:
    findings = downgrade_findings(rev)
    try:
        statements = _statements(rev)
    except alembic_runtime.NotRendered as exc:
        return [*findings, _not_rendered(rev.revision, exc)]
    except sqltree.ParseError as exc:
        message = f"its SQL does not parse, so it cannot be checked: {exc}"
        return [*findings, Finding(rev.revision, UNCHECKED, ERROR, "", message)]
    for statement in statements:
        findings += _outside(rev.revision, statement)
        findings += _risky(rev.revision, statement)
    findings += _big_tables(rev.revision, statements, sizes, big_table_rows)
    findings += _squawk(rev.revision, [s for s in statements if s.kind != "DoStmt"])
    return list(dict.fromkeys(findings))  # one finding said once


def _not_rendered(revision: str, exc: alembic_runtime.NotRendered) -> Finding:
    """What a person reads when offline mode could not render the revision."""
    said = str(exc)
    if "MockConnection" in said or "get_bind" in said:
        message = "this revision reads the database (get_bind), so it was not checked"
    else:
        message = f"it cannot be rendered offline, so it was not checked: {said}"
    return Finding(revision, NOT_RENDERED, WARNING, "", message)


def _statements(rev: Script) -> list[_Statement]:
    """The revision's own statements (not Alembic's version-table bookkeeping) as PostgreSQL's
    parser splits them, each with the line it starts on when they are joined again with blank
    lines between them (for squawk's line numbers)."""
    start = rev.down_revision if isinstance(rev.down_revision, str) else None
    if isinstance(rev.down_revision, tuple | list):
        start = ",".join(rev.down_revision)
    return statements_of(alembic_runtime.render_sql(PROBE, start, rev.revision))


def statements_of(sql: str) -> list[_Statement]:
    """``sql`` as PostgreSQL's parser splits it, without Alembic's and tenantfleet's own
    statements; ``sqltree.ParseError`` when it does not parse."""
    statements: list[_Statement] = []
    line = 0
    for parsed in sqltree.parse(sql):
        if _bookkeeping(parsed.tree):
            continue
        statements.append(_Statement(parsed.text, line, parsed.tree))
        line += parsed.text.count("\n") + 2
    return statements


def _bookkeeping(tree: dict[str, Any]) -> bool:
    """Alembic's version table and tenantfleet's confinement: not the revision's own."""
    relations = [n.get("relname") for n in sqltree.walk(tree) if n.get("@") == "RangeVar"]
    if versions.VERSION_TABLE in relations:
        return True
    calls = [
        sqltree.names(n.get("funcname")) for n in sqltree.walk(tree) if n.get("@") == "FuncCall"
    ]
    return tree.get("@") == "SelectStmt" and ["set_config"] in calls


def downgrade_findings(rev: Script) -> list[Finding]:
    source = Path(rev.path).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == "downgrade":
            does_something = any(
                not isinstance(stmt, ast.Pass)
                and not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant))
                for stmt in node.body
            )
            if does_something:
                return []
            message = "downgrade() does nothing: runs of this revision cannot be rolled back"
            return [Finding(rev.revision, NO_DOWNGRADE, ERROR, "", message)]
    message = "no downgrade(): runs of this revision cannot be rolled back"
    return [Finding(rev.revision, NO_DOWNGRADE, ERROR, "", message)]


def _outside(revision: str, statement: _Statement) -> list[Finding]:
    """DDL naming anything outside the tenant's schema (a table, a function, a type, a foreign
    key's target), or a write whose target table is outside it. Reads are left alone."""
    tree, kind = statement.tree, statement.kind
    if kind in READS or kind == "DoStmt":
        return []
    named: set[str] = set()
    if kind in sqltree.WRITES:
        target = tree.get("relation") or {}
        named.add(target.get("schemaname") or PROBE)
    else:
        for node in sqltree.walk(tree):
            typ = node.get("@")
            if typ == "RangeVar":
                named.add(node.get("schemaname") or PROBE)
            elif typ in ("FuncCall", "TypeName", "ObjectWithArgs"):
                parts = sqltree.names(
                    node.get("funcname") or node.get("names") or node.get("objname")
                )
                if len(parts) >= 2:
                    named.add(parts[0])
        least = 3 if (tree.get("objtype") or {}).get("name") == "OBJECT_COLUMN" else 2
        objects = tree.get("objects") or ([tree["object"]] if "object" in tree else [])
        for obj in objects if kind in ("DropStmt", "CommentStmt") else []:
            parts = sqltree.names(obj)
            if len(parts) >= least:
                named.add(parts[0])
    outside = sorted(named - INSIDE)
    if not outside:
        return []
    message = (
        f"names objects of schema {', '.join(outside)}: every tenant would change or lock"
        " them, all at once"
    )
    return [Finding(revision, OUTSIDE, ERROR, statement.first_line, message)]


def _risky(revision: str, statement: _Statement) -> list[Finding]:
    """What no linter knows of a fleet: code that cannot be read, and rewrites or data loss
    that every tenant would suffer at once."""
    tree, kind = statement.tree, statement.kind
    found: list[tuple[str, str]] = []
    if kind == "DoStmt":
        found.append(
            (
                UNCHECKED,
                "a DO block cannot be checked (its EXECUTE builds SQL at run time): read it,"
                f" then allow it by name (--allow {UNCHECKED})",
            )
        )
    elif kind == "TruncateStmt":
        found.append((TRUNCATE, "empties the table in every tenant"))
    elif kind == "ClusterStmt":
        found.append((CLUSTER, "rewrites the table under an exclusive lock in every tenant"))
    elif kind == "AlterTableStmt":
        for node in sqltree.walk(tree.get("cmds")):
            if node.get("@") == "Constraint" and node.get("contype", {}).get("name") == (
                "CONSTR_DEFAULT"
            ):
                calls = {
                    sqltree.names(n.get("funcname"))[-1]
                    for n in sqltree.walk(node.get("raw_expr"))
                    if n.get("@") == "FuncCall" and sqltree.names(n.get("funcname"))
                }
                volatile = sorted(calls & VOLATILE)
                if volatile:
                    found.append(
                        (
                            VOLATILE_DEFAULT,
                            f"a default of {', '.join(volatile)}() makes PostgreSQL rewrite the"
                            " whole table under an exclusive lock in every tenant: add the"
                            " column without it, then fill it in batches",
                        )
                    )
    return [
        Finding(revision, rule, ERROR, statement.first_line, message) for rule, message in found
    ]


def _big_tables(
    revision: str, statements: Sequence[_Statement], sizes: Sizes, big_table_rows: int
) -> list[Finding]:
    """A blocking ``CREATE INDEX``, and an ``UPDATE`` or ``DELETE`` in the revision's own
    transaction, on a table that is big in some tenant (a warning for an index on tables small
    everywhere)."""
    indexes = [
        (s, str(s.tree["relation"]["relname"]))
        for s in statements
        if s.kind == "IndexStmt" and not s.tree.get("concurrent")
    ]
    changes = [
        (s, str(s.tree["relation"]["relname"]))
        for s in statements
        if s.kind in ("UpdateStmt", "DeleteStmt") and s.tree.get("relation")
    ]
    tables = sorted({table for _, table in indexes + changes})
    known = sizes(tables) if tables else {}
    findings = []
    for statement, table in indexes:
        rows, where = known.get(table, (0, ""))
        if rows >= big_table_rows:
            level = ERROR
            message = (
                f"blocks writes to {table} while it builds; {table} holds ~{rows:,} rows in"
                f" {where} (>= {big_table_rows:,}): use CREATE INDEX CONCURRENTLY"
                " (op.get_context().autocommit_block())"
            )
        else:
            level = WARNING
            largest = f"at most ~{rows:,} rows ({where})" if where else "no rows yet"
            message = f"blocks writes to {table} while it builds; it is small in every tenant:"
            message += f" {largest}"
        findings.append(Finding(revision, BIG_INDEX, level, statement.first_line, message))
    for statement, table in changes:
        rows, where = known.get(table, (0, ""))
        if rows >= big_table_rows:
            message = (
                f"changes {table}'s rows in the tenant's migration transaction, locking them"
                f" until it commits; {table} holds ~{rows:,} rows in {where}: declare a batched"
                " backfill instead (tenantfleet.backfill.Backfill: short batches, never"
                " blocking the app)"
            )
            findings.append(Finding(revision, BIG_CHANGE, ERROR, statement.first_line, message))
    return findings


def squawk_binary() -> str:
    """The ``squawk`` of this environment (``squawk-cli``), else the one on PATH."""
    beside = Path(sys.executable).parent / "squawk"
    found = str(beside) if beside.is_file() else shutil.which("squawk")
    if found is None:
        raise ConfigError("squawk is not installed: pip install squawk-cli (tenantfleet needs it)")
    return found


def _squawk(revision: str, statements: Sequence[_Statement]) -> list[Finding]:
    if not statements:
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as sql:
        sql.write("".join(f"{s.text};\n\n" for s in statements))
        sql.flush()
        done = subprocess.run(
            [
                squawk_binary(),
                "--reporter",
                "json",
                f"--exclude={','.join(SQUAWK_OFF)}",
                sql.name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode not in (0, 1):
        raise ConfigError(f"squawk failed on revision {revision}: {done.stderr.strip()[:300]}")
    findings = []
    for item in json.loads(done.stdout or "[]"):
        rule = item["rule_name"]
        statement = max((s for s in statements if s.line <= item["line"]), key=lambda s: s.line)
        level = ERROR if rule in SQUAWK_ERRORS else WARNING
        message = item["message"] + (f" {item['help']}" if item.get("help") else "")
        findings.append(Finding(revision, rule, level, statement.first_line, message))
    return findings


def fleet_sizes(engine_for: Callable[[str | None], Any], placed: Sequence[Placed]) -> Sizes:
    """``Sizes`` read from the fleet: one catalog pass per database holding ``placed``, all at
    once; a database that cannot be reached adds nothing."""

    def sizes(tables: Sequence[str]) -> dict[str, tuple[int, str]]:
        per_database: list[dict[str, tuple[int, str]]] = []  # the same table in each

        def collect(connection: Connection, schemas: list[str]) -> dict[str, None]:
            per_database.append(_read_sizes(connection, schemas, tables))
            return {}

        databases.in_each(engine_for, placed, collect)
        largest: dict[str, tuple[int, str]] = {}
        for found in per_database:
            for table, (rows, schema) in found.items():
                if rows > largest.get(table, (-1, ""))[0]:
                    largest[table] = (rows, schema)
        return largest

    return sizes


def _read_sizes(
    connection: Connection, schemas: Sequence[str], tables: Sequence[str]
) -> dict[str, tuple[int, str]]:
    rows = connection.execute(_SIZES_SQL, {"schemas": list(schemas), "tables": list(tables)})
    return {table: (max(int(count), 0), schema) for table, count, schema in rows}
