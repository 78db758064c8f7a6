"""The HTML run report from given run data (its charts SVG written by hand; no server)."""

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import tenantfleet
from tenantfleet import charts, report, runs

T0 = datetime(2026, 12, 6, 21, 0, tzinfo=UTC)


def attempt(n: int, start: float, seconds: float, outcome: str, error: str | None = None) -> Any:
    begun = T0 + timedelta(seconds=start)
    return runs.Attempt(
        n, "w1@host:1", begun, begun + timedelta(seconds=seconds), outcome, None, error
    )


def data() -> report.RunData:
    """``locked`` waited for a lock over four attempts (each short, long waits between them);
    ``quick`` took one 9 ms attempt; ``slow`` one attempt of 2 s."""
    attempts = [
        ("locked", attempt(1, 0.0, 1.0, "retrying", "LockNotAvailable: lock timeout")),
        ("locked", attempt(2, 3.0, 1.0, "retrying", "LockNotAvailable: lock timeout")),
        ("locked", attempt(3, 8.0, 1.0, "retrying", "LockNotAvailable: lock timeout")),
        ("locked", attempt(4, 20.0, 0.009, "succeeded")),
        ("quick", attempt(1, 0.5, 0.009, "succeeded")),
        ("slow", attempt(1, 0.6, 2.0, "succeeded")),
    ]
    counts = dict.fromkeys(
        ("succeeded", "failed", "skipped", "cancelled", "pending", "queued", "running",
         "retrying", "waiting"), 0,
    )  # fmt: skip
    counts.update(total=3, succeeded=3, up_to_date=0)
    tenants = [
        {"tenant": name, "schema": name, "status": "succeeded", "error": None}
        for name in ("locked", "quick", "slow")
    ]
    view = {
        "run_id": 5, "status": "succeeded", "target_revision": "r2", "counts": counts,
        "tenants": tenants, "waves": [], "databases": {"default": counts}, "wave": None,
        "parent_run_id": None, "rollback_of": None,
        "created_at": T0.isoformat(), "finished_at": (T0 + timedelta(seconds=21)).isoformat(),
    }  # fmt: skip
    return report.RunData(view, attempts)


def test_a_tenant_ranks_by_its_whole_time_in_the_run_not_its_last_attempt() -> None:
    times = report.tenant_times(data())
    assert [t.label for t in times] == ["locked", "slow", "quick"]
    locked = times[0]
    assert round(locked.whole, 3) == 20.009 and len(locked.attempts) == 4
    assert round(locked.in_attempts, 3) == 3.009 and round(locked.between, 3) == 17.0


def test_the_page_says_how_long_how_fast_who_was_slowest_and_who_was_retried() -> None:
    page = report.page(data(), T0 + timedelta(minutes=5))
    assert "2026-12-06 21:00:00 UTC" in page and "2026-12-06 21:00:21 UTC" in page
    top = re.search(r"<tr><td>21\.0 s</td><td>3</td><td>0\.1</td>", page)
    assert top is not None  # run took, tenants done, per second
    assert "<h2>Retried</h2>" in page and "1 tenants were retried." in page
    assert "retrying, retrying, retrying, succeeded" in page
    slowest = page.index("<h3>Slowest tenants</h3>")
    assert page.index("<td>locked</td>", slowest) < page.index("<td>slow</td>", slowest)
    assert f"tenantfleet {tenantfleet.__version__} report," in page  # the footer


def test_every_timeline_bar_is_named_in_its_tooltip() -> None:
    svg = report.timeline(data())
    titles = re.findall(r"<title>([^<]*)</title>", svg)
    bars = [t for t in titles if ": attempt " in t]
    assert len(bars) == 6
    assert "locked: attempt 4, succeeded, 0.009 s" in bars
    assert 'id="bars-retrying"' in svg and 'id="bars-succeeded"' in svg


def test_bars_closer_than_a_pixel_are_joined() -> None:
    bars = [charts.Bar(s, w, "t") for s, w in [(5.0, 1.0), (0.0, 1.0), (1.05, 1.0), (2.5, 0.1),
                                                (2.1, 0.1)]]  # fmt: skip
    joined = [(b.start, round(b.width, 6), b.title) for b in report.merged(bars, 0.2)]
    assert joined == [(0.0, 2.2, None), (2.5, 0.1, None), (5.0, 1.0, None)]
    assert report.merged([], 0.2) == []


def test_a_large_timeline_draws_what_its_pixels_show_and_keeps_every_failure(
    monkeypatch: Any,
) -> None:
    """Past ``MAX_TITLED`` attempts the successes of a lane become a few bars, drawn under the
    failures, so the page stays small and a failure still shows."""
    many = [(f"t{i}", attempt(1, i * 0.01, 0.009, "succeeded")) for i in range(300)]
    many.append(("broken", attempt(1, 1.5, 0.009, "failed", "DuplicateTable: audit_log")))
    run = report.RunData(data().report, many)
    monkeypatch.setattr(report, "MAX_TITLED", 100)
    drawn = report.timeline(run)
    assert "bars closer than a pixel drawn as one" in drawn
    assert drawn.count("<rect") < 20  # 301 attempts, a handful of bars (and the legend)
    assert drawn.index('id="bars-succeeded"') < drawn.index('id="bars-failed"')  # on top


def test_the_axes_have_round_ticks_and_the_histogram_counts_every_tenant() -> None:
    assert charts.ticks(21.0) == [0, 5, 10, 15, 20]
    assert charts.ticks(0.9, 5) == [0, 0.2, 0.4, 0.6000000000000001, 0.8]
    assert charts.ticks(0) == [0.0]
    shown = [f"{v:g}" for v in charts.log_ticks(0.004, 2.1)]
    assert shown == ["0.005", "0.01", "0.02", "0.05", "0.1", "0.2", "0.5", "1", "2"]
    assert [f"{v:g}" for v in charts.log_ticks(0.001, 5000)] == ["0.001", "0.01", "0.1", "1",
                                                                  "10", "100", "1000"]  # fmt: skip
    values = [0.0001, 0.009, 0.01, 0.5, 2.0, 2.0]
    svg = charts.histogram("t", values, "s", "duration-bars", "#000")
    counted = [int(n) for n in re.findall(r"<title>(\d+) tenants", svg)]
    assert sum(counted) == len(values)  # the one below a millisecond in the first bin
    assert svg.startswith("<svg") and svg.endswith("</svg>") and 'id="duration-bars"' in svg
