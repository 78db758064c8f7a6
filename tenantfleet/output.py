"""How results look: text tables and JSON-ready dicts. No I/O here."""

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tenantfleet.config import CONTROL_DATABASE
from tenantfleet.databases import shown
from tenantfleet.manager import Status
from tenantfleet.names import shorten
from tenantfleet.planning import Plan
from tenantfleet.producer import RollbackPlan
from tenantfleet.registry import Tenant
from tenantfleet.runs import Counts, Run
from tenantfleet.states import TENANT_STATES as STATES
from tenantfleet.states import RunState, TenantState, held_hint
from tenantfleet.survey import Survey
from tenantfleet.versions import Step

if TYPE_CHECKING:
    from tenantfleet import lint


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


_ENCODER = json.JSONEncoder(default=_json_value)
_make_c_encoder: Callable[..., Callable[[Any, int], Sequence[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_C_ENCODER = (
    _make_c_encoder(
        None,  # markers: no circular-reference check
        _json_value,
        json.encoder.encode_basestring_ascii,
        None,  # indent
        ": ",
        ", ",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    if _make_c_encoder is not None
    else None
)
"""CPython's C encoder with ``_ENCODER``'s settings, made once: ``JSONEncoder.encode`` makes
one at every call, which was 40 % of encoding a ``status --json`` of 100,000 tenants. Without
the circular-reference check (its markers would be shared by threads): what is printed is
built from rows."""


def _encode(value: Any) -> str:
    if _C_ENCODER is None:  # an interpreter without the C encoder
        return _ENCODER.encode(value)
    return "".join(_C_ENCODER(value, 0))


def _lines(items: list[Any], indent: str) -> str:
    inner = ",\n".join(f"{indent}  {_encode(item)}" for item in items)
    return f"[\n{inner}\n{indent}]" if items else "[]"


def json_text(value: Any) -> str:
    """``value`` as every ``--json`` prints it: an object a key a line, a list (top-level, or a
    key's value) an item a line, everything else on its line. Each line is made by Python's C
    encoder: indenting every level (``indent=2``) falls back to the pure-Python one, which took
    1.5 s for a status of 100,000 tenants."""
    if isinstance(value, list):
        return _lines(value, "")
    if not isinstance(value, dict) or not value:
        return _encode(value)
    rows = ",\n".join(
        f"  {_encode(key)}: {_lines(item, '  ') if isinstance(item, list) else _encode(item)}"
        for key, item in value.items()
    )
    return f"{{\n{rows}\n}}"


FAILED, SKIPPED = TenantState.FAILED, TenantState.SKIPPED
LISTED: tuple[str, ...] = (FAILED, SKIPPED)
"""The tenants a run's text lists, with their errors (the others are counted): what the text
views ask ``views.run_view`` for."""


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
    """A registry row as JSON: ``schema``, as everywhere else, not the column's name."""
    found = asdict(tenant)
    return {"schema": found.pop("schema_name"), **found}


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
        ["schema", "database", "name", "active", "revision", "last status", "last run"],
        [
            [
                t.schema_name,
                shown(t.database),
                t.tenant_name,
                "yes" if t.is_active else f"no: {t.deactivated_reason or 'no reason given'}",
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
        f"{counts['failed']} failed, {counts['skipped']} skipped, "
        + (f"{counts['cancelled']} cancelled, " if counts["cancelled"] else "")
        + f"{counts['pending']} pending "
        f"of {counts['total']} (already at target: {counts['up_to_date']}"
        + (f", ahead of it and left alone: {report['ahead']}" if report.get("ahead") else "")
        + "); "
        f"target {report['target_revision']}"
    ]
    failed = [t for t in report["tenants"] if t["status"] in LISTED]
    failed.sort(key=lambda t: (t["status"] != FAILED, t["schema"]))
    if failed:
        lines.append("")
        lines.append(
            table(
                ["schema", "status", "attempts", "error"],
                [
                    [t["tenant"], t["status"], t["attempts"], _clip(t["error"] or "")]
                    for t in failed
                ],
            )
        )
    return "\n".join(lines)


def _clip(text: str) -> str:
    """An error in one cell: its first line, and the line PostgreSQL adds that says which row
    (``DETAIL: Key (email)=(a@b) already exists.``), cut to fit."""
    lines = text.splitlines() if text else [""]
    detail = next((line.strip() for line in lines[1:] if line.strip().startswith("DETAIL:")), "")
    shown = f"{lines[0]} {detail}".strip()
    width = ERROR_WIDTH * 2 if detail else ERROR_WIDTH
    return shown if len(shown) <= width else shown[: width - 3] + "..."


def status_report(report: dict[str, Any]) -> str:
    """``tenantfleet status``: the run summary, its state counts and its slowest tenants."""
    counts = report["counts"]
    lines = [run_summary(report), ""]
    lines.append("states: " + _states(counts))
    if report.get("replay"):
        lines.append(replay_text(report["replay"]))
    filled = report.get("backfills") or {}
    if any(filled.get("counts", {}).values()):
        eta = filled["eta_seconds"]
        lines.append(
            "backfills: "
            + ", ".join(f"{state} {n}" for state, n in filled["counts"].items())
            + f"; {filled['rows_done']:,} rows filled"
            + (f", ETA {eta:.0f} s" if eta is not None else "")
        )
        for entry in filled["open"][:10]:
            lines.append(
                f"  {entry['tenant']} {entry['name']}: {entry['state']}, {entry['rows_done']:,}"
                f" rows, {entry['keys_left']:,} keys left"
                + (f" ({entry['reason']})" if entry["reason"] else "")
            )
    if set(report["databases"]) - {CONTROL_DATABASE}:
        lines.append("")
        lines.append(
            table(
                ["database", "total", *STATES],
                [
                    [key, found["total"], *(found[name] for name in STATES)]
                    for key, found in report["databases"].items()
                ],
            )
        )
    if report["waves"]:
        lines.append("")
        at = report["wave"]
        lines.append(
            table(
                ["wave", "total", *STATES, ""],
                [
                    [
                        found["wave"],
                        found["total"],
                        *(found[name] for name in STATES),
                        "<- at" if found["wave"] == at and report["finished_at"] is None else "",
                    ]
                    for found in report["waves"]
                ],
            )
        )
    if report["finished_at"] is None and report.get("held"):
        lines.append(f"open, {held_hint(report['run_id'], report['wave'])} sends the next wave")
    elif report["finished_at"] is None and "alive" in report:
        lines.append(
            f"open, {'alive' if report['alive'] else 'ABANDONED'}:"
            f" last activity {report['idle_seconds']} s ago"
            + ("" if report["alive"] else f"; `tenantfleet resume {report['run_id']}` finishes it")
        )
        if report.get("waiting_for"):
            lines.append(f"waiting: {report['waiting_for']}")
    if "attempts" in report:
        lines.append("")
        lines.append("attempts:")
        lines.append(
            table(
                ["#", "worker", "started", "finished", "outcome", "sqlstate", "error"],
                [
                    [
                        a["attempt"],
                        a["worker"],
                        _when(a["started_at"]),
                        _when(a["finished_at"]) if a["finished_at"] else "(no end: worker died?)",
                        a["outcome"],
                        a["sqlstate"],
                        _clip(a["error_message"] or ""),
                    ]
                    for a in report["attempts"]
                ],
            )
        )
    if report.get("blocked"):
        lines.append("")
        lines.append("tenants waiting for a lock, and who holds it:")
        lines.append(
            table(
                ["tenant", "waits for", "held by pid", "application", "state", "for s", "query"],
                [
                    [
                        b["tenant"],
                        b["waits_for"],
                        b["blocker_pid"],
                        b["blocker_application"],
                        b["blocker_state"],
                        round(b["blocker_seconds"], 1),
                        _clip(b["blocker_query"]),
                    ]
                    for b in report["blocked"]
                ],
            )
        )
    if report.get("slowest"):
        lines.append("")
        lines.append("slowest tenants:")
        lines.append(
            table(
                ["tenant", "status", "ms", "attempts", "worker"],
                [
                    [t["tenant"], t["status"], t["duration_ms"], t["attempts"], t["worker"]]
                    for t in report["slowest"]
                ],
            )
        )
    return "\n".join(lines)


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {counts[name]}" for name in STATES)


def run_dict(run: Run, by_database: dict[str | None, Counts] | None = None) -> dict[str, Any]:
    found = asdict(run)
    if by_database is not None:
        found["databases"] = {shown(d): asdict(c) for d, c in by_database.items()}
    return found


def runs_table(recent: list[Run], by_database: dict[int, dict[str | None, Counts]]) -> str:
    """Recent runs; an open run's counts are its tenants' now (the run row's are written when
    it closes); a line under the table for each held run says how it goes on."""
    if not recent:
        return "no runs yet"
    spread = any(set(found) - {None} for found in by_database.values())
    extra = ["by database (done/total)"] if spread else []

    def now(run: Run) -> tuple[int, int, int]:
        if run.finished_at is not None:
            return run.succeeded, run.failed, run.skipped
        found = list(by_database.get(run.id, {}).values())
        return (
            sum(c.succeeded for c in found),
            sum(c.failed for c in found),
            sum(c.skipped for c in found),
        )

    held = [f"run {r.id}: {held_hint(r.id, r.wave)}" for r in recent if r.status == RunState.HELD]
    listed = table(
        [
            "run",
            "parent",
            "target",
            "status",
            "started",
            "finished",
            "total",
            "ok",
            "failed",
            "skipped",
            "up to date",
            *extra,
        ],
        [
            [
                r.id,
                r.parent_run_id,
                r.target_revision,
                r.status,
                _when(r.created_at),
                _when(r.finished_at),
                r.total,
                *now(r),
                r.up_to_date,
                *([_spread(by_database.get(r.id, {}))] if spread else []),
            ]
            for r in recent
        ],
    )
    return "\n".join([listed, *held])


def _spread(by_database: dict[str | None, Counts]) -> str:
    return ", ".join(f"{shown(d)} {c.done}/{c.total}" for d, c in by_database.items())


def _when(moment: Any) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def plan_dict(
    plan: Plan,
    waves: list[list[str]],
    sql: str,
    replay: dict[str, list[str]],
    refused_by: str | None = None,
) -> dict[str, Any]:
    """A dry run as ``--json`` prints it: what ``migrate`` would do, skip, or refuse."""
    return {
        "target_revision": plan.target,
        "tenants": [
            {
                "schema": schema,
                "database": shown(plan.placement.get(schema)),
                "from_revision": rev,
                "to_revision": plan.target,
            }
            for schema, rev in plan.behind
        ],
        "up_to_date": len(plan.up_to_date),
        "ahead": plan.ahead,
        "canaries": waves[0] if len(waves) > 1 else [],
        "waves": [len(wave) for wave in waves] if len(waves) > 1 else [],
        "sql": sql or None,
        "replay": replay,
        "skipped": [
            {"schema": schema, "error": f"{error_class}: {reason}"}
            for schema, _, error_class, reason in plan.not_migratable
        ],
        "refused_by": refused_by,
    }


def replay_text(replay: dict[str, list[str]]) -> str:
    """Which revisions the workers replay and which run online (a run's or a plan's)."""
    return (
        f"replayed (rendered once): {', '.join(replay['replayed']) or '-'};"
        f" online (as alembic upgrade): {', '.join(replay['online']) or '-'}"
    )


def plan_text(
    plan: Plan,
    waves: list[list[str]],
    replay: dict[str, list[str]],
    refused_by: str | None = None,
) -> str:
    head = (
        f"dry run: {len(plan.behind)} tenants would be migrated to {plan.target}"
        f" ({len(plan.up_to_date)} already there"
        + (f", {len(plan.ahead)} ahead of it: left alone" if plan.ahead else "")
        + "); nothing was changed"
    )
    if refused_by:
        head += f"\nmigrate would be refused now: {refused_by}"
    if plan.not_migratable:
        skipped = [f"{schema} ({reason})" for schema, _, _, reason in plan.not_migratable]
        head += (
            f"\n{len(plan.not_migratable)} tenants cannot be migrated and would be recorded"
            f" skipped (migrate exits 1; --strict refuses): {shorten(skipped, 10)}"
        )
    if not plan.behind:
        return head
    wave_of = {s: n for n, wave in enumerate(waves, 1) for s in wave} if len(waves) > 1 else {}
    rows = [
        [plan.label(schema), rev or "base", plan.target, wave_of.get(schema, "")]
        for schema, rev in plan.behind
    ]
    listed = table(["tenant", "from", "to", "wave"], rows)
    return f"{head}\n{replay_text(replay)}\n\n{listed}"


def rollback_dict(planned: RollbackPlan) -> dict[str, Any]:
    """``rollback --dry-run --json``: each tenant's move back, the tenants left alone, and the
    tables the downgrades drop."""
    plan, targets = planned.plan, planned.rollback.targets
    return {
        "rollback_of": planned.rollback.run_id,
        "tenants": [
            {
                "schema": schema,
                "database": shown(plan.placement.get(schema)),
                "from_revision": now,
                "to_revision": targets[schema],
            }
            for schema, now in plan.behind
        ],  # fmt: skip
        "skipped": [
            {"schema": schema, "error": f"{error_class}: {reason}"}
            for schema, _, error_class, reason in plan.not_migratable
        ],
        "drops_tables": planned.drops,
    }


def rollback_text(planned: RollbackPlan) -> str:
    plan, targets = planned.plan, planned.rollback.targets
    lines = [
        f"dry run: rolling back run {planned.rollback.run_id} would take {len(plan.behind)}"
        f" tenants back where they came from ({len(plan.not_migratable)} left alone);"
        " nothing was changed"
    ]
    if planned.drops:
        lines.append(
            f"its downgrades drop tables {shorten(planned.drops, 20)}, with their data, in"
            " every tenant rolled back: rollback asks for --yes"
        )
    rows = [[plan.label(s), now or "base", targets[s]] for s, now in plan.behind]
    rows += [[s, "", f"left alone: {reason}"] for s, _, _, reason in plan.not_migratable]
    return "\n".join([*lines, "", table(["tenant", "from", "to"], rows)])


def fleet_dict(report: Survey) -> dict[str, Any]:
    return asdict(report)


def fleet_text(report: Survey) -> str:
    lines = [
        f"{report.tenants} active tenants"
        + (
            f" ({report.inactive} inactive)"
            if report.inactive is not None
            else " (the tenant source says which are active)"
        )
        + f"; head {report.head}",
        "revisions read from every schema"
        if report.read_schemas
        else "revisions as the registry records them (`fleet --verify` reads every schema)",
        "",
        table(
            ["revision", "tenants", ""],
            [
                [
                    rev,
                    n,
                    "head"
                    if rev == report.head
                    else ("unknown to the scripts" if rev in report.unknown.values() else "behind"),
                ]
                for rev, n in report.by_revision.items()
            ],
        ),
    ]
    if set(report.databases) - {CONTROL_DATABASE}:
        lines.append("")
        lines.append(
            table(
                ["database", "tenants", "at head", "behind", "drift", "no schema", "revisions"],
                [
                    [
                        key,
                        found.tenants,
                        found.by_revision.get(report.head or "", 0),
                        found.behind,
                        found.unknown,
                        found.missing,
                        f"UNREACHABLE: {found.unreachable}"
                        if found.unreachable
                        else ", ".join(f"{rev} {n}" for rev, n in found.by_revision.items()),
                    ]
                    for key, found in report.databases.items()
                ],
            )
        )
    if report.behind:
        lines.append(f"\nbehind head ({len(report.behind)}): {shorten(report.behind, 20)}")
    if report.refused:
        lines.append(
            f"\nnames tenantfleet will not touch ({len(report.refused)}; `tenantfleet tenant"
            " deactivate NAME` leaves them out): "
            + shorten([repr(name) for name in report.refused], 20)
        )
    if report.unknown:
        lines.append(
            f"\ndrift, at a revision the scripts do not know ({len(report.unknown)}): "
            + shorten([f"{s}={v}" for s, v in report.unknown.items()], 20)
        )
    if report.unrecorded:
        lines.append(
            f"\nchanged around tenantfleet, the registry records another revision"
            f" ({len(report.unrecorded)}): "
            + shorten(
                [
                    f"{s} at {v['found'] or '(none)'}, recorded {v['recorded']}"
                    for s, v in report.unrecorded.items()
                ],
                20,
            )
        )
    if report.missing:
        lines.append(
            f"\nregistered without a schema ({len(report.missing)}): " + shorten(report.missing, 20)
        )
    if report.deactivated:
        lines.append(
            f"\ntaken out of fleet runs ({len(report.deactivated)}): "
            + shorten(
                [f"{s} ({r or 'no reason given'})" for s, r in report.deactivated.items()], 20
            )
        )
    return "\n".join(lines)


def lint_text(report: "lint.Findings") -> str:
    """The lint report: one line per finding, then the verdict."""
    if not report.revisions:
        return "lint: no revision pending for the selected tenants"
    lines = [
        f"{f.level:<8} {f.revision} {f.rule}: {f.statement or '(the revision)'}\n"
        f"         {f.message}"
        for f in report.findings
    ]
    blocking = len(report.blocking)
    verdict = (
        f"{blocking} blocking findings: `migrate` refuses the run (--allow RULE to let a rule"
        " through)"
        if blocking
        else "nothing blocks: `migrate` would go ahead"
    )
    checked = f"lint: {len(report.revisions)} revisions checked ({', '.join(report.revisions)})"
    return "\n".join([checked, *lines, verdict])
