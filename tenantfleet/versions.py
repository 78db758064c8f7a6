"""Where schemas stand: the version tables read, and tenantfleet's own public history known,
without importing Alembic.

The read-only commands (``status``, ``runs``, ``report``, ``metrics``) need the revision of
schemas and whether the public schema is at tenantfleet's head, nothing of Alembic's machinery
(``fleet`` also needs the tenant scripts' head, so it loads Alembic); importing Alembic costs
a command about a third of its start (docs/PERFORMANCE.md).
``alembic_runtime`` is the layer that runs Alembic; it reads versions through here too.
"""

import ast
import importlib.util
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantfleet.names import validate_schema_name


def _packaged(name: str) -> Path:
    """Where a subpackage of the distribution lies, found without importing it."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


MIGRATIONS_DIR = _packaged("tenantfleet.migrations")
"""The seed's environments: ``migrations/`` in the repository, ``tenantfleet/migrations`` once
installed. tenantfleet's own tables live in ``public/``; ``tenant/`` is the seed's tenant env."""
PUBLIC_INI = MIGRATIONS_DIR / "public" / "alembic.ini"
PUBLIC_REVISIONS_DIR = MIGRATIONS_DIR / "public" / "alembic" / "versions"
TENANT_INI = MIGRATIONS_DIR / "tenant" / "alembic.ini"
"""The default tenant environment (the seed's); ``TENANTFLEET_TENANT_ALEMBIC`` names another."""
VERSION_TABLE = "alembic_version"
"""The version table in each tenant schema (Alembic's default name)."""
PUBLIC_VERSION_TABLE = "tenantfleet_version"
"""tenantfleet's own version table in ``public``: an app's own public history keeps
``public.alembic_version`` to itself."""
BASE = "base"
"""Before a tenant's first revision: the target of a tenant rolled back that far (a run row's
``to_revision``, a task's target), and how a task message names a row's NULL revision."""
LEGACY_PUBLIC_VERSION_TABLE = "alembic_version"
"""Where versions before 0.2 kept tenantfleet's public revision."""
VERSION_READ_CHUNK = 250

HAS_VERSIONS_FUNCTION_SQL = sa.text(
    "SELECT to_regprocedure('public.tenantfleet_versions(text[], text)') IS NOT NULL"
)
VERSIONS_FUNCTION_SQL = sa.text("SELECT * FROM public.tenantfleet_versions(:schemas, :table)")
"""Public revision ``20251206_000000``: the server reads each schema's version table itself,
one small query a schema; a UNION ALL of 250 version tables cost it more to parse and plan
than this costs to run (the control database only: other databases need nothing installed)."""


@dataclass(frozen=True)
class Step:
    """What one tenant run did: from which revision to which."""

    schema: str
    from_revision: str | None
    to_revision: str | None


def _assigned(tree: ast.Module, name: str) -> str | None:
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                value = ast.literal_eval(node.value)
                if value is None or isinstance(value, str):
                    return value
    raise ValueError(f"no {name} = <a string or None> in a public revision")


@cache
def public_history() -> tuple[str, ...]:
    """tenantfleet's public revisions, oldest first, read from their files' ``revision`` and
    ``down_revision`` (the history is one line; tests/test_migrations.py checks this against
    Alembic's own reading)."""
    below: dict[str | None, str] = {}
    for path in PUBLIC_REVISIONS_DIR.glob("[!_]*.py"):  # not an __init__.py
        tree = ast.parse(path.read_text(encoding="utf-8"))
        revision = _assigned(tree, "revision")
        assert revision is not None
        below[_assigned(tree, "down_revision")] = revision
    history: list[str] = []
    current: str | None = None
    while current in below:
        current = below[current]
        history.append(current)
    return tuple(history)


def public_head() -> str:
    """The public revision this tenantfleet expects."""
    return public_history()[-1]


def has_relation(connection: Connection, name: str) -> bool:
    """Whether ``name`` (qualified or on the search path) names a relation."""
    return connection.execute(sa.text("SELECT to_regclass(:n)"), {"n": name}).scalar() is not None


def public_revision(connection: Connection) -> str | None:
    """tenantfleet's public revision (in the legacy table too, before its first upgrade)."""
    for table in (PUBLIC_VERSION_TABLE, LEGACY_PUBLIC_VERSION_TABLE):
        if has_relation(connection, f"public.{table}"):
            rows = connection.execute(sa.text(f"SELECT version_num FROM public.{table}"))
            ours = set(public_history())
            found = [r for r in rows.scalars() if r in ours or table == PUBLIC_VERSION_TABLE]
            if found:
                return found[0]
    return None


def _chunks(names: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(names), VERSION_READ_CHUNK):
        yield names[start : start + VERSION_READ_CHUNK]


def _in_savepoint(connection: Connection, statement: Any, binds: dict[str, Any]) -> list[Any]:
    """``statement``'s rows, read in a savepoint rolled back at once: that releases the table
    locks it took, so thousands of schemas never exhaust max_locks_per_transaction."""
    savepoint = connection.begin_nested()
    rows = connection.execute(statement, binds).all()
    savepoint.rollback()
    return list(rows)


def _read_by_function(connection: Connection, wanted: list[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for chunk in _chunks(wanted):
        binds = {"schemas": chunk, "table": VERSION_TABLE}
        versions.update(_in_savepoint(connection, VERSIONS_FUNCTION_SQL, binds))
    return versions


def read_versions(connection: Connection, schemas: Iterable[str]) -> dict[str, str | None]:
    """The revision of every schema given, in a few statements (not one query per schema).

    Schemas without an ``alembic_version`` table map to None; schemas that do not exist are
    left out of the result.
    """
    wanted = [validate_schema_name(s) for s in schemas]
    if connection.execute(HAS_VERSIONS_FUNCTION_SQL).scalar_one():
        return _read_by_function(connection, wanted)
    # One catalog lookup per name (to_regclass): a join of pg_namespace and pg_class is planned
    # as a nested loop over every schema and every version table (3 s at 10,000 schemas).
    found = connection.execute(
        sa.text(
            "SELECT s, to_regclass(quote_ident(s) || '.' || :table) IS NOT NULL"
            " FROM unnest(CAST(:schemas AS text[])) AS s"
            " WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s)"
        ),
        {"table": VERSION_TABLE, "schemas": wanted},
    ).all()
    versions: dict[str, str | None] = {name: None for name, _ in found}
    versioned = [name for name, has_table in found if has_table]
    quote = connection.dialect.identifier_preparer.quote_identifier
    for chunk in _chunks(versioned):
        parts = [
            f"SELECT CAST(:s{i} AS text), version_num FROM {quote(name)}.{VERSION_TABLE}"
            for i, name in enumerate(chunk)
        ]
        rows = _in_savepoint(
            connection,
            sa.text(" UNION ALL ".join(parts)),
            {f"s{i}": name for i, name in enumerate(chunk)},
        )
        for name, version in rows:
            previous = versions.get(name)
            versions[name] = f"{previous},{version}" if previous else version
    return versions
