"""Workload W2 (shared/WORKLOAD.md): a skewed fleet with a data backfill.

1,000 schemas ``w00001``..``w01000`` at W1's r2, sizes after a Zipf law over a fixed shuffle
(``random.Random(2)``), the largest holding 400,000 orders; the migration r2 -> r3 adds
``orders.amount_cents``, fills it and indexes ``orders.created_at``. Contenders: the fleet
(largest first, ``schedule_by_size``), the same fleet in plan order, and the floor (W processes,
one connection each, the r3 SQL and the version update per schema in one transaction, schemas
taken largest first from a shared queue). Makespan and its lower bound come from the run rows.
"""

import multiprocessing
import random
import shutil
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2
import sqlalchemy as sa

from tenantfleet import db, fleet_setup, versions

R2 = fleet_setup.R2
R3 = "w2_r3"
R3_SQL = """
ALTER TABLE orders ADD COLUMN amount_cents bigint;
UPDATE orders SET amount_cents = (amount * 100)::bigint;
CREATE INDEX ix_orders_created_at ON orders (created_at);
UPDATE alembic_version SET version_num = %(r3)s;
"""
REVISION = f'''"""W2 r3: amount_cents, backfilled, and an index on created_at"""

from alembic import op
import sqlalchemy as sa

revision = {R3!r}
down_revision = {R2!r}
branch_labels = None
depends_on = None
tenantfleet_replay = True


def upgrade() -> None:
    op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))
    op.execute("UPDATE orders SET amount_cents = (amount * 100)::bigint")
    op.create_index("ix_orders_created_at", "orders", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_orders_created_at", "orders")
    op.drop_column("orders", "amount_cents")
'''
GATE = ["--allow", "index-on-big-table", "--allow", "data-change-on-big-table"]
"""W2's index is a blocking CREATE INDEX and its UPDATE changes every row of a 400,000-row table
in the migration's transaction: the lint gate refuses both by default, as it should in
production; the workload defines them so."""


def names(tenants: int) -> list[str]:
    return [f"w{i:05d}" for i in range(1, tenants + 1)]


def order_rows(tenants: int) -> dict[str, int]:
    """Each schema's rows in ``orders``: rank r holds max(20, int(400000 / r**1.3))."""
    ranks = list(range(1, tenants + 1))
    random.Random(2).shuffle(ranks)
    return {
        schema: max(20, int(400000 / rank**1.3))
        for schema, rank in zip(names(tenants), ranks, strict=True)
    }


def tenant_env(directory: Path) -> Path:
    """The seed's tenant environment up to r2, plus W2's r3; its alembic.ini."""
    target = directory / "w2_tenant_env"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        Path(versions.TENANT_INI).parent,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "20250415_*"),
    )
    (target / "alembic" / "versions" / f"{R3}.py").write_text(textwrap.dedent(REVISION))
    return target / "alembic.ini"


FILL_SQL = """
INSERT INTO users (email, full_name)
  SELECT 'u' || g || '@example.com', 'user ' || g FROM generate_series(1, %(users)s) AS g;
INSERT INTO orders (user_id, amount, status)
  SELECT (SELECT min(id) FROM users) + (g %% %(users)s), (g * 7 %% 100000) / 100.0 + 0.99,
         (ARRAY['new','paid','shipped','done','returned','held','void','open'])[1 + g %% 8]
  FROM generate_series(1, %(orders)s) AS g;
"""


def _fill(args: tuple[str, list[tuple[str, int]]]) -> None:
    url, work = args
    connection = psycopg2.connect(dsn(url))
    cursor = connection.cursor()
    for schema, orders in work:
        cursor.execute("SELECT set_config('search_path', quote_ident(%s), true)", (schema,))
        cursor.execute("DELETE FROM orders; DELETE FROM users")
        cursor.execute(FILL_SQL, {"users": max(5, orders // 4), "orders": orders})
        connection.commit()
    connection.close()


def dsn(url: str) -> str:
    """A SQLAlchemy URL as libpq takes it (for psycopg2 directly, as the floors connect)."""
    return (
        sa.engine.make_url(url)
        .render_as_string(hide_password=False)
        .replace("postgresql+psycopg2://", "postgresql://")
    )


def build(url: str, tenants: int, parallel: int) -> list[str]:
    """W2 in ``url``: W1's tenants at r2 with the Zipf sizes, analysed."""
    from tenantfleet.manager import MigrationManager

    engine = db.make_engine(url)
    MigrationManager(engine=engine).upgrade_public()
    schemas = names(tenants)
    fleet_setup.provision(engine, schemas, R2)
    engine.dispose()
    rows = order_rows(tenants)
    biggest_first = sorted(rows.items(), key=lambda item: -item[1])
    slices = [biggest_first[i::parallel] for i in range(parallel)]
    with multiprocessing.get_context("fork").Pool(parallel) as pool:
        pool.map(_fill, [(url, part) for part in slices])
    connection = psycopg2.connect(dsn(url))
    connection.autocommit = True
    connection.cursor().execute("VACUUM ANALYZE")
    connection.close()
    return schemas


def _floor_worker(args: tuple[str, Any]) -> None:
    url, queue = args
    connection = psycopg2.connect(dsn(url))
    cursor = connection.cursor()
    while True:
        schema = queue.get()
        if schema is None:
            break
        cursor.execute("SELECT set_config('search_path', quote_ident(%s), true)", (schema,))
        cursor.execute(R3_SQL, {"r3": R3})
        connection.commit()
    connection.close()


def floor(url: str, schemas: Sequence[str], workers: int) -> float:
    """W processes taking schemas largest first (sizes from the catalog) from one queue."""
    engine = db.make_engine(url)
    with engine.connect() as connection:
        from tenantfleet.databases import SIZES_SQL

        size = {s: n for s, n in connection.execute(SIZES_SQL, {"schemas": list(schemas)})}
    engine.dispose()
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    for schema in sorted(schemas, key=lambda s: -size.get(s, 0)):
        queue.put(schema)
    for _ in range(workers):
        queue.put(None)
    started = time.perf_counter()
    processes = [
        context.Process(target=_floor_worker, args=((url, queue),)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    return time.perf_counter() - started


MAKESPAN_SQL = sa.text(
    "SELECT sum(duration_ms) / 1000.0, max(duration_ms) / 1000.0,"
    " extract(epoch FROM max(finished_at) - min(started_at)), count(*)"
    " FROM public.migration_run_tenants"
    " WHERE run_id = (SELECT max(id) FROM public.migration_runs) AND status = 'succeeded'"
)


GAPS_SQL = sa.text(
    "WITH a AS (SELECT started_at, lag(finished_at) OVER (PARTITION BY worker"
    " ORDER BY started_at) AS previous_end FROM public.migration_attempts"
    " WHERE run_id = (SELECT max(id) FROM public.migration_runs)),"
    " g AS (SELECT extract(epoch FROM started_at - previous_end) AS gap FROM a"
    " WHERE previous_end IS NOT NULL)"
    " SELECT coalesce(sum(gap), 0), coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY gap), 0)"
    " FROM g"
)
"""Between one attempt's end and the next one's start on the same pool process (``worker`` is
host:pid): Celery's hand-off between two tasks, the task's own code around its attempt and the
attempt's round trip; what the makespan holds beyond the durations."""


def makespan(url: str, workers: int) -> dict[str, float]:
    """From the latest run's rows: LB = max(sum d / W, max d), the makespan, their ratio; the
    gaps between tenants on each process (``GAPS_SQL``), summed over the processes."""
    engine = db.make_engine(url)
    with engine.connect() as connection:
        total, longest, span, count = connection.execute(MAKESPAN_SQL).one()
        gaps, median_gap = connection.execute(GAPS_SQL).one()
    engine.dispose()
    lower_bound = max(float(total) / workers, float(longest))
    return {
        "tenants": int(count),
        "sum_d_s": round(float(total), 3),
        "max_d_s": round(float(longest), 3),
        "lb_s": round(lower_bound, 3),
        "makespan_s": round(float(span), 3),
        "makespan_over_lb": round(float(span) / lower_bound, 3),
        "gaps_s": round(float(gaps), 3),
        "gap_ms_median": round(float(median_gap) * 1000, 2),
    }
