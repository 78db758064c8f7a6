"""Read-only views of a run, as ``--json`` prints them and the text and HTML views show them."""

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine

from tenantfleet import databases, db, ledger, locks, runs, states
from tenantfleet.errors import UsageError
from tenantfleet.manager import MigrationManager
from tenantfleet.names import validate_schema_name


def run_view(
    engine: Engine, run_id: int, *, slowest: int = 0, listed: Sequence[str] | None = None
) -> dict[str, Any]:
    """The run as ``--json`` prints it (the same shape for migrate, retry, resume and status).
    ``listed``: only the tenants in these states under ``tenants`` (the text views show
    ``output.LISTED``: a view of 100,000 tenants reads the rows it shows, not every one)."""
    with db.connect(engine) as connection:
        run = runs.get_run(connection, run_id)
        tally = runs.counts(connection, run_id)
        by_database = runs.counts_by_database(connection, run_id)
        by_wave = runs.counts_by_wave(connection, run_id)
        tenants = runs.tenants_of(connection, run_id, listed)
        slow = runs.slowest(connection, run_id, slowest) if slowest else []
        filled = ledger.of_run(connection, run_id)
    result: dict[str, Any] = {
        "run_id": run.id,
        "parent_run_id": run.parent_run_id,
        "status": run.status,
        "target_revision": run.target_revision,
        "counts": {**counts_view(tally), "up_to_date": run.up_to_date},
        "databases": {
            databases.shown(database): counts_view(found) for database, found in by_database.items()
        },
        "waves": [{"wave": n, **counts_view(found)} for n, found in by_wave.items()],
        "wave": run.wave,
        "rollback_of": run.options.get("rollback_of"),
        "replay": run.options.get("replay"),
        "ahead": run.options.get("ahead", 0),
        "tenants": [tenant_view(t) for t in tenants],
        "backfills": backfills_view(filled),
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
    if slowest:
        result["slowest"] = [tenant_view(t) for t in slow]
    return result


def counts_view(tally: runs.Counts) -> dict[str, int]:
    return {
        "total": tally.total,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "skipped": tally.skipped,
        "pending": tally.pending,
        "queued": tally.queued,
        "running": tally.running,
        "retrying": tally.retrying,
        "waiting": tally.waiting,
        "cancelled": tally.cancelled,
    }


def tenant_view(tenant: runs.RunTenant) -> dict[str, Any]:
    return {
        "schema": tenant.schema_name,
        "database": databases.shown(tenant.database),
        "tenant": tenant.label,
        "status": tenant.status,
        "from_revision": tenant.from_revision,
        "to_revision": tenant.to_revision,
        "error": f"{tenant.error_class}: {tenant.error_message}" if tenant.error_class else None,
        "attempts": tenant.attempts,
        "duration_ms": tenant.duration_ms,
        "worker": tenant.worker,
        "wave": tenant.wave,
        "reached_revision": tenant.reached_revision,
    }


def attempts(manager: MigrationManager, run_id: int, schema: str) -> list[dict[str, Any]]:
    """Every attempt at ``schema`` in the run (``UsageError`` if the run has no such tenant)."""
    validate_schema_name(schema)
    with db.connect(manager.engine) as connection:
        if schema not in runs.statuses(connection, run_id, [schema]):
            raise UsageError(f"run {run_id} has no tenant {schema}")
        return [a._asdict() for a in runs.attempts_of(connection, run_id, schema)]


def blocked(manager: MigrationManager, run_id: int) -> list[dict[str, Any]]:
    """The run's running tenants that wait for a lock right now, each with who holds it, read
    in the database each tenant lives in (one that cannot be reached is left out)."""
    with db.connect(manager.engine) as connection:
        running = runs.tenants_of(connection, run_id, ["running"])
    by_database: dict[str | None, list[str]] = {}
    for tenant in running:
        by_database.setdefault(tenant.database, []).append(tenant.schema_name)
    found: list[dict[str, Any]] = []
    for database, schemas in by_database.items():
        try:
            with db.connect(manager.engine_for(database)) as connection:
                waiting = locks.blocked(connection, schemas)
        except Exception as exc:
            if not db.is_unreachable(exc):
                raise
            continue
        found += [
            {
                "tenant": databases.label(database, b.schema),
                "database": databases.shown(database),
                **dataclasses.asdict(b),
            }
            for b in waiting
        ]
    return found


def backfills_view(entries: list[ledger.Entry]) -> dict[str, Any]:
    """The run's backfills (``tenantfleet.backfill``): how many in each state, rows filled, an
    ETA from the keys left and the speed so far, and every one not done."""
    by_state = {state.value: 0 for state in states.BACKFILL_STATES}
    for entry in entries:
        by_state[entry.status] += 1
    keys_done = sum((e.next_key or 0) - (e.key_low or 0) for e in entries if e.key_low is not None)
    seconds = sum(
        (e.updated_at - e.started_at).total_seconds() for e in entries if e.started_at is not None
    )
    keys_left = sum(e.keys_left for e in entries if e.status != states.BackfillState.DONE)
    speed = keys_done / seconds if seconds > 0 else 0.0
    return {
        "counts": by_state,
        "rows_done": sum(e.rows_done for e in entries),
        "eta_seconds": round(keys_left / speed, 1) if speed > 0 and keys_left else None,
        "open": [
            {
                "tenant": databases.label(e.database, e.schema_name),
                "name": e.name,
                "revision": e.revision,
                "state": e.status,
                "rows_done": e.rows_done,
                "batches": e.batches,
                "attempts": e.attempts,
                "keys_left": e.keys_left,
                "reason": e.reason,
            }
            for e in entries
            if e.status != states.BackfillState.DONE
        ][:100],
    }
