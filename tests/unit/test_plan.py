"""Choosing waves and canaries, and the sending order of a plan: pure, no server."""

import pytest

from tenantfleet import planning
from tenantfleet.errors import UsageError
from tenantfleet.planning import MigrateOptions, Plan

R1 = "20250102_000001"


def plan(count: int, **kwargs: object) -> Plan:
    behind = [(f"t{i:03d}", R1) for i in range(1, count + 1)]
    return Plan("20250301_000000", behind, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "total", "size"),
    [("5", 100, 5), ("10%", 100, 10), ("10%", 15, 2), ("1%", 1, 1), ("100%", 7, 7), (" 3 ", 9, 3)],
)
def test_a_wave_takes_n_tenants_or_n_percent_rounded_up(spec: str, total: int, size: int) -> None:
    assert planning._wave_size(spec, total) == size


@pytest.mark.parametrize("spec", ["0", "-1", "101%", "ten", "5%%", "", "1.5"])
def test_a_wave_that_is_not_a_count_or_a_percentage_is_refused(spec: str) -> None:
    with pytest.raises(UsageError, match="give a number of tenants"):
        planning._wave_size(spec, 10)


def test_waves_take_the_next_tenants_in_plan_order_and_the_rest_last() -> None:
    waves = planning.choose_waves(plan(20), MigrateOptions(waves=("2", "25%")))
    assert [len(w) for w in waves] == [2, 5, 13]
    assert waves[0] == ["t001", "t002"] and waves[2][-1] == "t020"
    assert sum(waves, []) == [s for s, _ in plan(20).behind]


def test_waves_larger_than_the_fleet_leave_no_empty_wave() -> None:
    assert planning.choose_waves(plan(3), MigrateOptions(waves=("2", "5"))) == [
        ["t001", "t002"],
        ["t003"],
    ]
    assert planning.choose_waves(plan(0), MigrateOptions(waves=("2",))) == []


def test_without_waves_the_whole_plan_is_one_list() -> None:
    assert planning.choose_waves(plan(3), MigrateOptions()) == [["t001", "t002", "t003"]]


def test_canaries_are_the_first_wave_of_two() -> None:
    waves = planning.choose_waves(plan(5), MigrateOptions(canary=2))
    assert waves == [["t001", "t002"], ["t003", "t004", "t005"]]
    named = planning.choose_waves(plan(5), MigrateOptions(canary_tenants=("t004", "t004")))
    assert named == [["t004"], ["t001", "t002", "t003", "t005"]]


def test_a_canary_tenant_that_is_not_behind_is_refused() -> None:
    with pytest.raises(UsageError, match="canary tenant not selected or not behind: t999"):
        planning.choose_canaries(plan(3), MigrateOptions(canary_tenants=("t999",)))


def test_the_largest_tenants_are_sent_first_then_in_plan_order() -> None:
    sized = plan(4, sizes={"t003": 900, "t001": 10, "t004": 900})
    assert sized.sending_order() == ["t003", "t004", "t001", "t002"]
    assert plan(3).sending_order() == ["t001", "t002", "t003"]


def test_a_tenant_of_another_database_is_labelled_with_its_key() -> None:
    placed = plan(2, placement={"t002": "shard2"})
    assert [placed.label(s) for s, _ in placed.behind] == ["t001", "shard2/t002"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (MigrateOptions(canary=-1), "--canary must be at least 0"),
        (MigrateOptions(max_failures=0), "--max-failures at least 1"),
        (MigrateOptions(waves=("2",), canary=1), "--canary is the first of two waves"),
        (MigrateOptions(wave_hold=True), "--wave-pause and --wave-hold go with --wave"),
        (MigrateOptions(include=("Bad-Name!",)), "schema"),
        (MigrateOptions(revision="base"), "migrate only upgrades"),
    ],
)
def test_a_request_that_cannot_be_done_is_refused_before_anything_is_touched(
    options: MigrateOptions, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        planning.validate(options)


def test_a_valid_request_resolves_head_to_the_newest_revision() -> None:
    assert planning.validate(MigrateOptions()) == "20250415_000000"
