"""``tenantfleet report RUN --html FILE``: one self-contained HTML page about a run.

Everything comes from the run tables (the run, its tenants, every attempt), so the page can be
written at any time, for any run, long after Flower forgot it. The pictures are drawn by
matplotlib as inline SVG: the page works offline, with no server, no script from anywhere.

- the counts and the outcome;
- a **timeline**: every attempt a bar on the lane of the worker process that made it, coloured
  by how it ended (retries show as the earlier bars of a tenant);
- a **histogram** of the tenants' durations, and the slowest tenants by name;
- the failures grouped by error class, with a message and the tenants;
- the run's waves and databases when it has several.
"""

import html
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tenantfleet import runs, states

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


@dataclass(frozen=True)
class RunData:
    """What the page shows, read from the run tables in one go."""

    report: dict[str, Any]
    """``views.run_view`` of the run."""
    attempts: list[tuple[str, runs.Attempt]]
    """(tenant label, attempt) for every attempt of the run."""


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float, height: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, searchable
    return Figure(figsize=(width, height))


def timeline(data: RunData) -> str:
    """Each attempt a bar on its worker process's lane, coloured by outcome."""
    spans = [(label, a) for label, a in data.attempts if a.started_at is not None]
    if not spans:
        return "<p>No attempt was made.</p>"
    start = min(a.started_at for _, a in spans)
    end = max((a.finished_at or a.started_at) for _, a in spans)
    lanes = sorted({a.worker or "?" for _, a in spans})[:MAX_LANES]
    height = 1.2 + 0.28 * len(lanes)
    figure = _figure(11, height)
    axes = figure.subplots()
    by_outcome: dict[str | None, dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    visible = max((end - start).total_seconds(), 1e-3) / 1500  # a bar at least a pixel wide
    for _, found in spans:
        lane = (found.worker or "?") if (found.worker or "?") in lanes else None
        if lane is None:
            continue
        begin = (found.started_at - start).total_seconds()
        finish = ((found.finished_at or end) - start).total_seconds()
        by_outcome[found.outcome][lanes.index(lane)].append((begin, max(finish - begin, visible)))
    for outcome, per_lane in by_outcome.items():
        colour = COLOURS.get(outcome, COLOURS[None])
        for lane_index, bars in per_lane.items():
            axes.broken_barh(
                bars, (lane_index - 0.4, 0.8), facecolors=colour, gid=f"bars-{outcome}"
            )
    axes.set_yticks(range(len(lanes)), [_short(lane) for lane in lanes], fontsize=7)
    axes.set_xlabel("seconds since the first attempt began")
    axes.set_xlim(0, max((end - start).total_seconds(), 1e-3))
    axes.invert_yaxis()
    handles = [
        _patch(COLOURS.get(o, COLOURS[None]), o or "no end (worker died?)") for o in by_outcome
    ]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    axes.set_title(f"Timeline: {len(spans)} attempts on {len(lanes)} worker processes")
    return _svg(figure)


def _patch(colour: str, label: str) -> Any:
    from matplotlib.patches import Patch

    return Patch(color=colour, label=label)


def _short(worker: str) -> str:
    return worker if len(worker) <= 32 else "..." + worker[-29:]


def histogram(data: RunData) -> str:
    """The tenants' durations (their last attempt), logarithmic bins."""
    durations = [
        t["duration_ms"] / 1000 for t in data.report["tenants"] if t["duration_ms"] is not None
    ]
    if not durations:
        return "<p>No tenant has a duration.</p>"
    import numpy

    low = max(min(durations), 1e-3)
    high = max(max(durations), low * 1.01)
    bins = numpy.geomspace(low, high, 30)
    figure = _figure(11, 3.2)
    axes = figure.subplots()
    axes.hist(durations, bins=bins, color="#1565c0", gid="duration-bars")
    axes.set_xscale("log")
    axes.set_xlabel("seconds per tenant (its attempt that ended it)")
    axes.set_ylabel("tenants")
    axes.set_title(f"Durations of {len(durations)} tenants")
    return _svg(figure)


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


def page(data: RunData, generated: datetime) -> str:
    """The whole page."""
    report = data.report
    counts = report["counts"]
    slowest = sorted(
        (t for t in report["tenants"] if t["duration_ms"] is not None),
        key=lambda t: -t["duration_ms"],
    )[:SLOWEST]
    sections = [
        f"<h1>Run {report['run_id']}: {html.escape(report['status'])}</h1>",
        (
            f"<p><b>{html.escape(states.held_hint(report['run_id'], report['wave']))}</b>"
            " sends the next wave</p>"
            if report["status"] == states.RunState.HELD
            else ""
        ),
        f"<p>target {html.escape(str(report['target_revision']))}; created"
        f" {html.escape(report['created_at'])}; finished {html.escape(str(report['finished_at']))}"
        + (f"; retry of run {report['parent_run_id']}" if report["parent_run_id"] else "")
        + (f"; rollback of run {report['rollback_of']}" if report.get("rollback_of") else "")
        + "</p>",
        _table(
            ["total", *states.TENANT_STATES, "up to date"],
            [[counts["total"], *(counts[s] for s in states.TENANT_STATES), counts["up_to_date"]]],
        ),
        "<h2>Timeline</h2>",
        f"<div class=chart id=timeline>{timeline(data)}</div>",
        "<h2>Durations</h2>",
        f"<div class=chart id=durations>{histogram(data)}</div>",
        "<h3>Slowest tenants</h3>",
        _table(
            ["tenant", "ms", "status", "attempts", "worker"],
            [
                [t["tenant"], t["duration_ms"], t["status"], t["attempts"], t["worker"]]
                for t in slowest
            ],
        ),
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
        f"<p class=foot>tenantfleet report, {generated.isoformat(timespec='seconds')}</p>"
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
