"""Workload W3 (shared/WORKLOAD.md): W2 while the app writes to the five largest tenants.

Four writer threads, each looping over the tenants of ranks 1-5: one transaction an iteration
(``lock_timeout`` 5 s) that updates a random existing order and inserts one, with old app code
(no ``amount_cents``), 2 ms apart; every latency and error is kept. A 10 s baseline before the
migration, then the writers run until ``migrate --wait`` (which waits for the backfills too)
returns. Two ways to write r3: **plain** (W2's revision: ADD COLUMN, UPDATE, CREATE INDEX in one
transaction) and **batched** (the column in a short DDL transaction with a backfill declared
beside it, ``tenantfleet.backfill``; the index built concurrently in a revision of its own).
"""

import random
import shutil
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import w2

WRITERS = 4
LARGEST = 5
PAUSE_S = 0.002
BASELINE_S = 10.0
R3_BATCHED = "w3_r3"
R4_INDEX = "w3_r4"
BATCHED = f'''"""W3 r3, for live tenants: amount_cents, filled by a backfill"""

from alembic import op
import sqlalchemy as sa
from tenantfleet.backfill import Backfill

revision = {R3_BATCHED!r}
down_revision = {w2.R2!r}
branch_labels = None
depends_on = None
tenantfleet_replay = True

backfills = [
    Backfill(
        "orders_amount_cents",
        table="orders",
        key="id",
        set={{"amount_cents": "(amount * 100)::bigint"}},
    )
]


def upgrade() -> None:
    op.add_column("orders", sa.Column("amount_cents", sa.BigInteger()))


def downgrade() -> None:
    op.drop_column("orders", "amount_cents")
'''
INDEX = f'''"""W3 r4: the created_at index, built without blocking writes"""

from alembic import op

revision = {R4_INDEX!r}
down_revision = {R3_BATCHED!r}
branch_labels = None
depends_on = None
tenantfleet_replay = True


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_orders_created_at", "orders", ["created_at"], postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    op.drop_index("ix_orders_created_at", "orders")
'''
WRONG_SQL = (
    "SELECT count(*) FROM {schema}.orders"
    " WHERE amount_cents IS DISTINCT FROM (amount * 100)::bigint"
)


def batched_env(directory: Path) -> Path:
    """The seed's tenant environment up to r2, plus W3's batched r3 and its index r4."""
    target = directory / "w3_tenant_env"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(
        w2.versions.TENANT_INI.parent,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "20250415_*"),
    )
    versions = target / "alembic" / "versions"
    (versions / f"{R3_BATCHED}.py").write_text(textwrap.dedent(BATCHED))
    (versions / f"{R4_INDEX}.py").write_text(textwrap.dedent(INDEX))
    return target / "alembic.ini"


def largest(tenants: int) -> list[str]:
    """The schemas of ranks 1-5 (W2's Zipf sizes)."""
    rows = w2.order_rows(tenants)
    return sorted(rows, key=lambda s: -rows[s])[:LARGEST]


@dataclass
class Writers:
    """The app's old code on the largest tenants: latencies (s) and errors, per phase."""

    url: str
    schemas: Sequence[str]
    phase: str = "baseline"
    began: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    spans: dict[str, float] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        connection = psycopg2.connect(w2.dsn(self.url))
        cursor = connection.cursor()
        ids: dict[str, tuple[int, int]] = {}
        for schema in self.schemas:
            cursor.execute(f'SELECT min(id), max(id) FROM "{schema}".orders')
            ids[schema] = cursor.fetchone()
        connection.close()
        self.began = time.monotonic()
        for n in range(WRITERS):
            thread = threading.Thread(target=self._loop, args=(n, ids), daemon=True)
            thread.start()
            self.threads.append(thread)

    def enter(self, phase: str) -> None:
        """The phase so far ends now; the next begins."""
        now = time.monotonic()
        self.spans[self.phase] = now - self.began
        self.phase, self.began = phase, now

    def _loop(self, seed: int, ids: dict[str, tuple[int, int]]) -> None:
        chance = random.Random(seed)
        connection = psycopg2.connect(w2.dsn(self.url))
        cursor = connection.cursor()
        turn = seed
        while not self.stop.is_set():
            schema = self.schemas[turn % len(self.schemas)]
            turn += 1
            low, high = ids[schema]
            phase = self.phase
            began = time.monotonic()
            try:
                cursor.execute("SELECT set_config('search_path', quote_ident(%s), true)", (schema,))
                cursor.execute("SET LOCAL lock_timeout = '5s'")
                cursor.execute(
                    "UPDATE orders SET status = %s WHERE id = %s",
                    (f"s{chance.randrange(8)}", chance.randint(low, high)),
                )
                cursor.execute(
                    "INSERT INTO orders (user_id, amount, status)"
                    " SELECT min(id), 12.34, 'live' FROM users"
                )
                connection.commit()
            except psycopg2.Error as exc:
                connection.rollback()
                self.errors.setdefault(phase, []).append(str(exc).splitlines()[0])
            self.seen.setdefault(phase, []).append(time.monotonic() - began)
            time.sleep(PAUSE_S)
        connection.close()

    def finish(self) -> None:
        self.enter("after")
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def figures(self, phase: str) -> dict[str, Any]:
        latencies = sorted(self.seen.get(phase, []))
        seconds = max(self.spans.get(phase, 0.0), 1e-3)
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0
        return {
            "writer_max_ms": round(max(latencies, default=0.0) * 1000, 1),
            "writer_p99_ms": round(p99 * 1000, 1),
            "writer_errors": len(self.errors.get(phase, [])),
            "writer_tps": round(len(latencies) / seconds, 1),
            "writer_error_sample": self.errors.get(phase, [])[:3],
        }


def wrong_rows(url: str, schemas: Sequence[str]) -> int:
    """Rows of every tenant whose ``amount_cents`` is not ``(amount * 100)::bigint``."""
    connection = psycopg2.connect(w2.dsn(url))
    cursor = connection.cursor()
    wrong = 0
    for schema in schemas:
        cursor.execute(WRONG_SQL.format(schema=f'"{schema}"'))
        wrong += int(cursor.fetchone()[0])
    connection.close()
    return wrong
