"""How results look: text tables and JSON-ready dicts. No I/O here."""

from dataclasses import asdict
from typing import Any

from migrations.migrate import Status
from tenantfleet.alembic_runtime import Step
from tenantfleet.registry import Tenant


def status_dict(status: Status) -> dict[str, Any]:
    return {**asdict(status), "up_to_date": status.up_to_date}


def status_text(status: Status) -> str:
    lines = [
        f"schema:   {status.schema}",
        f"current:  {status.current or '(none)'}"
        + ("" if status.known else "  (unknown to the migration scripts)"),
        f"head:     {status.head or '(none)'}",
    ]
    if status.pending:
        lines.append(f"pending:  {', '.join(status.pending)}")
    else:
        lines.append("pending:  (none, up to date)" if status.up_to_date else "pending:  (none)")
    return "\n".join(lines)


def step_text(step: Step) -> str:
    return f"{step.schema}: {step.from_revision or 'base'} -> {step.to_revision or 'base'}"


def tenant_dict(tenant: Tenant) -> dict[str, Any]:
    return asdict(tenant)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def tenants_table(tenants: list[Tenant]) -> str:
    if not tenants:
        return "no tenants registered"
    return table(
        ["schema", "name", "active", "revision", "last status", "last run"],
        [
            [
                t.schema_name,
                t.tenant_name,
                t.is_active,
                t.current_revision,
                t.last_migration_status,
                t.last_run_id,
            ]
            for t in tenants
        ],
    )


ERROR_WIDTH = 100


def run_summary(report: dict[str, Any]) -> str:
    """The end-of-run text: one status line, then the failed tenants with their errors."""
    counts = report["counts"]
    lines = [
        f"run {report['run_id']}: {report['status']} - {counts['succeeded']} succeeded, "
        f"{counts['failed']} failed, {counts['skipped']} skipped, {counts['pending']} pending "
        f"of {counts['total']} (already at target: {counts['up_to_date']}); "
        f"target {report['target_revision']}"
    ]
    failed = [t for t in report["tenants"] if t["status"] in ("failed", "skipped")]
    if failed:
        lines.append("")
        lines.append(
            table(
                ["schema", "status", "attempts", "error"],
                [
                    [t["schema"], t["status"], t["attempts"], _clip(t["error"] or "")]
                    for t in failed
                ],
            )
        )
    return "\n".join(lines)


def _clip(text: str) -> str:
    first = text.splitlines()[0] if text else ""
    return first if len(first) <= ERROR_WIDTH else first[: ERROR_WIDTH - 3] + "..."
