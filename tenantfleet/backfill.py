"""Batched data backfills on live tenants, declared in a tenant revision.

A revision that fills a new column of a big table does not ``UPDATE`` it in its transaction
(which would lock the table for the tenant's whole migration): it declares a backfill beside its
``upgrade()``::

    from tenantfleet.backfill import Backfill

    backfills = [
        Backfill(
            "orders_amount_cents",
            table="orders",
            key="id",
            set={"amount_cents": "(amount * 100)::bigint"},
        )
    ]

    def upgrade() -> None:
        op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))

What happens on each tenant (``tenantfleet.batches`` runs it):

1. The revision's DDL commits in its short transaction, and with it a trigger (``BEFORE INSERT
   OR UPDATE``) that computes ``set`` for every row the app writes from then on: rows written by
   old app code during and after the backfill end correct. A later revision drops it
   (``drop_trigger_sql``) once no old code writes.
2. It is entered in the ledger in that transaction: a small table (at most ``at_once_rows``
   rows, 1,000 by default) is filled right there, in one statement, and its entry is done;
   most tenants of a fleet are small, and their backfill then costs what an ``UPDATE`` in the
   revision would. A bigger table's entry is pending.
3. A pending backfill goes in a message queued behind the run's tenants (a concurrent index
   build waits for every older transaction of its database, a batch in flight included), and
   the rows already there are filled in batches of the key, each its own short transaction,
   sized by time (``batch_seconds``, 0.1 s by default) and bounded by ``lock_timeout`` (a
   batch that waits longer is retried smaller). A batch is idempotent: it sets ``set`` where
   the row differs, so a batch done twice (a worker killed after its commit) changes nothing
   the second time.
4. Progress is kept per tenant and backfill in ``public.migration_backfills`` (the ledger):
   ``status`` shows it, ``retry`` resumes a failed backfill from where it stopped.

A later revision that needs the filled column (``SET NOT NULL``, a unique index) says so::

    requires_backfills = ["orders_amount_cents"]

and is never applied to a tenant whose backfill is not done: that tenant is recorded skipped
with the reason, and a later ``migrate`` (or ``retry``) applies it.

Pure: SQL is generated here, never run.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pglast import ast
from pglast.stream import RawStream
from pglast.visitors import Visitor

from tenantfleet import sqltree
from tenantfleet.errors import ConfigError

DECLARED = "backfills"
"""The module attribute of a revision that lists its backfills."""
REQUIRES = "requires_backfills"
"""The module attribute of a revision that needs backfills done before it runs."""
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,40}")


def _identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise ConfigError(f"backfill {what} {value!r}: use 1-41 characters of a-z, 0-9 and _")
    return value


class _OnTheNewRow(Visitor):
    """Every column reference of an expression read from the row being written (``NEW.col``)."""

    def visit_ColumnRef(self, _ancestors: Any, node: ast.ColumnRef) -> ast.ColumnRef:  # noqa: N802
        return ast.ColumnRef(fields=(ast.String(sval="new"), *(node.fields or ())))


@dataclass(frozen=True)
class Backfill:
    """One batched backfill of ``table``: ``set`` (column -> SQL expression over the row's
    own columns) for every row, by ranges of the integer column ``key``."""

    name: str
    table: str
    set: Mapping[str, str]
    key: str = "id"
    batch_seconds: float = 0.1
    """The time one batch should take; the next batch's size follows from the last ones. An
    app write that touches a row of a batch waits for its commit: this is about the longest
    such a wait is (W3's target for the app is 250 ms at most, on a machine whose stalls make
    a batch overrun)."""
    lock_timeout_ms: int = 200
    """How long a batch may wait for a row lock the app holds before it is retried smaller."""
    first_batch: int = 1000
    """Keys in the first batch."""
    at_once_rows: int = 1000
    """A table of at most this many rows is filled in the revision's DDL transaction, in one
    statement, and recorded done there (its DDL holds the table's lock anyway: a small table
    adds milliseconds); 0: in batches unless empty. Only where the ledger is in the tenant's
    database (the control database); elsewhere it goes in batches as any other."""
    _on_new: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        _identifier(self.name, "name")
        _identifier(self.table, "table")
        _identifier(self.key, "key")
        if not self.set:
            raise ConfigError(f"backfill {self.name}: set names no column")
        if (
            self.batch_seconds <= 0
            or self.lock_timeout_ms <= 0
            or self.first_batch < 1
            or self.at_once_rows < 0
        ):
            raise ConfigError(f"backfill {self.name}: sizes and times must be positive")
        for column, expression in self.set.items():
            _identifier(column, "column")
            try:
                parsed = sqltree.parse(f"SELECT {expression} FROM {self.table}")
            except sqltree.ParseError as exc:
                said = f"backfill {self.name}: {column} = {expression!r}: {exc}"
                raise ConfigError(said) from None
            if len(parsed) != 1 or sqltree.writes(parsed[0].tree):
                raise ConfigError(f"backfill {self.name}: {column} must be one expression")
            self._on_new[column] = _on_new_row(expression, self.table)

    @property
    def trigger(self) -> str:
        return f"tenantfleet_bf_{self.name}"

    def trigger_sql(self) -> str:
        """The function and trigger that fill ``set`` on every row written from now on (run in
        the revision's DDL transaction, in the tenant's schema; idempotent)."""
        assignments = " ".join(f"NEW.{c} := {e};" for c, e in self._on_new.items())
        return (
            f"CREATE OR REPLACE FUNCTION {self.trigger}() RETURNS trigger LANGUAGE plpgsql AS"
            f" $tf$ BEGIN {assignments} RETURN NEW; END $tf$;"
            f" DROP TRIGGER IF EXISTS {self.trigger} ON {self.table};"
            f" CREATE TRIGGER {self.trigger} BEFORE INSERT OR UPDATE ON {self.table}"
            f" FOR EACH ROW EXECUTE FUNCTION {self.trigger}()"
        )

    def _fill(self, where: str) -> str:
        """``set`` on the rows that match ``where`` and whose values differ (so that a fill
        done twice changes nothing the second time)."""
        sets = ", ".join(f"{c} = {e}" for c, e in self.set.items())
        differs = " OR ".join(f"{c} IS DISTINCT FROM ({e})" for c, e in self.set.items())
        return f"UPDATE {self.table} SET {sets} WHERE {where} AND ({differs})"

    def batch_sql(self) -> str:
        """One batch: the rows of keys ``:low`` <= key < ``:high`` whose values differ."""
        return self._fill(f"{self.key} >= :low AND {self.key} < :high")

    def at_once_sql(self) -> str:
        """Two common table expressions for the DDL transaction: ``small`` (one row, ``yes``:
        the table has at most ``at_once_rows`` rows, counted without reading more) and
        ``filled`` (every row that differs, set, when it is small: one ``RETURNING 1`` each)."""
        return (
            f"small AS (SELECT count(*) <= {self.at_once_rows} AS yes"
            f" FROM (SELECT FROM {self.table} LIMIT {self.at_once_rows + 1}) AS first_rows),"
            f" filled AS ({self._fill('(SELECT yes FROM small)')} RETURNING 1)"
        )

    def range_sql(self) -> str:
        """The key range to fill: the rows there when the backfill starts (later ones have the
        trigger)."""
        return f"SELECT min({self.key}), max({self.key}) FROM {self.table}"


def _on_new_row(expression: str, table: str) -> str:
    """``expression`` reading the row being written: ``(amount * 100)::bigint`` becomes
    ``CAST(new.amount * 100 AS bigint)``."""
    from pglast import parse_sql

    select = parse_sql(f"SELECT {expression} FROM {table}")[0].stmt
    assert isinstance(select, ast.SelectStmt) and select.targetList
    _OnTheNewRow()(select)
    return str(RawStream()(select.targetList[0].val))


def drop_trigger_sql(name: str, table: str) -> str:
    """For the later revision that no longer needs the trigger of backfill ``name`` (old app
    code no longer writes): ``op.execute(drop_trigger_sql("orders_amount_cents", "orders"))``."""
    trigger = f"tenantfleet_bf_{_identifier(name, 'name')}"
    return (
        f"DROP TRIGGER IF EXISTS {trigger} ON {_identifier(table, 'table')};"
        f" DROP FUNCTION IF EXISTS {trigger}()"
    )


def declared(module: Any) -> list[Backfill]:
    """The backfills a revision's module declares (none: an empty list)."""
    found = getattr(module, DECLARED, None) or []
    if not isinstance(found, list | tuple) or not all(isinstance(b, Backfill) for b in found):
        raise ConfigError(f"{DECLARED} must be a list of tenantfleet.backfill.Backfill")
    return list(found)


def required(module: Any) -> list[str]:
    """The backfills a revision's module needs done before it runs."""
    names = getattr(module, REQUIRES, None) or []
    return [_identifier(n, "name") for n in names]
