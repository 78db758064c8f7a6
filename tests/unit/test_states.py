"""The run lifecycle's states and transitions (tenantfleet.states): pure, no server."""

import re
from pathlib import Path

import pytest

from tenantfleet import states
from tenantfleet.states import RunState, Tally, TenantState


def test_every_tenant_state_is_final_or_pending_never_both() -> None:
    assert set(states.TENANT_FINAL) | set(states.TENANT_PENDING) == set(TenantState)
    assert not set(states.TENANT_FINAL) & set(states.TENANT_PENDING)
    assert (*states.TENANT_FINAL, *states.TENANT_PENDING) == states.TENANT_STATES


def test_every_run_state_is_open_or_closed_never_both() -> None:
    assert set(states.RUN_OPEN) | set(states.RUN_CLOSED) == set(RunState)
    assert not set(states.RUN_OPEN) & set(states.RUN_CLOSED)
    assert set(states.RUN_OK) < set(states.RUN_CLOSED)


def test_not_started_and_retryable_are_tenant_states() -> None:
    assert set(states.NOT_STARTED) < set(states.TENANT_PENDING)
    assert TenantState.RUNNING not in states.NOT_STARTED
    assert TenantState.SUCCEEDED not in states.RETRYABLE


def test_states_are_plain_strings_in_sql_and_json() -> None:
    assert states.sql_list((RunState.HELD, RunState.SKIPPED)) == "'held', 'skipped'"
    assert f"{TenantState.QUEUED}" == "queued" and TenantState("waiting") is TenantState.WAITING


@pytest.mark.parametrize(
    ("tally", "cancelled", "expected"),
    [
        (Tally(0, 0, 0, 0), False, RunState.NOTHING_TO_DO),
        (Tally(3, 3, 0, 0), False, RunState.SUCCEEDED),
        (Tally(3, 2, 1, 0), False, RunState.PARTIAL),
        (Tally(3, 0, 3, 0), False, RunState.FAILED),
        (Tally(3, 0, 1, 2), False, RunState.FAILED),
        (Tally(3, 0, 0, 3, 3), False, RunState.SKIPPED),
        (Tally(3, 0, 0, 3, 0), False, RunState.SKIPPED),
        (Tally(4, 2, 0, 2, 2), False, RunState.PARTIAL),
        (Tally(4, 2, 0, 2, 0), False, RunState.FAILED),
        (Tally(4, 4, 0, 0), True, RunState.CANCELLED),
    ],
)
def test_a_run_closes_with_the_status_its_tenants_give(
    tally: Tally, cancelled: bool, expected: RunState
) -> None:
    assert states.closing_status(tally, cancelled=cancelled) is expected


@pytest.mark.parametrize("closed", states.RUN_CLOSED)
@pytest.mark.parametrize("command", ["cancel", "continue", "resume"])
def test_a_closed_run_refuses_the_commands_that_change_an_open_one(
    command: str, closed: RunState
) -> None:
    assert states.refusal(command, closed, 7) == f"run 7 is closed ({closed}): nothing to {command}"


def test_a_held_run_refuses_resume_and_names_continue_and_cancel() -> None:
    refused = states.refusal("resume", RunState.HELD, 7, 2)
    assert refused is not None
    assert "held after wave 2" in refused and "`tenantfleet continue 7`" in refused
    assert "cancel" in refused
    assert states.refusal("continue", RunState.HELD, 7, 2) is None
    assert states.refusal("cancel", RunState.HELD, 7, 2) is None


def test_continue_needs_waves_and_rollback_a_closed_run() -> None:
    assert (
        states.refusal("continue", RunState.RUNNING, 7) == "run 7 has no waves: nothing to continue"
    )
    assert states.refusal("continue", RunState.RUNNING, 7, 1) is None
    assert states.refusal("rollback", RunState.RUNNING, 7) == (
        "run 7 is still open: let it finish, or cancel it, first"
    )
    assert states.refusal("rollback", RunState.SUCCEEDED, 7) is None
    assert states.refusal("resume", RunState.RUNNING, 7) is None


def test_every_transition_moves_between_known_states() -> None:
    names = [t.name for t in states.TRANSITIONS]
    assert len(names) == len(set(names))
    for transition in states.TRANSITIONS:
        assert set(transition.to) <= set(RunState)
        assert transition.sources is None or set(transition.sources) <= set(RunState)
    created = [t for t in states.TRANSITIONS if t.sources is None]
    assert [t.name for t in created] == ["create"]
    reachable = {s for t in states.TRANSITIONS for s in t.to}
    assert reachable == set(RunState)  # every state can be reached


def test_the_architecture_page_draws_the_state_machine_the_code_has() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"
    drawn = re.search(r"```mermaid\n(stateDiagram-v2\n.*?)\n```", page.read_text(), re.DOTALL)
    assert drawn is not None, "docs/ARCHITECTURE.md has no state diagram"
    assert drawn.group(1) == states.diagram()


def test_the_held_hint_names_the_command() -> None:
    assert states.held_hint(12, 3) == "held at wave 3: `tenantfleet continue 12`"
