"""The producer behind ``migrate``, ``retry`` and ``resume``: plan, record, enqueue, follow.

Order matters for "nothing lost": the run and one row per tenant are committed before the first
task is sent, so whatever happens to the broker afterwards, the run tables know every tenant.
"""

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, Engine

from tenantfleet import (
    alembic_runtime,
    databases,
    db,
    follow,
    guard,
    lint,
    locks,
    registry,
    retries,
    runs,
    states,
    tenants,
    tracing,
)
from tenantfleet.config import Settings
from tenantfleet.databases import Placed
from tenantfleet.errors import (
    ConnectionFailed,
    LintRefused,
    RunActive,
    TenantStateError,
    UsageError,
)
from tenantfleet.manager import MigrationManager
from tenantfleet.names import shorten, validate_schema_name
from tenantfleet.queues import Queues, of_database

BROKER_CONNECT_TIMEOUT_S = 5.0

Say = Callable[[str], None]


def _quiet(_: str) -> None:
    """The default ``say``: the library prints nothing; the CLI passes its own."""


@dataclass(frozen=True)
class MigrateOptions:
    revision: str = "head"
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    upgrade_public: bool = True
    canary: int = 0
    canary_tenants: Sequence[str] = ()
    max_failures: int | None = None
    wait_for_active: bool = False
    parent_run_id: int | None = None
    strict: bool = False
    allow: Sequence[str] = ()
    """Lint rules whose findings do not block this run (besides ``lint_allow``)."""
    waves: Sequence[str] = ()
    """``N`` or ``N%``: each wave the next N (or N % of the selected tenants)."""
    wave_pause: float = 0.0
    """Seconds to wait between waves."""
    wave_hold: bool = False
    """Wait for ``tenantfleet continue RUN`` between waves."""


@dataclass(frozen=True)
class Plan:
    """Which selected tenants are behind the target, and from where; which cannot be migrated."""

    target: str
    behind: list[tuple[str, str | None]]
    up_to_date: list[str] = field(default_factory=list)
    not_migratable: list[tuple[str, str | None, str, str]] = field(default_factory=list)
    """(schema, revision, error class, reason): registered without a schema, at a revision the
    scripts do not know, or in a database that cannot be reached. Recorded ``skipped`` in the
    run; the others go on."""
    placement: dict[str, str] = field(default_factory=dict)
    """The schemas that live in another database than the control one, and its key."""
    sizes: dict[str, int] = field(default_factory=dict)
    """The behind tenants' sizes in bytes (``schedule_by_size``): the tenant source's hint, else
    the catalog's estimate (``databases.sizes``); the largest are sent first."""

    def sending_order(self) -> list[str]:
        """The behind schemas, largest first (then in plan order) when sizes are known."""
        schemas = [schema for schema, _ in self.behind]
        if not self.sizes:
            return schemas
        return sorted(schemas, key=lambda s: -self.sizes.get(s, 0))

    def label(self, schema: str) -> str:
        return databases.label(self.placement.get(schema), schema)


def validate(options: MigrateOptions) -> str:
    """Check the request before anything is touched; the resolved target revision."""
    for name in [*options.include, *options.exclude, *options.canary_tenants]:
        validate_schema_name(name)
    if options.canary < 0 or (options.max_failures is not None and options.max_failures < 1):
        raise UsageError("--canary must be at least 0 and --max-failures at least 1")
    for spec in options.waves:
        _wave_size(spec, 100)
    if options.waves and (options.canary or options.canary_tenants):
        raise UsageError("--canary is the first of two waves: give --wave alone")
    if (options.wave_pause or options.wave_hold) and not (options.waves or options.canary):
        raise UsageError("--wave-pause and --wave-hold go with --wave")
    target = alembic_runtime.resolve_revision(alembic_runtime.tenant_script(), options.revision)
    if target is None:
        raise UsageError("migrate only upgrades; use `tenantfleet tenant downgrade` for base")
    return target


def select(
    manager: MigrationManager, connection: Connection, options: MigrateOptions
) -> list[Placed]:
    """The tenant source's tenants for ``options``, wherever they live."""

    def elsewhere(database: str) -> list[str]:
        with db.connect(manager.engine_for(database)) as other:
            return tenants.discover(other)

    return tenants.select(connection, manager.settings, options.include, options.exclude, elsewhere)


def plan(manager: MigrationManager, options: MigrateOptions, *, dry_run: bool = False) -> Plan:
    """Select the active tenants and read every schema's revision: one pass per database, every
    database at once."""
    script = alembic_runtime.tenant_script()
    target = validate(options)
    with db.connect(manager.engine) as connection:
        # a run writes the public tables; a dry run reads the registry's columns, if at all
        if not dry_run or manager.settings.tenants == "registry":
            manager.require_public(connection)
        placed = select(manager, connection, options)
        # sending is likely unless the registry says every tenant is at the target already
        likely = not dry_run and (
            manager.settings.tenants != "registry" or registry.any_active_not_at(connection, target)
        )
    meanwhile = functools.partial(prepare_sending, manager.settings) if likely else None
    read = databases.read_versions(manager.engine_for, placed, meanwhile)
    versions = read.found
    known = {r.revision for r in script.walk_revisions()} | {None}
    not_migratable: list[tuple[str, str | None, str, str]] = []
    for tenant in placed:
        schema = tenant.schema
        if tenant.database in read.unreachable:
            not_migratable.append(
                (
                    schema,
                    None,
                    "DatabaseUnreachable",
                    f"database {databases.shown(tenant.database)} could not be reached while"
                    f" planning ({read.unreachable[tenant.database]}): `tenantfleet retry` once"
                    " it is back",
                )
            )
        elif schema not in versions:
            not_migratable.append(
                (schema, None, "SchemaMissing", "registered, but the schema does not exist")
            )
        elif versions[schema] not in known:
            not_migratable.append(
                (
                    schema,
                    versions[schema],
                    "UnknownRevision",
                    f"at {versions[schema]!r}, a revision the migration scripts do not know",
                )
            )
    if not_migratable and options.strict:
        first = not_migratable[0]
        raise TenantStateError(
            f"{len(not_migratable)} tenants cannot be migrated (--strict):"
            f" {shorten([s for s, *_ in not_migratable])} ({first[0]}: {first[3]})"
        )
    skip = {schema for schema, *_ in not_migratable}
    below = alembic_runtime.revisions_below(script, target)
    schemas = [t.schema for t in placed]
    behind = [(s, versions[s]) for s in schemas if s not in skip and versions[s] in below]
    if manager.settings.wave_order and behind:
        behind = _ordered(manager, behind, manager.settings.wave_order)
    at_or_past = [s for s in schemas if s not in skip and versions[s] not in below]
    placement = {t.schema: t.database for t in placed if t.database is not None}
    behind_schemas = {s for s, _ in behind}
    sizes = (
        _sizes(manager, [t for t in placed if t.schema in behind_schemas])
        if manager.settings.schedule_by_size and len(behind) > 1 and not dry_run
        else {}
    )
    return Plan(target, behind, at_or_past, not_migratable, placement, sizes)


def _sizes(manager: MigrationManager, behind: list[Placed]) -> dict[str, int]:
    """Each tenant's size: the hint its source gave, else the catalog's estimate (read only for
    the tenants without a hint)."""
    hinted = {t.schema: t.size_hint for t in behind if t.size_hint is not None}
    unhinted = [t for t in behind if t.schema not in hinted]
    return {**(databases.sizes(manager.engine_for, unhinted) if unhinted else {}), **hinted}


def _ordered(
    manager: MigrationManager, behind: list[tuple[str, str | None]], column: str
) -> list[tuple[str, str | None]]:
    """``behind`` ordered by the registry column ``column`` (NULLs last), then schema name."""
    with db.connect(manager.engine) as connection:
        values = registry.attribute(connection, column, [s for s, _ in behind])

    def key(tenant: tuple[str, str | None]) -> tuple[bool, Any, str]:
        value = values.get(tenant[0])
        return (value is None, "" if value is None else value, tenant[0])

    return sorted(behind, key=key)


def lint_plan(manager: MigrationManager, chosen: Plan, allow: Sequence[str] = ()) -> lint.Report:
    """The lint gate over every revision some tenant of ``chosen`` would run, with table sizes
    read from those tenants."""
    script = alembic_runtime.tenant_script()
    revisions = lint.pending_revisions(script, {rev for _, rev in chosen.behind}, chosen.target)
    placed = [Placed(schema, chosen.placement.get(schema)) for schema, _ in chosen.behind]
    settings = manager.settings
    return lint.check(
        revisions,
        lint.fleet_sizes(manager.engine_for, placed),
        [*settings.lint_allow, *allow],
        settings.lint_big_table_rows,
    )


def gate(manager: MigrationManager, chosen: Plan, allow: Sequence[str]) -> None:
    """``LintRefused`` (one line per finding) when a pending revision has a blocking finding."""
    blocking = lint_plan(manager, chosen, allow).blocking
    if blocking:
        lines = [
            f"  {f.revision} {f.rule}: {f.statement or '(the revision)'} -- {f.message}"
            for f in blocking
        ]
        raise LintRefused(
            f"the lint gate refuses the run: {len(blocking)} blocking findings (allow a rule"
            " by name: --allow RULE, or lint_allow in the config)\n" + "\n".join(lines)
        )


def choose_canaries(chosen: Plan, options: MigrateOptions) -> list[str]:
    """The first ``--canary`` behind tenants by schema name, or the ``--canary-tenant`` ones."""
    behind = [schema for schema, _ in chosen.behind]
    if options.canary_tenants:
        not_behind = [s for s in options.canary_tenants if s not in behind]
        if not_behind:
            raise UsageError(f"canary tenant not selected or not behind: {shorten(not_behind)}")
        return list(dict.fromkeys(options.canary_tenants))
    return behind[: options.canary]


WAVE_SPEC = re.compile(r"([1-9][0-9]*)(%?)")


def _wave_size(spec: str, total: int) -> int:
    """How many tenants of ``total`` a wave ``N`` or ``N%`` takes (a % rounds up)."""
    found = WAVE_SPEC.fullmatch(spec.strip())
    if found is None or (found.group(2) and int(found.group(1)) > 100):
        raise UsageError(f"--wave {spec!r}: give a number of tenants (5) or a percentage (10%)")
    number = int(found.group(1))
    return -(-number * total // 100) if found.group(2) else number


def choose_waves(chosen: Plan, options: MigrateOptions) -> list[list[str]]:
    """The behind tenants in waves, in schema-name order: the canaries then the rest, or each
    ``--wave`` the next N or N % of them, the rest last. No waves: one list, or none."""
    behind = [schema for schema, _ in chosen.behind]
    canaries = choose_canaries(chosen, options)
    if canaries:
        first = set(canaries)
        rest = [s for s in behind if s not in first]
        return [canaries, rest] if rest else [canaries]
    waves: list[list[str]] = []
    left = behind
    for spec in options.waves:
        if not left:
            break
        size = _wave_size(spec, len(behind))
        waves.append(left[:size])
        left = left[size:]
    return [*waves, left] if left else waves


def start(
    manager: MigrationManager,
    options: MigrateOptions,
    say: Say = _quiet,
    watch: follow.Watch | None = None,
) -> int:
    """Upgrade public, plan, lint, record the run (one at a time), send its tasks; the run id.

    With waves (``--canary`` is two), each wave is sent and followed (``watch``: timeout,
    watchdog) before the next. While it records and sends, the producer holds the run's
    dispatch lock, so a run whose producer died before sending everything is seen abandoned
    at once (``guard``) instead of blocking every deploy until it goes stale.
    """
    validate(options)
    watch = watch or follow.Watch()
    while True:
        if options.wait_for_active:
            wait_for_no_active_run(manager, say, watch)
        if options.upgrade_public:
            manager.upgrade_public()
        chosen = plan(manager, options)
        if chosen.behind:
            gate(manager, chosen, options.allow)
        try:
            return _launch(manager, chosen, options, say, watch)
        except RunActive:
            if not options.wait_for_active:
                raise


def _launch(
    manager: MigrationManager,
    chosen: Plan,
    options: MigrateOptions,
    say: Say,
    watch: follow.Watch,
    rollback: "Rollback | None" = None,
) -> int:
    """Record the run of ``chosen`` and send it, holding its dispatch lock; the run id."""
    canaries = choose_canaries(chosen, options)
    waves = choose_waves(chosen, options)
    if chosen.behind:
        check_broker(app())
    uid = str(uuid.uuid4())
    with (
        tracing.run_span(
            manager.settings.tracing,
            "tenantfleet.run",
            **{
                "tenantfleet.run_uid": uid,
                "tenantfleet.to_revision": chosen.target,
                "tenantfleet.tenants": len(chosen.behind),
            },
        ),
        db.connect(manager.engine) as holder,
    ):
        locks.hold(holder, locks.dispatching(uid))  # a new uid: always free
        run_id = _record(manager, chosen, options, canaries, waves, uid, rollback)
        _dispatch(manager, run_id, chosen.sending_order(), say, watch)
    return run_id


def _record(
    manager: MigrationManager,
    chosen: Plan,
    options: MigrateOptions,
    canaries: list[str],
    waves: list[list[str]],
    uid: str,
    rollback: "Rollback | None" = None,
) -> int:
    """Write the run under the producers' lock, unless another run is active."""
    with db.begin(manager.engine) as connection:
        locks.lock_name(connection, locks.PRODUCER)
        guard.refuse_if_active(connection, manager.settings.stale_run_after)
        return runs.create_run(
            connection,
            chosen.target,
            chosen.behind,
            up_to_date=len(chosen.up_to_date),
            options={
                "revision": options.revision,
                "include": list(options.include),
                "exclude": list(options.exclude),
                "canaries": canaries,
                "max_failures": options.max_failures,
                "allow": list(options.allow),
                "waves": list(options.waves) or (["canaries"] if canaries else []),
                "wave_pause": options.wave_pause,
                "wave_hold": options.wave_hold,
                **({"rollback_of": rollback.run_id} if rollback else {}),
            },
            producer=f"{socket.gethostname()}:{os.getpid()}",
            parent_run_id=options.parent_run_id,
            uid=uid,
            skipped=chosen.not_migratable,
            placement=chosen.placement,
            waves={s: n for n, wave in enumerate(waves, 1) for s in wave}
            if len(waves) > 1
            else None,
            targets=rollback.targets if rollback else None,
        )


@dataclass(frozen=True)
class _Sending:
    """What ``_dispatch`` reads of a run before it sends."""

    run: runs.Run
    waves: dict[str, int]
    queues: Queues
    placement: dict[str, str]
    moves: dict[str, tuple[str | None, str]]


def _dispatch(
    manager: MigrationManager,
    run_id: int,
    to_send: Sequence[str],
    say: Say,
    watch: follow.Watch,
    *,
    leave_at_hold: bool = False,
) -> int:
    """Send ``to_send`` (pending tenants of the run), wave after wave when the run has waves
    (from the wave it is at); mark the run dispatched. How many tasks were sent. A wave starts
    only when the one before ended within the failure budget (without one: all succeeded),
    after ``--wave-pause`` and, with ``--wave-hold``, ``tenantfleet continue``; when one did
    not, the tenants of the waves never started are recorded ``skipped``. Raises
    ``StoppedFollowing`` when ``watch`` times out between waves (``resume`` goes on later).
    ``leave_at_hold``: at a ``--wave-hold`` hold, return instead of waiting (``continue`` and
    ``resume``, run by an operator for a producer that is gone, leave the run held in the
    database and end)."""
    engine = manager.engine

    def read() -> _Sending:
        with db.connect(engine) as connection:
            run = runs.get_run(connection, run_id)
            return _Sending(
                run,
                runs.waves(connection, run_id),
                of_database(connection),
                runs.placement(connection, run_id),
                runs.moves(connection, run_id),
            )

    def close(skip_reason: str | None) -> int:
        """Every task is sent (or the rest skipped): mark it, close the run if it can be."""
        with db.begin(engine) as connection:
            skipped = runs.skip_pending(connection, run_id, skip_reason) if skip_reason else 0
            runs.mark_dispatched(connection, run_id)
            runs.finalize(connection, run_id)
        return skipped

    known = follow.patiently(watch, read)
    run = known.run
    max_failures = run.options.get("max_failures")
    numbers = sorted(set(known.waves.values()))
    # Celery only when there is something to send or to wait for (a no-op deploy skips it)
    celery_app = app() if to_send or numbers else None

    def send(schemas: Sequence[str]) -> None:
        tenants = [(databases.label(known.placement.get(s), s), *known.moves[s]) for s in schemas]
        enqueue(celery_app, known.queues, run, tenants, max_failures)

    # what the watch needs to tell why tenants wait, for the waves and for --wait after
    watch.app, watch.queues, watch.target = celery_app, known.queues, run.target_revision
    if not numbers:
        send(to_send)
        follow.patiently(watch, lambda: close(None))  # also closes a run with nothing to send
        return len(to_send)
    sent = 0
    for number in [n for n in numbers if n >= (run.wave or 0)]:
        members = [s for s, n in known.waves.items() if n == number]
        follow.patiently(watch, functools.partial(_at_wave, engine, run_id, number))
        now = [s for s in to_send if known.waves.get(s) == number]
        send(now)
        sent += len(now)
        if number == numbers[-1]:
            break
        say(f"run {run_id}: wave {number} of {len(numbers)} ({len(members)} tenants) running")
        outcome = follow.until_final(engine, run_id, members, watch)
        if outcome is None:
            raise follow.StoppedFollowing(
                f"--timeout reached while wave {number} of run {run_id} ran; the next waves"
                f" are not sent: `tenantfleet resume {run_id}` goes on"
            )
        reason = _wave_verdict(engine, run, number, outcome, watch)
        if reason is not None:
            skipped = follow.patiently(watch, functools.partial(close, reason))
            say(f"run {run_id}: {reason.removeprefix('skipped: ')}; {skipped} tenants skipped")
            return sent
        went_on = _between_waves(engine, run, number, say, watch, leave_at_hold)
        if went_on is None:
            return sent  # held, left to the next `tenantfleet continue`
        if not went_on:
            break  # cancelled meanwhile: the later waves' tenants are cancelled, send nothing
    follow.patiently(watch, lambda: close(None))
    return sent


def _at_wave(engine: Engine, run_id: int, number: int) -> None:
    with db.begin(engine) as connection:
        runs.start_wave(connection, run_id, number)


def _wave_verdict(
    engine: Engine, run: runs.Run, number: int, outcome: dict[str, str], watch: follow.Watch
) -> str | None:
    """None when the run may go on past wave ``number`` (whose tenants ended as ``outcome``);
    else why the rest is skipped."""
    budget = run.options.get("max_failures")
    failed = [s for s, state in outcome.items() if state != "succeeded"]
    if run.options.get("waves") == ["canaries"]:
        return f"skipped: canary {shorten(failed)} did not succeed" if failed else None
    if budget is None:
        return f"skipped: wave {number} did not succeed ({shorten(failed)})" if failed else None

    def failures() -> int:
        with db.connect(engine) as connection:
            return runs.counts(connection, run.id).failed

    spent = follow.patiently(watch, failures)
    if spent >= budget:
        return f"skipped: the failure budget ({budget}) was spent by wave {number}"
    return None


def _between_waves(
    engine: Engine,
    run: runs.Run,
    number: int,
    say: Say,
    watch: follow.Watch,
    leave_at_hold: bool = False,
) -> bool | None:
    """The run is held (``RunState.HELD``, in the database: it stays active whoever lives):
    wait ``wave_pause`` seconds, then (``wave_hold``) until ``tenantfleet continue``, which
    also cuts a pause short. True when the next wave may go; False at once when the run was
    cancelled (its next waves were cancelled with it); None when ``leave_at_hold`` and the run
    waits for ``continue``."""
    pause = float(run.options.get("wave_pause") or 0)
    pause_until = time.monotonic() + pause
    hold = bool(run.options.get("wave_hold"))

    def look() -> runs.Run:
        with db.begin(engine) as connection:
            if hold or pause:
                runs.hold(connection, run.id)
            return runs.get_run(connection, run.id)

    now = follow.patiently(watch, look)
    if hold and (now.continued_wave or 0) < number:
        say(
            f"run {run.id}: wave {number} done; {states.held_hint(run.id, number)}"
            f" starts wave {number + 1}"
        )
        if leave_at_hold:
            return None

    def again() -> runs.Run:
        with db.connect(engine) as connection:
            return runs.get_run(connection, run.id)

    while True:
        if now.cancelled_at is not None:
            return False
        continued = (now.continued_wave or 0) >= number
        if continued or (time.monotonic() >= pause_until and not hold):
            return True
        if watch.expired():
            raise follow.StoppedFollowing(
                f"--timeout reached between waves {number} and {number + 1} of run {run.id}:"
                f" `tenantfleet resume {run.id}` goes on"
            )
        time.sleep(watch.poll_interval)
        now = follow.patiently(watch, again)


def wait_for_no_active_run(manager: MigrationManager, say: Say, watch: follow.Watch) -> None:
    """Wait until no run is active, rechecking staleness on every look; ``StoppedFollowing``
    at the watch's timeout."""
    said: set[int] = set()
    while True:
        with db.begin(manager.engine) as connection:
            active = guard.active_run(connection, manager.settings.stale_run_after)
        if active is None:
            return
        if active.run.id not in said:
            said.add(active.run.id)
            say(f"waiting for run {active.run.id} to finish")
        if watch.expired():
            raise follow.StoppedFollowing(
                f"--timeout reached while waiting for run {active.run.id} to finish"
            )
        time.sleep(max(manager.settings.poll_interval, 0.5))


def retry(
    manager: MigrationManager,
    run_id: int,
    tenants: Sequence[str] = (),
    *,
    wait_for_active: bool = False,
    say: Say = _quiet,
    watch: follow.Watch | None = None,
) -> int | None:
    """A new run, linked to ``run_id``, for its tenants that failed, were skipped or never
    finished (narrowed to ``tenants`` if given); None when there is nothing to retry."""
    for name in tenants:
        validate_schema_name(name)
    with db.connect(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        candidates = [t.schema_name for t in runs.tenants_of(connection, run_id, states.RETRYABLE)]
    if tenants:
        strangers = [t for t in tenants if t not in candidates]
        if strangers:
            raise UsageError(
                f"not failed, skipped or unfinished in run {run_id}: {shorten(strangers)}"
            )
        candidates = [c for c in candidates if c in tenants]
    if not candidates:
        return None
    options = MigrateOptions(
        revision=run.target_revision,
        include=candidates,
        max_failures=run.options.get("max_failures"),
        wait_for_active=wait_for_active,
        parent_run_id=run_id,
        allow=run.options.get("allow", []),
    )
    return start(manager, options, say, watch)


def resume(
    manager: MigrationManager,
    run_id: int,
    say: Say = _quiet,
    watch: follow.Watch | None = None,
) -> int:
    """Send again the pending tenants of an open run whose schema lock nobody holds; how many
    were sent. A closed run has nothing to resume (0); a held one is refused (``continue``
    sends its next wave)."""
    return _resend(manager, run_id, say, watch or follow.Watch(), "resume")


def _resend(
    manager: MigrationManager, run_id: int, say: Say, watch: follow.Watch, command: str
) -> int:
    """``resume`` or (``command`` "continue") the producer's part of ``continue`` when the
    run's own producer is gone: send its pending tenants nobody holds, then its next waves."""
    with db.begin(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        if runs.finalize(connection, run_id) is not None:
            return 0
        refused = states.refusal(command, run.status, run_id, run.wave)
        if refused is not None:
            raise UsageError(refused)
        pending = runs.tenants_of(connection, run_id, runs.PENDING)
        busy = locks.held(connection, [t.label for t in pending])
    check_broker(app())
    with db.connect(manager.engine) as holder:
        if not locks.hold(holder, locks.dispatching(run.uid)):
            raise RunActive(f"run {run_id} is being sent by its producer ({run.producer})")
        idle = [t.schema_name for t in pending if t.label not in busy]
        return _dispatch(manager, run_id, idle, say, watch, leave_at_hold=True)


@dataclass(frozen=True)
class Rollback:
    """A run that brings the tenants another run upgraded back where each came from."""

    run_id: int
    """The run rolled back."""
    targets: dict[str, str]
    """Each tenant's revision before that run (``base``: it had none)."""


def rollback(
    manager: MigrationManager,
    run_id: int,
    options: MigrateOptions,
    say: Say = _quiet,
    watch: follow.Watch | None = None,
) -> int:
    """A new run, linked to ``run_id``, that downgrades every tenant ``run_id`` upgraded to the
    revision it came from: one transaction per tenant, with the same locks, retries, records,
    waves and failure budget as ``migrate``. Refused, before anything changes, when a revision
    to undo has no ``downgrade()``; a tenant that has moved since (or whose database cannot be
    reached) is recorded ``skipped``, not touched. The new run's id."""
    validate(options)
    with db.connect(manager.engine) as connection:
        manager.require_public(connection)
        run = runs.get_run(connection, run_id)
        done = runs.tenants_of(connection, run_id, ["succeeded"])
    if run.finished_at is None:
        raise UsageError(f"run {run_id} is still open: let it finish, or cancel it, first")
    if run.options.get("rollback_of"):
        raise UsageError(f"run {run_id} is itself a rollback: migrate forward again instead")
    if not done:
        raise UsageError(f"run {run_id} upgraded no tenant: nothing to roll back")
    _refuse_without_downgrades(run_id, {(t.from_revision, t.to_revision) for t in done})
    read = databases.read_versions(
        manager.engine_for, [Placed(t.schema_name, t.database) for t in done]
    )
    behind: list[tuple[str, str | None]] = []
    moved: list[tuple[str, str | None, str, str]] = []
    for tenant in done:
        schema = tenant.schema_name
        now = read.found.get(schema, tenant.to_revision)
        if tenant.database in read.unreachable:
            where = databases.shown(tenant.database)
            reason = f"database {where} could not be reached: not touched"
            moved.append((schema, None, "DatabaseUnreachable", reason))
        elif schema not in read.found or now != tenant.to_revision:
            found = "gone" if schema not in read.found else f"at {now or 'base'}"
            reason = (
                f"{found} now, not at {tenant.to_revision} where run {run_id} left it: not touched"
            )
            moved.append((schema, now, "MovedSince", reason))
        else:
            behind.append((schema, now))
    targets = {t.schema_name: t.from_revision or alembic_runtime.BASE for t in done}
    common = sorted(set(targets.values()))
    chosen = Plan(
        common[0] if len(common) == 1 else "(each its own)",
        behind,
        not_migratable=moved,
        placement={t.schema_name: t.database for t in done if t.database is not None},
    )
    rolled = dataclasses.replace(options, parent_run_id=run_id)
    return _launch(manager, chosen, rolled, say, watch or follow.Watch(), Rollback(run_id, targets))


def _refuse_without_downgrades(run_id: int, spans: set[tuple[str | None, str]]) -> None:
    """``UsageError`` naming the revisions to undo whose ``downgrade()`` is missing or empty."""
    script = alembic_runtime.tenant_script()
    lacking: set[str] = set()
    for start, end in spans:
        try:
            span = lint.pending_revisions(script, [start], end)
        except (RevisionError, CommandError):
            raise UsageError(
                f"run {run_id} cannot be rolled back: it recorded a move from"
                f" {start or 'base'} to {end}, which is not an upgrade; nothing was changed"
            ) from None
        for rev in span:
            if lint.downgrade_findings(rev):
                lacking.add(rev.revision)
    if lacking:
        raise UsageError(
            f"run {run_id} cannot be rolled back: no downgrade() in {shorten(sorted(lacking))};"
            " nothing was changed"
        )


def continue_run(
    manager: MigrationManager, run_id: int, say: Say = _quiet, watch: follow.Watch | None = None
) -> int:
    """Let a run held between waves go on (``--wave-hold``); the wave it goes on after. Its
    producer sends the next wave; when that producer is gone, this command does, follows that
    wave (``watch``: its ``--timeout``) and leaves the run held at the next hold."""
    with db.begin(manager.engine) as connection:
        manager.require_public(connection)
        wave = runs.continue_run(connection, run_id)
    with contextlib.suppress(RunActive):  # its producer is alive: it sends the next wave
        _resend(manager, run_id, say, watch or follow.Watch(), "continue")
    return wave


def cancel(manager: MigrationManager, run_id: int, reason: str) -> tuple[int, runs.Run | None]:
    """Stop an open run: its tenants not started are recorded ``cancelled`` and never touched;
    those in flight finish, and the run closes (``cancelled``) when the last has. (how many were
    cancelled, the run if it closed at once)."""
    with db.begin(manager.engine) as connection:
        manager.require_public(connection)
        cancelled = runs.cancel(connection, run_id, reason)
        return cancelled, runs.finalize(connection, run_id)


def attempts(manager: MigrationManager, run_id: int, schema: str) -> list[dict[str, Any]]:
    """Every attempt at ``schema`` in the run (``UsageError`` if the run has no such tenant)."""
    validate_schema_name(schema)
    with db.connect(manager.engine) as connection:
        if schema not in runs.statuses(connection, run_id, [schema]):
            raise UsageError(f"run {run_id} has no tenant {schema}")
        return [dataclasses.asdict(a) for a in runs.attempts_of(connection, run_id, schema)]


def blocked(manager: MigrationManager, run_id: int) -> list[dict[str, Any]]:
    """The run's running tenants that wait for a lock right now, each with who holds it, read
    in the database each tenant lives in (one that cannot be reached is left out)."""
    with db.connect(manager.engine) as connection:
        running = runs.tenants_of(connection, run_id, ["running"])
    by_database: dict[str | None, list[str]] = {}
    for tenant in running:
        by_database.setdefault(tenant.database, []).append(tenant.schema_name)
    found: list[dict[str, Any]] = []
    for database, schemas in by_database.items():
        try:
            with db.connect(manager.engine_for(database)) as connection:
                waiting = locks.blocked(connection, schemas)
        except Exception as exc:
            if not db.is_unreachable(exc):
                raise
            continue
        found += [
            {
                "tenant": databases.label(database, b.schema),
                "database": databases.shown(database),
                **dataclasses.asdict(b),
            }
            for b in waiting
        ]
    return found


def resend_lost(manager: MigrationManager, run_id: int, quiet_for: float) -> int:
    """What the watchdog of ``--wait`` does when no tenant finished for ``quiet_for`` seconds:
    decide from the rows and the tenant locks which pending tenants have no live task, and
    send them again. A ``running`` or ``retrying`` tenant whose lock nobody holds and whose row
    has not moved lost its worker; ``queued`` and ``waiting`` tenants are lost when nothing of
    the run is being migrated at all (a waiting tenant is taken by whoever frees a slot of its
    database). A ``retrying`` tenant is lost only once its next attempt is overdue: a retry on
    its way is never sent a second time (that would start a second chain of attempts). A
    duplicate task of a live tenant does nothing, so doubt costs one round trip, never a second
    migration."""
    due = retries.longest_wait(manager.settings)
    with db.connect(manager.engine) as connection:
        run = runs.get_run(connection, run_id)
        quiet = {t.schema_name: t for t in runs.quiet_pending(connection, run_id, quiet_for, due)}
        pending = runs.tenants_of(connection, run_id, runs.PENDING)
        held = locks.held(connection, [t.label for t in pending])
    if run.dispatched_at is None:  # between waves: the later ones were never sent
        quiet = {s: t for s, t in quiet.items() if t.wave is None or t.wave <= (run.wave or 0)}
    waiting = ("queued", "waiting")
    lost = [t for t in quiet.values() if t.status not in waiting and t.label not in held]
    if not held:
        lost += [t for t in quiet.values() if t.status in waiting]
    tenants = [(t.label, t.from_revision, t.to_revision) for t in lost]
    enqueue(app(), queues_of(manager), run, tenants, run.options.get("max_failures"))
    return len(lost)


def dry_run_sql(schema: str, from_revision: str | None, target: str) -> str:
    """The SQL one tenant's upgrade would run (Alembic offline mode); nothing is touched. A
    revision that reads the database cannot be rendered: the SQL stops there, saying so."""
    try:
        return alembic_runtime.render_sql(schema, from_revision, target)
    except alembic_runtime.NotRendered as exc:
        return (
            f"{exc.partial}\n-- stopped: {exc}\n-- (a revision that reads the database"
            " cannot be rendered offline; the workers run it online)\n"
        )


def prepare_sending(settings: Settings) -> None:
    """Import what sending a run needs (Celery's app and canvas, the result backend's module,
    the broker's Kombu transport, 0.2-0.3 s) while the plan waits on PostgreSQL for the
    tenants' revisions, instead of between the plan and the first task. Modules only: the app,
    which may start the embedded Redis, is made later by ``app`` in the calling thread."""
    from celery.app.backends import by_url
    from kombu import Connection

    # a warm-up only: a bad URL or a missing transport is reported where the app is made
    with contextlib.suppress(Exception):
        for module in ("celery.app.base", "celery.canvas"):
            importlib.import_module(module)
        broker = settings.broker_url or "redis://"  # the embedded stack's broker is a Redis
        Connection(broker).get_transport_cls()
        by_url(settings.result_backend or broker)


def app() -> Any:
    """The Celery app, imported on first use (it reads the configuration)."""
    from tenantfleet.workers import app as celery_app

    return celery_app


def queues_of(manager: MigrationManager) -> Queues:
    """The broker queues of the manager's database."""
    with db.connect(manager.engine) as connection:
        return of_database(connection)


def check_broker(app: Any) -> None:
    """Fail fast, before anything is written, when the broker cannot be reached."""
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_CONNECT_TIMEOUT_S)
    except Exception as exc:
        raise ConnectionFailed(f"cannot connect to the broker: {exc}") from None


PUBLISH_BATCH = 100  # small enough that workers start on the first messages at once


def enqueue(
    app: Any,
    queues: Queues,
    run: runs.Run,
    tenants: Sequence[tuple[str, str | None, str]],
    max_failures: int | None = None,
) -> None:
    """``chord(group(one task per tenant), finalize_run)``, ``finalize_run_on_error`` on error,
    on the queues of the run's control database; ``tenants`` are (label, the revision the plan
    saw it at, target revision). A
    task names its tenant by its label (``KEY/schema`` in another database): what Flower and the
    worker log show."""
    if not tenants:
        return
    from tenantfleet.tasks.finalize import finalize_run, finalize_run_on_error
    from tenantfleet.tasks.tenant import migrate_tenant
    from tenantfleet.workers.sending import send_chord

    extra: dict[str, Any] = {"run_uid": run.uid}
    if max_failures:
        extra["max_failures"] = max_failures
    trace = tracing.carrier()
    if trace:
        extra["trace"] = trace
    callback = finalize_run.s(run_id=run.id).set(queue=queues.control)
    callback.link_error(finalize_run_on_error.s(run_id=run.id).set(queue=queues.control))
    # No time limits in the message: the worker's TENANTFLEET_TASK_TIME_LIMIT decides (Celery
    # would otherwise send the producer's setting with every task, and it would win).
    send_chord(
        app,
        migrate_tenant,
        [
            (run.id, label, target, runs.planned_in_message(planned))
            for label, planned, target in tenants
        ],
        extra,
        {"queue": queues.tenants, "time_limit": None, "soft_time_limit": None},
        callback,
        PUBLISH_BATCH,
    )


def report(engine: Engine, run_id: int, *, slowest: int = 0) -> dict[str, Any]:
    """The run as ``--json`` prints it (the same shape for migrate, retry, resume and status)."""
    with db.connect(engine) as connection:
        run = runs.get_run(connection, run_id)
        tally = runs.counts(connection, run_id)
        by_database = runs.counts_by_database(connection, run_id)
        by_wave = runs.counts_by_wave(connection, run_id)
        tenants = runs.tenants_of(connection, run_id)
        slow = runs.slowest(connection, run_id, slowest) if slowest else []
    result: dict[str, Any] = {
        "run_id": run.id,
        "parent_run_id": run.parent_run_id,
        "status": run.status,
        "target_revision": run.target_revision,
        "counts": {**counts_dict(tally), "up_to_date": run.up_to_date},
        "databases": {
            databases.shown(database): counts_dict(found) for database, found in by_database.items()
        },
        "waves": [{"wave": n, **counts_dict(found)} for n, found in by_wave.items()],
        "wave": run.wave,
        "rollback_of": run.options.get("rollback_of"),
        "tenants": [_tenant_dict(t) for t in tenants],
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
    if slowest:
        result["slowest"] = [_tenant_dict(t) for t in slow]
    return result


def counts_dict(tally: runs.Counts) -> dict[str, int]:
    return {
        "total": tally.total,
        "succeeded": tally.succeeded,
        "failed": tally.failed,
        "skipped": tally.skipped,
        "pending": tally.pending,
        "queued": tally.queued,
        "running": tally.running,
        "retrying": tally.retrying,
        "waiting": tally.waiting,
        "cancelled": tally.cancelled,
    }


def _tenant_dict(tenant: runs.RunTenant) -> dict[str, Any]:
    return {
        "schema": tenant.schema_name,
        "database": databases.shown(tenant.database),
        "tenant": tenant.label,
        "status": tenant.status,
        "from_revision": tenant.from_revision,
        "to_revision": tenant.to_revision,
        "error": f"{tenant.error_class}: {tenant.error_message}" if tenant.error_class else None,
        "attempts": tenant.attempts,
        "duration_ms": tenant.duration_ms,
        "worker": tenant.worker,
        "wave": tenant.wave,
        "reached_revision": tenant.reached_revision,
    }
