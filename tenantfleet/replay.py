"""Replaying an upgrade's SQL: rendered once by Alembic's offline mode, run as is per tenant.

Replay is much faster than running Alembic for every tenant, but it is only right when the SQL
Alembic would run online is the same for every tenant. That cannot be proven from the outside (a
revision may branch on the schema's name, on the data, on the clock), so replay is **opt-in per
revision**: a revision whose module sets ``tenantfleet_replay = True`` declares that its upgrade
runs the same statements whatever the tenant. Even then a span is rendered under guards, and runs
online (as ``alembic upgrade`` would) when any guard trips:

- every revision of the span opted in;
- its statements come from Alembic's schema operations alone: no ``op.execute`` (raw SQL text
  is not split faithfully: a trailing ``-- comment`` swallows the ``;`` after it) and no
  ``op.bulk_insert`` (data values are not rendered faithfully: a ``timedelta`` becomes an
  interval of seconds, not of days), which run online, as ``alembic upgrade`` runs them;
- it renders offline without asking for the database (``op.get_bind()``, ``context.get_bind()``);
- no statement has a bind parameter without a value (offline it would render as NULL);
- the SQL is the same when rendered for two different schema names (``-x schema=`` included).

The SQL is rendered with a dialect that does not escape ``%`` (named parameters), and escaped once
for psycopg2 by ``driver_sql``: a ``%`` in a literal reaches every tenant as one ``%``.
"""

import io
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from unittest import mock

from alembic.config import Config
from alembic.operations import Operations
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.base import PGCompiler
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2
from sqlalchemy.sql.elements import BindParameter

from tenantfleet import sqltree

OPT_IN = "tenantfleet_replay"
"""The module attribute a revision sets to ``True`` to let its upgrade be replayed."""
PROBES = ("tenantfleet_probe_a", "tenantfleet_probe_b")
RENDER_DIALECT = "postgresql+tenantfleet_render"
"""A URL dialect name: SQLAlchemy loads it from the registry entry below."""


_BLOCK = "-- tenantfleet: autocommit statement"
_BLOCK_END = "-- tenantfleet: end of autocommit statement"
"""Written around each statement of an ``autocommit_block()`` while rendering (comments no
rendered statement holds): what splits a revision into its transactions and statements."""


@dataclass(frozen=True)
class Segment:
    """Part of a step-wise span as Alembic runs it online: ``sql`` in one transaction, or one
    statement in autocommit (inside ``autocommit_block()``)."""

    sql: str
    autocommit: bool
    small_table: tuple[str, str] | None = None
    """For a ``CREATE INDEX CONCURRENTLY``: the statement to build it in a transaction instead,
    and its table (``sqltree.built_in_a_transaction``), for when that table is small."""


class NotReplayable(Exception):
    """A span that must run online; the message says why."""


class _RenderCompiler(PGCompiler):
    def render_literal_bindparam(self, bindparam: BindParameter[Any], *args: Any, **kw: Any) -> Any:
        if bindparam.required and bindparam.value is None and bindparam.callable is None:
            raise NotReplayable(f"bind parameter {bindparam.key!r} has no value")
        return super().render_literal_bindparam(bindparam, *args, **kw)


class RenderDialect(PGDialect_psycopg2):
    """PostgreSQL for offline rendering: named parameters (no ``%`` escaping), strict binds."""

    statement_compiler = _RenderCompiler

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("paramstyle", "named")
        super().__init__(**kw)


registry.register(RENDER_DIALECT.replace("+", "."), __name__, "RenderDialect")
_QUOTE = PGDialect_psycopg2().identifier_preparer


def driver_sql(sql: str) -> str:
    """Rendered SQL as a psycopg2 query string: its ``%`` doubled (it carries no parameters)."""
    return sql.replace("%", "%%")


def _no_bind(*_: Any, **__: Any) -> Any:
    raise NotReplayable("the revision reads the database (get_bind)")


def _no_text(*_: Any, **__: Any) -> Any:
    raise NotReplayable("the revision runs raw SQL (op.execute): it runs online")


def _no_data(*_: Any, **__: Any) -> Any:
    raise NotReplayable("the revision inserts data (op.bulk_insert): it runs online")


@contextmanager
def _offline_guards() -> Iterator[None]:
    """While rendering, asking for the database is refused rather than handed a mock, and so
    are the operations whose offline rendering is not what Alembic runs online."""
    with (
        mock.patch.object(Operations, "get_bind", _no_bind),
        mock.patch.object(EnvironmentContext, "get_bind", _no_bind),
        mock.patch.object(Operations, "execute", _no_text),
        mock.patch.object(Operations, "bulk_insert", _no_data),
    ):
        yield


@contextmanager
def _marked_autocommit_blocks() -> Iterator[None]:
    """While rendering, every statement of an autocommit block is preceded by ``_BLOCK`` (offline
    mode renders none of the block's transaction boundaries)."""

    @contextmanager
    def marked(context: MigrationContext) -> Iterator[None]:
        impl = context.impl
        plain = impl.static_output

        def each(text: str) -> None:
            plain(_BLOCK)
            plain(text)
            plain(_BLOCK_END)

        impl.static_output = each  # type: ignore[method-assign]
        try:
            yield
        finally:
            impl.static_output = plain  # type: ignore[method-assign]

    with mock.patch.object(MigrationContext, "autocommit_block", marked):
        yield


def small_check_sql(found: Sequence[Segment], rows: int) -> str | None:
    """A boolean SQL expression: every table the span's autocommit blocks index has at most
    ``rows`` rows (counted without reading more); None when a block is anything but a
    concurrent index build (``Segment.small_table``), there is no block, or ``rows`` is 0."""
    blocks = [s.small_table for s in found if s.autocommit]
    if rows <= 0 or not blocks or None in blocks:
        return None
    quote = _QUOTE.quote
    tables = sorted({block[1] for block in blocks if block is not None})
    return " AND ".join(
        f"(SELECT count(*) FROM (SELECT FROM {quote(t)} LIMIT {rows + 1}) AS r) <= {rows}"
        for t in tables
    )


def in_one_transaction(found: Sequence[Segment]) -> list[str]:
    """The span's statements with each concurrent index build built in the transaction."""
    return [s.small_table[0] if s.small_table else s.sql for s in found]


def segments(rendered: str) -> list[Segment]:
    """A revision's rendered SQL (``Span.render`` with its blocks marked) as Alembic runs it
    online with a transaction per revision: the statements before the first block in one
    transaction, each statement of a block in autocommit, what follows (the version row) in
    one more transaction."""
    found: list[Segment] = []
    before, *blocks = rendered.split(_BLOCK)
    if before.strip():
        found.append(Segment(before.strip(), autocommit=False))
    for block in blocks:
        statement, _, after = block.partition(_BLOCK_END)
        text = statement.strip()
        found.append(Segment(text, True, sqltree.built_in_a_transaction(text)))
        if after.strip():
            found.append(Segment(after.strip(), autocommit=False))
    return found


@dataclass(frozen=True)
class Span:
    """An upgrade from ``current`` to ``destination`` in a tenant environment."""

    script: ScriptDirectory
    make_config: Callable[[io.StringIO, str], Config]
    """The tenant environment's config for an output buffer and a schema."""
    context_options: dict[str, Any]
    current: str | None
    destination: str

    def opted_in(self) -> bool:
        revisions = self.script.iterate_revisions(self.destination, self.current or "base")
        return all(getattr(rev.module, OPT_IN, False) is True for rev in revisions)

    def render(self) -> str:
        """The span's SQL, the same for every tenant; ``NotReplayable`` (or any error of
        offline mode) when it cannot be replayed."""
        if not self.opted_in():
            raise NotReplayable(f"not every revision up to {self.destination} sets {OPT_IN} = True")
        renders = {self._render_for(probe) for probe in PROBES}
        if len(renders) != 1:
            raise NotReplayable("its SQL depends on the schema it runs in")
        return renders.pop()

    def _render_for(self, probe_schema: str) -> str:
        buffer = io.StringIO()
        cfg = self.make_config(buffer, probe_schema)

        def steps(rev: Any, _context: Any) -> Any:
            return self.script._upgrade_revs(self.destination, rev)

        with (
            _offline_guards(),
            _marked_autocommit_blocks(),
            EnvironmentContext(
                cfg,
                self.script,
                fn=steps,
                as_sql=True,
                starting_rev=self.current,
                destination_rev=self.destination,
            ) as env,
        ):
            env.configure(
                dialect_name=RENDER_DIALECT,
                literal_binds=True,
                output_buffer=buffer,
                transactional_ddl=False,
                **self.context_options,
            )
            env.run_migrations()
        return buffer.getvalue()
