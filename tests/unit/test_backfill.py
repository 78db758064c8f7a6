"""The backfill API's SQL, from a declaration (no server)."""

import pytest

from tenantfleet import backfill, batches, ledger, sqltree
from tenantfleet.backfill import Backfill
from tenantfleet.config import Settings
from tenantfleet.errors import ConfigError

CENTS = Backfill(
    "orders_amount_cents", table="orders", set={"amount_cents": "(amount * 100)::bigint"}
)


def test_a_batch_sets_only_rows_of_its_key_range_that_differ_so_twice_changes_nothing() -> None:
    assert CENTS.batch_sql() == (
        "UPDATE orders SET amount_cents = (amount * 100)::bigint"
        " WHERE id >= :low AND id < :high AND"
        " (amount_cents IS DISTINCT FROM ((amount * 100)::bigint))"
    )
    assert CENTS.range_sql() == "SELECT min(id), max(id) FROM orders"


def test_the_trigger_computes_the_columns_from_the_row_being_written() -> None:
    sql = CENTS.trigger_sql()
    assert "NEW.amount_cents := CAST(new.amount * 100 AS bigint);" in sql
    assert "CREATE OR REPLACE FUNCTION tenantfleet_bf_orders_amount_cents()" in sql
    assert "BEFORE INSERT OR UPDATE ON orders FOR EACH ROW" in sql
    assert backfill.drop_trigger_sql("orders_amount_cents", "orders") == (
        "DROP TRIGGER IF EXISTS tenantfleet_bf_orders_amount_cents ON orders;"
        " DROP FUNCTION IF EXISTS tenantfleet_bf_orders_amount_cents()"
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "Bad-Name", "table": "orders", "set": {"a": "1"}}, "backfill name"),
        ({"name": "n", "table": "public.orders", "set": {"a": "1"}}, "backfill table"),
        ({"name": "n", "table": "orders", "set": {}}, "set names no column"),
        (
            {"name": "n", "table": "orders", "set": {"a": "1 FROM t; DELETE FROM t; SELECT 1"}},
            "one expression",
        ),
        ({"name": "n", "table": "orders", "set": {"a": "(("}}, "syntax error"),
        ({"name": "n", "table": "orders", "set": {"a": "1"}, "batch_seconds": 0}, "positive"),
    ],
)
def test_a_declaration_that_cannot_be_run_safely_is_refused(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Backfill(**kwargs)  # type: ignore[arg-type]


def test_a_module_declares_backfills_and_needs_them_by_name() -> None:
    class Module:
        backfills = [CENTS]
        requires_backfills = ["orders_amount_cents"]

    assert backfill.declared(Module) == [CENTS] and backfill.required(Module) == [
        "orders_amount_cents"
    ]
    assert backfill.declared(object()) == [] and backfill.required(object()) == []

    class Wrong:
        backfills = ["orders"]

    with pytest.raises(ConfigError, match="list of tenantfleet.backfill.Backfill"):
        backfill.declared(Wrong)


@pytest.mark.parametrize(
    ("width", "took", "wanted", "following"),
    [(1000, 0.1, 0.2, 2000), (1000, 0.4, 0.2, 500), (1000, 10.0, 0.2, 500), (1000, 0.2, 0.2, 1000),
     (1, 5.0, 0.2, 1), (1000, 0.0, 0.2, 2000)],
)  # fmt: skip
def test_the_next_batch_heads_for_the_wanted_time_at_most_doubled_or_halved(
    width: int, took: float, wanted: float, following: int
) -> None:
    assert batches._next_width(width, took, wanted) == following


def test_a_database_over_its_limits_is_said_why() -> None:
    settings = Settings(backfill_max_lock_waits=2, backfill_max_transaction_s=60)
    assert batches.Health(0, 10, 1.0, 100).trouble(settings) is None
    assert "3 sessions wait for locks" in (batches.Health(3, 10, 1.0, 100).trouble(settings) or "")
    assert "95 of 100 connections" in (batches.Health(0, 95, 1.0, 100).trouble(settings) or "")
    assert "open 61 s" in (batches.Health(0, 10, 61.0, 100).trouble(settings) or "")
    lagging = batches.Health(0, 10, 1.0, 100, replication_lag_s=12.5).trouble(settings)
    assert lagging == "a replica is 12.5 s behind (limit 10 s)"


def test_the_ddl_transaction_fills_a_small_table_and_enters_a_big_one_pending() -> None:
    modulo = Backfill("pct", table="orders", set={"cents": "amount % 7"}, at_once_rows=500)
    assert modulo.at_once_sql() == (
        "small AS (SELECT count(*) <= 500 AS yes"
        " FROM (SELECT FROM orders LIMIT 501) AS first_rows),"
        " filled AS (UPDATE orders SET cents = amount % 7"
        " WHERE (SELECT yes FROM small) AND (cents IS DISTINCT FROM (amount % 7)) RETURNING 1)"
    )
    sql = ledger.entry_with_ddl_sql("r'3", modulo)
    assert sql.startswith("WITH small AS")
    assert "SET cents = amount %% 7" in sql  # psycopg2's form: it joins the attempt's string
    assert "SELECT %(run_id)s, %(schema)s, 'pct', 'r''3'," in sql
    assert "CASE WHEN yes THEN 'done' ELSE 'pending' END" in sql  # a big table: batches later
    assert "FROM small ON CONFLICT (run_id, schema_name, name) DO NOTHING" in sql
    assert sql.count("%(") == 2
    bound = sql % {"run_id": 7, "schema": "'acme'"}  # as psycopg2 binds it
    assert len(sqltree.parse(bound)) == 1  # PostgreSQL's parser reads it as one statement
