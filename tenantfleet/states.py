"""The run lifecycle, defined once: the states of a run and of its tenants, and which command
may move a run from which state to which.

Every module, public revision, view and metric names states through this module; nothing
spells them again. ``TRANSITIONS`` is the state machine docs/ARCHITECTURE.md draws (a test
checks that the diagram there is ``diagram()``), and ``refusal`` says, for a command and the
state a run is in, why that command may not take it (None: it may). Pure: no database here.
"""

from dataclasses import dataclass
from enum import StrEnum


class TenantState(StrEnum):
    """Where one tenant of one run is (``migration_run_tenants.status``)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    """Untouched: the plan could not migrate it, it moved since the plan, a canary or the
    failure budget stopped the run."""
    CANCELLED = "cancelled"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    WAITING = "waiting"
    """Parked until a slot of its database is free (its cap is reached)."""


TENANT_FINAL: tuple[TenantState, ...] = (
    TenantState.SUCCEEDED,
    TenantState.FAILED,
    TenantState.SKIPPED,
    TenantState.CANCELLED,
)
"""A final tenant row is never changed again."""
TENANT_PENDING: tuple[TenantState, ...] = (
    TenantState.QUEUED,
    TenantState.RUNNING,
    TenantState.RETRYING,
    TenantState.WAITING,
)
TENANT_STATES: tuple[TenantState, ...] = (*TENANT_FINAL, *TENANT_PENDING)
"""Every tenant state, in the order tables and reports show them."""
NOT_STARTED: tuple[TenantState, ...] = (
    TenantState.QUEUED,
    TenantState.WAITING,
    TenantState.RETRYING,
)
"""Pending tenants no attempt is working on right now (a ``retrying`` one waits for its next)."""
RETRYABLE: tuple[TenantState, ...] = (
    TenantState.FAILED,
    TenantState.SKIPPED,
    TenantState.CANCELLED,
    *TENANT_PENDING,
)
"""The tenants ``retry`` takes into a new run."""


class RunState(StrEnum):
    """Where a run is (``migration_runs.status``)."""

    RUNNING = "running"
    """Open: its tenants are being sent or migrated."""
    HELD = "held"
    """Open, between two waves: a wave ended within its budget and the next waits for
    ``tenantfleet continue`` (``--wave-hold``) or for its pause. The hold is in the database:
    the run stays active whether or not its producer lives."""
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    """Some tenants failed or could not be migrated, the rest succeeded."""
    FAILED = "failed"
    """Tenants failed and none succeeded, or the run was stopped (a canary, the budget)."""
    SKIPPED = "skipped"
    """Every tenant was skipped, untouched, and none failed (moved since the plan, missing)."""
    CANCELLED = "cancelled"
    NOTHING_TO_DO = "nothing_to_do"


RUN_OPEN: tuple[RunState, ...] = (RunState.RUNNING, RunState.HELD)
RUN_CLOSED: tuple[RunState, ...] = (
    RunState.SUCCEEDED,
    RunState.PARTIAL,
    RunState.FAILED,
    RunState.SKIPPED,
    RunState.CANCELLED,
    RunState.NOTHING_TO_DO,
)
RUN_STATES: tuple[RunState, ...] = (*RUN_OPEN, *RUN_CLOSED)
RUN_OK: tuple[RunState, ...] = (RunState.SUCCEEDED, RunState.NOTHING_TO_DO)
"""Closed runs a command reports with exit 0; any other closed run is exit 1."""


def sql_list(states: tuple[StrEnum, ...]) -> str:
    """``'a', 'b'``: the states as SQL literals, for check constraints and SQL text (the
    states are this module's constants, never user text)."""
    return ", ".join(f"'{state.value}'" for state in states)


@dataclass(frozen=True)
class Tally:
    """How many tenants of a run ended how: what a run's closing status is decided from."""

    total: int
    succeeded: int
    failed: int
    skipped: int
    not_migratable: int = 0
    """Of the skipped, those the plan found it could not migrate (missing, unknown revision,
    unreachable database): a run with those and successes is partial, not failed."""


def closing_status(tally: Tally, *, cancelled: bool = False) -> RunState:
    """The status a run closes with once none of its tenants is pending."""
    if cancelled:
        return RunState.CANCELLED
    if tally.total == 0:
        return RunState.NOTHING_TO_DO
    if tally.failed == 0 and tally.skipped == 0:
        return RunState.SUCCEEDED
    if tally.succeeded == 0:
        return RunState.SKIPPED if tally.failed == 0 else RunState.FAILED
    if tally.skipped > tally.not_migratable:
        return RunState.FAILED  # the run was stopped: a canary failed, the budget ran out
    return RunState.PARTIAL


@dataclass(frozen=True)
class Transition:
    """``command`` may move a run from any of ``sources`` to ``to`` (``None``: the run is
    created)."""

    name: str
    commands: tuple[str, ...]
    sources: tuple[RunState, ...] | None
    to: tuple[RunState, ...]
    what: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        "create",
        ("migrate", "retry", "rollback"),
        None,
        (RunState.RUNNING, RunState.NOTHING_TO_DO),
        "plan, lint, record every tenant, then send; refused while another run is active",
    ),
    Transition(
        "hold",
        ("producer",),
        (RunState.RUNNING,),
        (RunState.HELD,),
        "a wave ended within its budget; the next waits for continue or its pause",
    ),
    Transition(
        "continue",
        ("continue", "producer"),
        (RunState.HELD,),
        (RunState.RUNNING,),
        "the next wave is sent (by the live producer, else by continue)",
    ),
    Transition(
        "cancel",
        ("cancel",),
        RUN_OPEN,
        (RunState.CANCELLED,),
        "tenants not started are cancelled; the run closes once those in flight end",
    ),
    Transition(
        "resume",
        ("resume",),
        (RunState.RUNNING,),
        (RunState.RUNNING,),
        "pending tenants no worker holds are sent again (an abandoned run finishes)",
    ),
    Transition(
        "close",
        ("chord callback", "follower", "status", "guard"),
        (RunState.RUNNING,),
        (RunState.SUCCEEDED, RunState.PARTIAL, RunState.FAILED, RunState.SKIPPED),
        "no tenant is pending: the status follows from the tenants' outcomes (runs.finalize)",
    ),
)


def refusal(command: str, status: str, run_id: int, wave: int | None = None) -> str | None:
    """Why ``command`` may not act on run ``run_id`` in ``status`` (None: it may). The one
    place that says what each operator command refuses."""
    if status in RUN_CLOSED:
        if command in ("cancel", "continue", "resume"):
            return f"run {run_id} is closed ({status}): nothing to {command}"
        return None
    if command == "rollback":
        return f"run {run_id} is still open: let it finish, or cancel it, first"
    if command == "resume" and status == RunState.HELD:
        return (
            f"run {run_id} is held after wave {wave}: `tenantfleet continue {run_id}` sends"
            " the next wave (or `tenantfleet cancel` stops it)"
        )
    if command == "continue" and status != RunState.HELD and wave is None:
        return f"run {run_id} has no waves: nothing to continue"
    return None


def held_hint(run_id: int, wave: int | None) -> str:
    """What ``status``, ``runs`` and the report say of a held run."""
    return f"held at wave {wave}: `tenantfleet continue {run_id}`"


def diagram() -> str:
    """``TRANSITIONS`` as a Mermaid state diagram (docs/ARCHITECTURE.md shows this text)."""
    lines = ["stateDiagram-v2"]
    for transition in TRANSITIONS:
        label = f"{transition.name} ({', '.join(transition.commands)})"
        for source in transition.sources or (None,):
            for target in transition.to:
                start = "[*]" if source is None else source.value
                lines.append(f"    {start} --> {target.value}: {label}")
    for closed in RUN_CLOSED:
        lines.append(f"    {closed.value} --> [*]")
    return "\n".join(lines)


class BackfillState(StrEnum):
    """Where one backfill of one tenant is (``migration_backfills.status``)."""

    PENDING = "pending"
    RUNNING = "running"
    PAUSED = "paused"
    """Its database was over its health limits (lock waits, connections, long transactions):
    it goes on by itself once they are back under."""
    DONE = "done"
    FAILED = "failed"
    """A batch failed for good: ``retry`` goes on from where it stopped."""


BACKFILL_STATES: tuple[BackfillState, ...] = tuple(BackfillState)
BACKFILL_OPEN: tuple[BackfillState, ...] = (
    BackfillState.PENDING,
    BackfillState.RUNNING,
    BackfillState.PAUSED,
)
