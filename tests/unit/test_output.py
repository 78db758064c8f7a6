"""What the text views show of a run: pure shaping of a run's view, no server."""

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tenantfleet import output, runs
from tenantfleet.planning import Plan
from tenantfleet.states import RunState

WHEN = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def view(**overrides: Any) -> dict[str, Any]:
    counts = {
        "total": 3, "succeeded": 1, "failed": 1, "skipped": 1, "pending": 0, "queued": 0,
        "running": 0, "retrying": 0, "waiting": 0, "cancelled": 0, "up_to_date": 2,
    }  # fmt: skip
    tenants = [
        {"schema": "b", "tenant": "b", "status": "skipped", "attempts": 1,
         "error": "MovedSince: moved to r3 since the plan saw it at r1; moved by run 4"},
        {"schema": "c", "tenant": "c", "status": "succeeded", "attempts": 1, "error": None},
        {"schema": "a", "tenant": "a", "status": "failed", "attempts": 2,
         "error": "ProgrammingError: boom\nDETAIL: more\nHINT: ignored"},
    ]  # fmt: skip
    found = {
        "run_id": 7, "status": "partial", "target_revision": "r2", "counts": counts,
        "tenants": tenants, "databases": {"default": counts}, "waves": [], "wave": None,
        "finished_at": WHEN.isoformat(), "slowest": [],
    }  # fmt: skip
    return {**found, **overrides}


def run(status: RunState, *, finished: bool, wave: int | None = None) -> runs.Run:
    return runs.Run(
        7, None, "r2", status, 4, 0, 1, 1, 0, {}, None, WHEN,
        WHEN if finished else None, "uid", None, None, wave, None,
    )  # fmt: skip


def test_the_summary_lists_failed_then_skipped_tenants_with_the_lines_that_say_why() -> None:
    text = output.run_summary(view())
    assert text.splitlines()[0].startswith("run 7: partial - 1 succeeded, 1 failed, 1 skipped")
    rows = text.splitlines()[2:]
    assert [r.split()[0] for r in rows[2:]] == ["a", "b"]
    assert "ProgrammingError: boom DETAIL: more" in text and "moved by run 4" in text


def test_status_says_how_a_held_run_goes_on() -> None:
    held = view(finished_at=None, status="held", held=True, alive=True, wave=1, idle_seconds=3.0)
    text = output.status_report(held)
    assert "open, held at wave 1: `tenantfleet continue 7` sends the next wave" in text
    assert "ABANDONED" not in text


def test_status_says_an_abandoned_run_is_finished_by_resume() -> None:
    lost = view(finished_at=None, status="running", held=False, alive=False, idle_seconds=900.0)
    assert "ABANDONED: last activity 900.0 s ago; `tenantfleet resume 7` finishes it" in (
        output.status_report(lost)
    )


def cell(table: str, column: str, row: int = 0) -> str:
    """The text under ``column``'s header in a row of ``output.table``'s layout."""
    header, rule, *rows = table.splitlines()
    start = header.index(column)
    width = len(rule[start:].split()[0])  # the column's dashes
    return rows[row][start : start + width].strip()


def test_runs_shows_an_open_runs_counts_as_they_are_and_how_a_held_run_goes_on() -> None:
    open_counts: dict[str | None, runs.Counts] = {None: runs.Counts(4, 2, queued=2)}
    table = output.runs_table([run(RunState.HELD, finished=False, wave=1)], {7: open_counts})
    assert cell(table, "status") == "held" and cell(table, "ok") == "2"
    assert table.splitlines()[-1] == "run 7: held at wave 1: `tenantfleet continue 7`"


def test_runs_shows_a_closed_runs_counts_from_its_row() -> None:
    table = output.runs_table([run(RunState.PARTIAL, finished=True)], {7: {}})
    assert cell(table, "status") == "partial" and cell(table, "ok") == "1"
    assert "held at" not in table


def test_no_runs_yet() -> None:
    assert output.runs_table([], {}) == "no runs yet"


def test_a_dry_run_says_who_is_ahead_who_would_be_skipped_and_what_would_refuse_it() -> None:
    plan = Plan(
        "r2",
        [("a", "r1")],
        up_to_date=["b"],
        not_migratable=[("gone", None, "SchemaMissing", "registered, but the schema does not")],
        ahead=["c"],
    )
    replay = {"replayed": ["r2"], "online": []}
    text = output.plan_text(plan, [["a"]], replay, "run 3 is held at wave 1")
    assert "1 tenants would be migrated to r2 (1 already there, 1 ahead of it: left alone)" in text
    assert "migrate would be refused now: run 3 is held at wave 1" in text
    assert "1 tenants cannot be migrated and would be recorded skipped" in text
    assert "replayed (rendered once): r2; online (as alembic upgrade): -" in text
    shown = output.plan_dict(plan, [["a"]], "", replay)
    assert shown["ahead"] == ["c"] and shown["skipped"][0]["schema"] == "gone"


def test_json_text_is_json_with_a_line_per_key_and_per_listed_item() -> None:
    value = {
        "run_id": 3,
        "at": datetime(2026, 12, 7, 6, 30, tzinfo=UTC),
        "counts": {"total": 2, "succeeded": 2},
        "tenants": [{"schema": "t00001", "status": "succeeded"}, {"schema": "t00002"}],
        "waves": [],
        "ünïcode": "naïve",
    }
    text = output.json_text(value)
    assert json.loads(text) == {**value, "at": "2026-12-07T06:30:00+00:00"}
    lines = text.splitlines()
    assert lines[0] == "{" and lines[-1] == "}" and len(lines) == 2 + len(value) + 3
    assert '    {"schema": "t00001", "status": "succeeded"},' in lines
    assert '  "waves": [],' in lines
    assert output.json_text([]) == "[]" and output.json_text({}) == "{}"
    assert output.json_text([1, {"a": None}]).splitlines() == ["[", "  1,", '  {"a": null}', "]"]
    assert json.loads(output.json_text("x")) == "x"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_each_line_is_what_json_dumps_makes(value: Any) -> None:
    """The encoder made once writes what ``json.dumps`` writes, for anything JSON holds."""
    assert output.json_text([value]) == f"[\n  {json.dumps(value)}\n]"
