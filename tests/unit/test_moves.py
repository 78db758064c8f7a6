"""Whether a task may move a schema: from where the plan saw it only (pure: the tenant scripts
are files; no server)."""

import pytest

from tenantfleet import alembic_runtime, producer, runs
from tenantfleet.attempt import Started
from tenantfleet.errors import UsageError

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


def task(database: str | None = None, planned: str | None = R1) -> runs.TenantTask:
    return runs.TenantTask(1, "uid", "acme", R2, database, planned)


def started(at: str | None, attempts: int = 1, planned: str | None = R1) -> Started:
    return Started(attempts, "running", None if at is None else [at], planned)


def test_a_message_names_before_the_first_revision_base() -> None:
    assert runs.planned_in_message(None) == "base" and runs.planned_in_message(R1) == R1
    assert task(planned="base").planned_revision is None
    assert task(planned=R1).planned_revision == R1
    assert task(planned=None).planned_revision is None  # not said: the row says


def test_a_schema_where_the_plan_saw_it_is_not_moved() -> None:
    assert not started(R1).moved(task())
    assert not started(None, planned=None).moved(task())  # planned at base, still there


@pytest.mark.parametrize("at", [R3, None, R2])
def test_a_schema_elsewhere_on_a_first_attempt_is_moved(at: str | None) -> None:
    assert started(at).moved(task())


def test_a_schema_at_the_target_is_this_runs_own_only_in_another_database() -> None:
    # another database: the schema commits before the control database's mark, which a crash
    # may lose; here both commit together, so a schema at the target was moved by someone else
    assert not started(R2, attempts=2).moved(task(database="shard2"))
    assert started(R2, attempts=2).moved(task())
    assert started(R3, attempts=2).moved(task(database="shard2"))


def test_a_span_that_commits_part_way_may_have_stopped_anywhere_on_its_way() -> None:
    assert alembic_runtime.on_the_way(R1, R3) == frozenset({R1, R2, R3})
    assert alembic_runtime.on_the_way(R3, R1) == frozenset({R1, R2, R3})
    assert alembic_runtime.on_the_way(R1, R1) == frozenset({R1})
    assert alembic_runtime.on_the_way(R2, "base") >= {R1, R2, None}


def test_a_rollback_of_a_recorded_downgrade_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match=f"recorded a move from {R3} to {R2}, which is not an"):
        producer._refuse_without_downgrades(9, {(R3, R2)})
