"""Prometheus metrics: what the workers saw, and what the run tables know.

Two sources, both prefixed ``tenantfleet_``, with labels that stay bounded (an outcome, a
database key, a state; never a tenant):

- **the workers** (``metrics_port``, off by default): every pool process counts its tenants in
  ``prometheus-client``'s multiprocess mode (files under the state directory, wiped when the
  worker starts), and the worker's main process serves their sum. They reset when the worker
  restarts, as Prometheus counters may.
- **the run tables** (``tenantfleet metrics``, once on stdout or ``--serve``d): read from
  PostgreSQL at every scrape, so a scrape sees the truth whatever happened to the workers.
"""

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenantfleet import databases, ledger, runs, states
from tenantfleet.config import Settings
from tenantfleet.errors import UsageError

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
LOCK_TIMEOUT = "55P03"


@dataclass(frozen=True)
class Metric:
    """One metric family, declared once: the code that makes it and the reference read this."""

    name: str
    kind: str
    """``counter``, ``gauge`` or ``histogram``."""
    help: str
    labels: tuple[str, ...] = ()
    source: str = "run tables"
    """``worker`` (a worker's ``metrics_port``) or ``run tables`` (``tenantfleet metrics``)."""

    @property
    def exposed(self) -> str:
        """The name a scrape shows (a counter gets ``_total``)."""
        return self.name + "_total" if self.kind == "counter" else self.name


CATALOGUE = (
    Metric("tenantfleet_worker_tenants", "counter", "Tenant attempts this worker ended, by outcome",
           ("outcome", "database"), "worker"),
    Metric("tenantfleet_tenant_duration_seconds", "histogram",
           "How long a tenant's attempt took in the worker, by outcome", ("outcome", "database"),
           "worker"),
    Metric("tenantfleet_worker_retries", "counter",
           "Tenant attempts that ended in a transient error and were retried", ("database",),
           "worker"),
    Metric("tenantfleet_worker_lock_timeouts", "counter",
           "Tenant attempts that gave up waiting for a lock (lock_timeout)", ("database",),
           "worker"),
    Metric("tenantfleet_tenants_finished", "counter",
           "Tenants that reached a final state in a run, by outcome (the run tables)",
           ("outcome", "database")),
    Metric("tenantfleet_retries", "counter",
           "Tenant attempts that ended in a transient error and were retried (the run tables)"),
    Metric("tenantfleet_lock_timeouts", "counter",
           "Tenant attempts that gave up waiting for a lock (the run tables)"),
    Metric("tenantfleet_run_id", "gauge", "The latest run's id"),
    Metric("tenantfleet_run_open", "gauge", "1 while the latest run is open"),
    Metric("tenantfleet_run_tenants", "gauge", "The latest run's tenants by state and database",
           ("state", "database")),
    Metric("tenantfleet_run_failure_budget_remaining", "gauge",
           "Failures the latest run may still have before it skips the rest (with"
           " --max-failures)"),
    Metric("tenantfleet_run_wave", "gauge", "The wave the run is at (a run with waves)"),
    Metric("tenantfleet_run_tenants_waiting_for_lock", "gauge",
           "The latest run's tenants waiting for a lock right now, by database", ("database",)),
    Metric("tenantfleet_run_tenant_duration_seconds", "histogram",
           "The latest run's finished tenants by how long their last attempt took (the run"
           " tables)"),
    Metric("tenantfleet_run_backfills", "gauge",
           "The latest run's backfills (tenant x backfill) by state", ("state",)),
    Metric("tenantfleet_run_backfill_rows", "gauge", "Rows the latest run's backfills have filled"),
    Metric("tenantfleet_run_backfill_keys_left", "gauge",
           "Keys the latest run's backfills have still to go through"),
)  # fmt: skip
_BY_NAME = {metric.name: metric for metric in CATALOGUE}


# -- the workers ---------------------------------------------------------------------------


def worker_directory(settings: Settings, pid: int) -> Path:
    return settings.state_dir / "metrics" / f"worker-{pid}"


def prepare_worker(settings: Settings) -> None:
    """In a worker's main process, before its pool starts: a fresh multiprocess directory for
    its children (they inherit the variable). Nothing when ``metrics_port`` is unset."""
    if not settings.metrics_port:
        return
    directory = worker_directory(settings, os.getpid())
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    # prometheus-client picks its value class when first imported, and the celery command
    # imports it early (Flower's plugin): pick again, now that the directory is set
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def serve_worker(settings: Settings) -> None:
    """In a worker's main process, once its pool runs: serve the sum of its processes'
    metrics on ``metrics_port``."""
    if not settings.metrics_port or MULTIPROC_VARIABLE not in os.environ:
        return
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(settings.metrics_port, settings.metrics_address, registry=registry)


def process_exited(pid: int) -> None:
    """A pool process ended: its live gauges go (its counters stay in the sum)."""
    if MULTIPROC_VARIABLE in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


@dataclass(frozen=True)
class _WorkerMetrics:
    tenants: Any
    duration: Any
    retries: Any
    lock_timeouts: Any


@cache
def _worker_metrics() -> _WorkerMetrics:
    from prometheus_client import Counter, Histogram

    def declared(name: str) -> tuple[str, str, list[str]]:
        metric = _BY_NAME[name]
        return metric.name, metric.help, list(metric.labels)

    return _WorkerMetrics(
        Counter(*declared("tenantfleet_worker_tenants")),
        Histogram(*declared("tenantfleet_tenant_duration_seconds"), buckets=DURATION_BUCKETS),
        Counter(*declared("tenantfleet_worker_retries")),
        Counter(*declared("tenantfleet_worker_lock_timeouts")),
    )


def observe(outcome: str, database: str | None, seconds: float, sqlstate: str | None) -> None:
    """Count one ended attempt (a no-op without ``metrics_port``)."""
    if MULTIPROC_VARIABLE not in os.environ:
        return
    found = _worker_metrics()
    key = databases.shown(database)
    found.tenants.labels(outcome, key).inc()
    found.duration.labels(outcome, key).observe(seconds)
    if outcome == "retrying":
        found.retries.labels(key).inc()
    if sqlstate == LOCK_TIMEOUT:
        found.lock_timeouts.labels(key).inc()


# -- the run tables --------------------------------------------------------------------------

_FINISHED = sa.text(
    "SELECT status, coalesce(database, 'default'), count(*) FROM public.migration_run_tenants"
    " WHERE status IN ('succeeded', 'failed', 'skipped', 'cancelled') GROUP BY 1, 2"
)
_ATTEMPTS = sa.text(
    "SELECT count(*) FILTER (WHERE outcome = 'retrying'),"
    f" count(*) FILTER (WHERE sqlstate = '{LOCK_TIMEOUT}') FROM public.migration_attempts"
)
_DURATIONS = sa.text(
    "WITH d AS MATERIALIZED (SELECT duration_ms FROM public.migration_run_tenants"
    " WHERE run_id = :run_id AND duration_ms IS NOT NULL)"
    " SELECT (SELECT count(*) FROM d), (SELECT coalesce(sum(duration_ms), 0) / 1000.0 FROM d),"
    " ARRAY(SELECT (SELECT count(*) FROM d WHERE duration_ms <= b * 1000)"
    " FROM unnest(CAST(:bounds AS float8[])) WITH ORDINALITY AS u(b, i) ORDER BY i)"
)
"""The latest run's durations: how many, their sum, and the cumulative count at each bound."""


@dataclass(frozen=True)
class Sample:
    """A metric of ``CATALOGUE`` (by name) and its values now."""

    name: str
    values: list[tuple[dict[str, str], float]]
    buckets: list[tuple[str, float]] | None = None
    """A histogram's cumulative buckets (upper bound, count) and, in ``values``, its sum."""

    @property
    def metric(self) -> Metric:
        return _BY_NAME[self.name]


Blocked = Callable[[int], list[str]]
"""A run id -> the database key of each of its tenants waiting for a lock right now."""


def run_samples(connection: Connection, blocked: Blocked) -> list[Sample]:
    """What the run tables say now: every finished tenant ever, by outcome and database; the
    retries and lock timeouts of every attempt; the latest run's tenants by state and database,
    its failure budget left, its wave, its tenants waiting for a lock (``blocked``) and its
    succeeded tenants' durations."""
    finished = connection.execute(_FINISHED).all()
    retries, lock_timeouts = connection.execute(_ATTEMPTS).one()
    samples = [
        Sample(
            "tenantfleet_tenants_finished",
            [({"outcome": status, "database": key}, float(n)) for status, key, n in finished],
        ),
        Sample(
            "tenantfleet_retries",
            [({}, float(retries))],
        ),
        Sample(
            "tenantfleet_lock_timeouts",
            [({}, float(lock_timeouts))],
        ),
    ]
    try:
        run_id = runs.latest_run_id(connection)
    except UsageError:  # no run yet
        return samples
    return samples + _latest_run(connection, run_id, blocked)


def _latest_run(connection: Connection, run_id: int, blocked: Blocked) -> list[Sample]:
    run = runs.get_run(connection, run_id)
    by_database = runs.counts_by_database(connection, run_id)
    by_state = [
        ({"state": state, "database": databases.shown(database)}, float(getattr(found, state)))
        for database, found in by_database.items()
        for state in states.TENANT_STATES
    ]
    open_ = run.finished_at is None
    samples = [
        Sample("tenantfleet_run_id", [({}, float(run.id))]),
        Sample("tenantfleet_run_open", [({}, float(open_))]),
        Sample(
            "tenantfleet_run_tenants",
            by_state,
        ),
    ]
    budget = run.options.get("max_failures")
    if budget:
        failed = sum(found.failed for found in by_database.values())
        samples.append(
            Sample(
                "tenantfleet_run_failure_budget_remaining",
                [({}, float(max(budget - failed, 0)))],
            )
        )
    if run.wave is not None:
        samples.append(Sample("tenantfleet_run_wave", [({}, run.wave)]))
    waiting: dict[str, int] = {}
    for key in blocked(run_id) if open_ else []:
        waiting[key] = waiting.get(key, 0) + 1
    samples.append(
        Sample(
            "tenantfleet_run_tenants_waiting_for_lock",
            [({"database": key}, float(n)) for key, n in sorted(waiting.items())],
        )
    )
    samples.append(_durations(connection, run_id))
    return samples + _backfills(connection, run_id)


def _backfills(connection: Connection, run_id: int) -> list[Sample]:
    """The latest run's backfills: how many in each state, rows filled, keys left."""
    entries = ledger.of_run(connection, run_id)
    by_state = {state.value: 0 for state in states.BACKFILL_STATES}
    for entry in entries:
        by_state[entry.status] += 1
    return [
        Sample(
            "tenantfleet_run_backfills",
            [({"state": state}, float(n)) for state, n in by_state.items()],
        ),
        Sample(
            "tenantfleet_run_backfill_rows",
            [({}, float(sum(e.rows_done for e in entries)))],
        ),
        Sample(
            "tenantfleet_run_backfill_keys_left",
            [({}, float(sum(e.keys_left for e in entries if e.status != "done")))],
        ),
    ]


def _durations(connection: Connection, run_id: int) -> Sample:
    count, total, cumulative = connection.execute(
        _DURATIONS, {"run_id": run_id, "bounds": list(DURATION_BUCKETS)}
    ).one()
    buckets = [(f"{b:g}", float(n)) for b, n in zip(DURATION_BUCKETS, cumulative, strict=True)]
    return Sample(
        "tenantfleet_run_tenant_duration_seconds",
        [({}, float(total))],
        [*buckets, ("+Inf", float(count))],
    )


class RunCollector:
    """A ``prometheus-client`` collector that reads ``run_samples`` at every scrape."""

    def __init__(self, read: Callable[[], list[Sample]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        for sample in self._read():
            labels = sorted(sample.values[0][0]) if sample.values else []
            metric = sample.metric
            if metric.kind == "histogram":
                assert sample.buckets is not None
                yield HistogramMetricFamily(
                    sample.name, metric.help, buckets=sample.buckets, sum_value=sample.values[0][1]
                )
                continue
            family_type = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
            family = family_type(sample.name, metric.help, labels=labels)
            for found, value in sample.values:
                family.add_metric([found[name] for name in labels], value)
            yield family


def exposition(read: Callable[[], list[Sample]]) -> str:
    """The run-level metrics in Prometheus's text format."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(RunCollector(read))
    return generate_latest(registry).decode()


def serve(read: Callable[[], list[Sample]], address: str, port: int) -> None:
    """Serve the run-level metrics until interrupted."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(RunCollector(read))
    server, thread = start_http_server(port, address, registry=registry)
    try:
        while thread.is_alive():
            thread.join(1.0)
    finally:
        server.shutdown()
