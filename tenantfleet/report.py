"""``tenantfleet report RUN --html FILE``: one self-contained HTML page about a run.

Everything comes from the run tables (the run, its tenants, every attempt), so the page can be
written at any time, for any run, long after Flower forgot it. The pictures are inline SVG
(``charts.py``): the page works offline, with no server, no script from anywhere.

- the outcome, the run's duration, its throughput and the p50/p95/p99 of the tenants' times;
- a **timeline**: every attempt a bar on the lane of the worker process that made it, coloured
  by how it ended (retries show as the earlier bars of a tenant), each named in its tooltip;
- a **histogram** of the tenants' times in the run, and the slowest tenants by name: each
  tenant's time runs from its first attempt's start to its end, so a tenant that waited for a
  lock over four attempts ranks by the whole wait, with its attempts and the time between them;
- the tenants that were retried, and the failures grouped by error class;
- the run's waves and databases when it has several.
"""

import html
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tenantfleet import __version__, charts, runs, states

COLOURS = {
    "succeeded": "#2e7d32",
    "failed": "#c62828",
    "retrying": "#f9a825",
    "skipped": "#757575",
    "cancelled": "#6a1b9a",
    "running": "#1565c0",
    None: "#1565c0",
}
MAX_LANES = 64
SLOWEST = 10
MAX_TITLED = 5000
"""Attempts whose timeline bars are named in a tooltip; past that, bars of one outcome and lane
closer than a pixel are drawn as one (a timeline of 100,000 attempts draws what its pixels show,
in a second, not 100,000 paths in ten)."""
DRAWN_FIRST = ("succeeded", "skipped", "cancelled")
"""Outcomes drawn under the others: a merged run of successes never hides a failure."""
RETRIED = 50
LISTED: tuple[str, ...] = tuple(
    s for s in states.TENANT_STATES if s != states.TenantState.SUCCEEDED
)
"""The tenants the page reads one by one (``views.run_view``'s ``listed``): a succeeded tenant
is a count, a bar and, when it is among the slowest, a row made from its attempts."""


@dataclass(frozen=True)
class RunData:
    """What the page shows, read from the run tables in one go."""

    report: dict[str, Any]
    """``views.run_view`` of the run, its ``tenants`` those in ``LISTED``."""
    attempts: list[tuple[str, runs.Attempt]]
    """(tenant label, attempt) for every attempt of the run."""


class TenantTime(NamedTuple):
    """A tenant's time in the run, from its attempts (``of``); a tuple, made for every
    tenant."""

    label: str
    attempts: list[runs.Attempt]
    """In the order they were made."""
    whole: float
    """Seconds from its first attempt's start to its last attempt's end."""

    @classmethod
    def of(cls, label: str, attempts: list[runs.Attempt]) -> "TenantTime":
        if len(attempts) > 1:
            attempts = sorted(attempts, key=_number)
        ends = [a.finished_at or a.started_at for a in attempts]
        return cls(label, attempts, (max(ends) - attempts[0].started_at).total_seconds())

    @property
    def in_attempts(self) -> float:
        return sum(
            ((a.finished_at or a.started_at) - a.started_at).total_seconds() for a in self.attempts
        )

    @property
    def between(self) -> float:
        """Seconds between its attempts: waiting for a retry (a lock wait is in an attempt)."""
        return max(self.whole - self.in_attempts, 0.0)


def _number(found: runs.Attempt) -> int:
    return found.attempt


def tenant_times(data: RunData) -> list[TenantTime]:
    """Every tenant with an attempt, slowest first."""
    by_tenant: dict[str, list[runs.Attempt]] = defaultdict(list)
    for label, found in data.attempts:
        by_tenant[label].append(found)
    times = [TenantTime.of(label, found) for label, found in by_tenant.items()]
    times.sort(key=lambda t: t.whole, reverse=True)
    return times


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def _when(moment: str | None) -> str:
    """An ISO timestamp as people read it: ``2026-12-06 21:45:03 UTC``."""
    if moment is None:
        return "not yet"
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def summary(data: RunData, times: list[TenantTime], generated: datetime) -> str:
    """Duration, throughput and the tenants' times, in one table."""
    report = data.report
    begun = datetime.fromisoformat(report["created_at"])
    ended = datetime.fromisoformat(report["finished_at"]) if report["finished_at"] else generated
    seconds = max((ended - begun).total_seconds(), 1e-3)
    done = report["counts"]["total"] - report["counts"]["pending"]
    wholes = [t.whole for t in times]
    return _table(
        ["run took", "tenants done", "per second", "p50", "p95", "p99", "slowest"],
        [
            [
                f"{seconds:.1f} s",
                done,
                f"{done / seconds:.1f}",
                *(f"{_percentile(wholes, q):.3f} s" for q in (0.50, 0.95, 0.99)),
                f"{max(wholes, default=0.0):.3f} s",
            ]
        ],
    )


def timeline(data: RunData) -> str:
    """Each attempt a bar on its worker process's lane, coloured by outcome."""
    spans = data.attempts  # started_at is NOT NULL
    if not spans:
        return "<p>No attempt was made.</p>"
    start = min(a.started_at for _, a in spans)
    end = max((a.finished_at or a.started_at) for _, a in spans)
    span = max((end - start).total_seconds(), 1e-3)
    lanes = sorted({a.worker or "?" for _, a in spans})[:MAX_LANES]
    lane_of = {lane: index for index, lane in enumerate(lanes)}
    visible = span / 1500  # a bar at least a pixel wide
    titled = len(spans) <= MAX_TITLED  # past that no tooltip is written: none is made
    by_outcome: dict[str | None, dict[int, list[charts.Bar]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for label, found in spans:
        index = lane_of.get(found.worker or "?")
        if index is None:
            continue
        begin = (found.started_at - start).total_seconds()
        finish = ((found.finished_at or end) - start).total_seconds()
        title = (
            f"{label}: attempt {found.attempt}, {found.outcome or 'no end'}, {finish - begin:.3f} s"
            if titled
            else None
        )
        by_outcome[found.outcome][index].append(
            charts.Bar(begin, max(finish - begin, visible), title)
        )
    series = [
        charts.Series(
            str(outcome),
            outcome or "no end (worker died?)",
            COLOURS.get(outcome, COLOURS[None]),
            {
                index: bars if titled else merged(bars, visible)
                for index, bars in by_outcome[outcome].items()
            },
        )
        for outcome in sorted(by_outcome, key=lambda o: o not in DRAWN_FIRST)
    ]
    merging = "" if titled else " (bars closer than a pixel drawn as one)"
    return charts.lanes(
        f"Timeline: {len(spans)} attempts on {len(lanes)} worker processes{merging}",
        [_short(lane) for lane in lanes],
        series,
        span,
        "seconds since the first attempt began",
    )


def merged(bars: list[charts.Bar], gap: float) -> list[charts.Bar]:
    """Bars less than ``gap`` apart joined into one (untitled)."""
    joined: list[charts.Bar] = []
    for bar in sorted(bars, key=lambda b: (b.start, b.width)):
        last = joined[-1] if joined else None
        if last is not None and bar.start - (last.start + last.width) < gap:
            joined[-1] = charts.Bar(last.start, max(last.width, bar.start + bar.width - last.start))
        else:
            joined.append(charts.Bar(bar.start, bar.width))
    return joined


def _short(worker: str) -> str:
    return worker if len(worker) <= 32 else "..." + worker[-29:]


def histogram(times: list[TenantTime]) -> str:
    """The tenants' times in the run (first attempt's start to the end), logarithmic bins."""
    durations = [t.whole for t in times]
    if not durations:
        return "<p>No tenant has a duration.</p>"
    return charts.histogram(
        f"Durations of {len(durations)} tenants",
        durations,
        "seconds per tenant, from its first attempt's start to its end",
        "duration-bars",
        "#1565c0",
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def failures(data: RunData) -> str:
    """Failed (and skipped) tenants grouped by error class: a message and the tenants."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tenant in data.report["tenants"]:
        ended = tenant["status"] in states.TENANT_FINAL
        if ended and tenant["status"] != states.TenantState.SUCCEEDED and tenant["error"]:
            groups[tenant["error"].split(":", 1)[0]].append(tenant)
    if not groups:
        return "<p>No tenant failed.</p>"
    parts = []
    for error_class, tenants in sorted(groups.items(), key=lambda g: -len(g[1])):
        names = ", ".join(t["tenant"] for t in tenants[:50])
        more = f" and {len(tenants) - 50} more" if len(tenants) > 50 else ""
        parts.append(
            f"<h3>{html.escape(error_class)}: {len(tenants)} tenants"
            f" ({html.escape(tenants[0]['status'])})</h3>"
            f"<pre>{html.escape(tenants[0]['error'])}</pre>"
            f"<p class=names>{html.escape(names + more)}</p>"
        )
    return "".join(parts)


def retried(times: list[TenantTime]) -> str:
    """The tenants that took more than one attempt: how each attempt ended, the last error."""
    again = sorted((t for t in times if len(t.attempts) > 1), key=lambda t: -len(t.attempts))
    if not again:
        return "<p>No tenant was retried.</p>"
    rows = [
        [
            t.label,
            len(t.attempts),
            ", ".join(a.outcome or "no end" for a in t.attempts),
            f"{t.between:.3f}",
            next((a.error_message for a in reversed(t.attempts) if a.error_message), "") or "",
        ]
        for t in again[:RETRIED]
    ]
    more = f"<p class=names>and {len(again) - RETRIED} more</p>" if len(again) > RETRIED else ""
    header = ["tenant", "attempts", "how they ended", "s between them", "last error"]
    return f"<p>{len(again)} tenants were retried.</p>" + _table(header, rows) + more


def backfills(view: dict[str, Any]) -> str:
    """The run's backfills: how many in each state, rows filled, and those not done."""
    counts = view.get("counts") or {}
    if not any(counts.values()):
        return "<p>No backfill.</p>"
    eta = view.get("eta_seconds")
    head = _table(
        [*counts, "rows filled", "ETA"],
        [[*counts.values(), f"{view['rows_done']:,}", f"{eta:.0f} s" if eta else "-"]],
    )
    rows = [
        [e["tenant"], e["name"], e["state"], f"{e['rows_done']:,}", e["keys_left"], e["reason"]]
        for e in view.get("open", [])
    ]
    header = ["tenant", "backfill", "state", "rows filled", "keys left", "why"]
    return head + (_table(header, rows) if rows else "")


def page(data: RunData, generated: datetime) -> str:
    """The whole page."""
    report = data.report
    counts = report["counts"]
    times = tenant_times(data)
    statuses = {t["tenant"]: t for t in report["tenants"]}
    sections = [
        f"<h1>Run {report['run_id']}: {html.escape(report['status'])}</h1>",
        (
            f"<p><b>{html.escape(states.held_hint(report['run_id'], report['wave']))}</b>"
            " sends the next wave</p>"
            if report["status"] == states.RunState.HELD
            else ""
        ),
        f"<p>target {html.escape(str(report['target_revision']))}; created"
        f" {_when(report['created_at'])}; finished {_when(report['finished_at'])}"
        + (f"; retry of run {report['parent_run_id']}" if report["parent_run_id"] else "")
        + (f"; rollback of run {report['rollback_of']}" if report.get("rollback_of") else "")
        + "</p>",
        summary(data, times, generated),
        _table(
            ["total", *states.TENANT_STATES, "up to date"],
            [[counts["total"], *(counts[s] for s in states.TENANT_STATES), counts["up_to_date"]]],
        ),
        "<h2>Timeline</h2>",
        f"<div class=chart id=timeline>{timeline(data)}</div>",
        "<h2>Time in the run</h2>",
        f"<div class=chart id=durations>{histogram(times)}</div>",
        "<h3>Slowest tenants</h3>",
        _table(
            [
                "tenant",
                "s in the run",
                "attempts",
                "s in attempts",
                "s between",
                "status",
                "worker",
            ],
            [
                [
                    t.label,
                    f"{t.whole:.3f}",
                    len(t.attempts),
                    f"{t.in_attempts:.3f}",
                    f"{t.between:.3f}",
                    statuses.get(t.label, {}).get("status", states.TenantState.SUCCEEDED),
                    t.attempts[-1].worker,
                ]
                for t in times[:SLOWEST]
            ],
        ),
        "<h2>Retried</h2>",
        retried(times),
        "<h2>Backfills</h2>",
        backfills(report.get("backfills") or {}),
        "<h2>Failures</h2>",
        failures(data),
    ]
    if report["waves"]:
        sections += [
            "<h2>Waves</h2>",
            _table(
                ["wave", "total", *states.TENANT_STATES],
                [
                    [w["wave"], w["total"], *(w[s] for s in states.TENANT_STATES)]
                    for w in report["waves"]
                ],
            ),
        ]
    if len(report["databases"]) > 1:
        sections += [
            "<h2>Databases</h2>",
            _table(
                ["database", "total", *states.TENANT_STATES],
                [
                    [k, d["total"], *(d[s] for s in states.TENANT_STATES)]
                    for k, d in report["databases"].items()
                ],
            ),
        ]
    sections.append(
        f"<p class=foot>tenantfleet {__version__} report,"
        f" {generated.isoformat(timespec='seconds')}</p>"
    )
    return HTML.format(title=f"tenantfleet run {report['run_id']}", body="\n".join(sections))


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; font-size: 13px; }}
th {{ background: #f3f3f3; }}
.chart svg {{ max-width: 100%; height: auto; }}
pre {{ background: #f7f7f7; padding: 0.5em; white-space: pre-wrap; }}
.names, .foot {{ font-size: 12px; color: #555; }}
</style></head>
<body>
{body}
<script>
// what a browser check reads: how many charts were laid out with a size
document.body.dataset.chartsDrawn = Array.from(document.querySelectorAll(".chart svg"))
  .filter(svg => svg.getBoundingClientRect().width > 0).length;
</script>
</body></html>
"""
