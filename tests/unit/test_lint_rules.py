"""The lint gate's fleet rules on given SQL: PostgreSQL's parser reads it, no server."""

import pytest

from tenantfleet import lint

Rule = tuple[str, str]


def findings(sql: str, big: dict[str, tuple[int, str]] | None = None) -> list[Rule]:
    """(rule, level) of every fleet finding of ``sql``, as rendered for the probe schema."""
    statements = lint.statements_of(sql)
    found = []
    for statement in statements:
        found += lint._outside("r1", statement) + lint._risky("r1", statement)
    found += lint._big_tables("r1", statements, lambda _: big or {}, 100_000)
    return [(f.rule, f.level) for f in found]


OUTSIDE = (lint.OUTSIDE, lint.ERROR)


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE public.tenant_registry ADD COLUMN x int",
        "/* hidden? */ ALTER TABLE public.plans ADD COLUMN x int",
        "SET LOCAL lock_timeout = '1s'; ALTER TABLE public.plans ADD COLUMN x int",
        "-- a comment\nDROP TABLE public.plans",
        "CREATE TABLE a (id int REFERENCES public.plans (id))",
        "COMMENT ON COLUMN public.plans.name IS 'x'",
        "DROP FUNCTION public.f(integer)",
        "UPDATE public.tenant_registry SET tenant_name = 'x'",
        "INSERT INTO public.audit (what) VALUES ('migrated')",
        "DELETE FROM public.sessions",
        'ALTER TABLE "Public".plans ADD COLUMN x int',
    ],
)
def test_anything_that_changes_a_shared_schema_is_found_wherever_it_hides(sql: str) -> None:
    assert OUTSIDE in findings(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE users ADD COLUMN x int",
        "ALTER TABLE tenantfleet_lint_probe.users ADD COLUMN x int",
        "UPDATE users SET plan = (SELECT name FROM public.plans LIMIT 1)",  # a read of public
        "COMMENT ON COLUMN users.name IS 'public.x'",
        "CREATE TABLE t (id pg_catalog.int4)",
        "SELECT public.f(1)",
        "ALTER TABLE users ADD COLUMN note text DEFAULT 'drop table public.x'",
    ],
)
def test_the_tenants_own_objects_and_reads_are_left_alone(sql: str) -> None:
    assert findings(sql) == []


def test_a_do_block_cannot_be_checked_and_blocks() -> None:
    sql = "DO $$ BEGIN EXECUTE 'ALTER TABLE public.x DROP COLUMN y'; END $$"
    assert findings(sql) == [(lint.UNCHECKED, lint.ERROR)]


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("TRUNCATE orders", lint.TRUNCATE),
        ("CLUSTER orders USING ix_orders_status", lint.CLUSTER),
        (
            "ALTER TABLE users ADD COLUMN token uuid DEFAULT gen_random_uuid()",
            lint.VOLATILE_DEFAULT,
        ),
        ("ALTER TABLE users ADD COLUMN r float8 DEFAULT random() * 10", lint.VOLATILE_DEFAULT),
    ],
)
def test_rewrites_and_data_loss_in_every_tenant_block(sql: str, rule: str) -> None:
    assert findings(sql) == [(rule, lint.ERROR)]


def test_a_stable_default_is_no_rewrite() -> None:
    assert findings("ALTER TABLE users ADD COLUMN at timestamptz DEFAULT now()") == []


def test_a_blocking_index_on_a_big_table_is_an_error_and_on_a_small_one_a_warning() -> None:
    sql = "CREATE INDEX ix ON orders (status); CREATE INDEX CONCURRENTLY ix2 ON orders (id)"
    assert findings(sql, {"orders": (400_000, "acme")}) == [(lint.BIG_INDEX, lint.ERROR)]
    assert findings(sql, {"orders": (10, "acme")}) == [(lint.BIG_INDEX, lint.WARNING)]


def test_every_statement_of_one_string_is_its_own_statement() -> None:
    statements = lint.statements_of("SET LOCAL a.b = '1'; -- x\nALTER TABLE t ADD c int; SELECT 1")
    assert [s.kind for s in statements] == ["VariableSetStmt", "AlterTableStmt", "SelectStmt"]
    assert statements[1].text == "ALTER TABLE t ADD c int"


def test_alembics_and_tenantfleets_own_statements_are_not_the_revisions() -> None:
    sql = (
        "SELECT set_config('search_path', 'x', true);\n"
        "CREATE TABLE alembic_version (version_num varchar(32));\n"
        "UPDATE alembic_version SET version_num = 'r2';\n"
        "ALTER TABLE t ADD c int;"
    )
    assert [s.kind for s in lint.statements_of(sql)] == ["AlterTableStmt"]


def test_a_data_change_on_a_big_table_points_at_the_backfill_api() -> None:
    sql = "UPDATE orders SET amount_cents = (amount * 100)::bigint; DELETE FROM users WHERE x"
    found = lint.statements_of(sql)
    big = {"orders": (400_000, "w00001"), "users": (10, "w00001")}
    findings = lint._big_tables("r3", found, lambda _: big, 100_000)
    assert [(f.rule, f.level) for f in findings] == [(lint.BIG_CHANGE, lint.ERROR)]
    assert "tenantfleet.backfill.Backfill" in findings[0].message
