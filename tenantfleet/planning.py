"""The plan of a run: which tenants are selected, where each is, which are behind the target
and in what order and waves they go; nothing is written here.

``validate`` checks a request before anything is touched; ``plan`` reads every schema's
revision (one pass per database, every database at once); ``choose_waves`` cuts the behind
tenants into waves (``--wave``, ``--canary``).

The Alembic layer (``alembic_runtime``, ``lint``, ``gate``) is imported by the functions
that use it: importing this module loads no Alembic, which the read-only commands never need
(docs/ARCHITECTURE.md).
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from tenantfleet import databases, db, registry, tenants
from tenantfleet.config import Settings
from tenantfleet.databases import Placed
from tenantfleet.errors import TenantStateError, UsageError
from tenantfleet.manager import MigrationManager
from tenantfleet.names import shorten, validate_schema_name

NAME_MAX = 63
"""PostgreSQL's longest name: a refused name longer than that is recorded cut to it."""


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
    ahead: list[str] = field(default_factory=list)
    """Selected tenants past the target (a later revision): left alone, never taken down."""
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
    check(options)
    return resolve_target(options.revision)


def check(options: MigrateOptions) -> None:
    """``validate`` but for the revision, which needs the tenant scripts (Alembic)."""
    for name in [*options.include, *options.canary_tenants]:  # any name may be excluded
        validate_schema_name(name)
    if options.canary < 0 or (options.max_failures is not None and options.max_failures < 1):
        raise UsageError("--canary must be at least 0 and --max-failures at least 1")
    for spec in options.waves:
        _wave_size(spec, 100)
    if options.waves and (options.canary or options.canary_tenants):
        raise UsageError("--canary is the first of two waves: give --wave alone")
    if (options.wave_pause or options.wave_hold) and not (options.waves or options.canary):
        raise UsageError("--wave-pause and --wave-hold go with --wave")


def resolve_target(revision: str) -> str:
    """The full id of a run's target ``revision``; ``UsageError`` for ``base``."""
    from tenantfleet import alembic_runtime

    target = alembic_runtime.resolve_revision(alembic_runtime.tenant_script(), revision)
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


def plan(
    manager: MigrationManager,
    options: MigrateOptions,
    *,
    dry_run: bool = False,
    warm_up: Callable[[Settings], None] | None = None,
) -> Plan:
    """Select the active tenants and read every schema's revision: one pass per database, every
    database at once. While the servers read, the target is resolved (Alembic's import and the
    tenant scripts, 0.2-0.3 s) and, when tenants are likely to be sent, ``warm_up`` runs; a
    revision that cannot be resolved is refused at once (``databases.in_each`` cancels the
    reads)."""
    check(options)
    with db.connect(manager.engine) as connection:
        # a run writes the public tables; a dry run reads the registry's columns, if at all
        if not dry_run or manager.settings.tenants == "registry":
            manager.require_public(connection)
        placed, refused = tenants.split_refused(select(manager, connection, options))
    resolved: list[str] = []

    def meanwhile() -> None:
        resolved.append(resolve_target(options.revision))
        if warm_up is not None and not dry_run and _likely(manager, resolved[0]):
            warm_up(manager.settings)

    read = databases.read_versions(manager.engine_for, placed, meanwhile)
    from tenantfleet import alembic_runtime  # loaded by resolve_target, under the reads

    target = resolved[0]
    script = alembic_runtime.tenant_script()
    versions = read.found
    known = {r.revision for r in script.walk_revisions()} | {None}
    not_migratable: list[tuple[str, str | None, str, str]] = [
        (t.schema[:NAME_MAX], None, "InvalidSchemaName", f"{why}; not touched")
        for t, why in refused
    ]
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
    ahead = [s for s in at_or_past if versions[s] != target]
    placement = {
        t.schema[:NAME_MAX]: t.database for t in [*placed, *(r for r, _ in refused)] if t.database
    }
    behind_schemas = {s for s, _ in behind}
    sizes = (
        _sizes(manager, [t for t in placed if t.schema in behind_schemas])
        if manager.settings.schedule_by_size and len(behind) > 1 and not dry_run
        else {}
    )
    up_to_date = [s for s in at_or_past if versions[s] == target]
    return Plan(target, behind, up_to_date, not_migratable, placement, sizes, ahead)


def _likely(manager: MigrationManager, target: str) -> bool:
    """Whether tenants are likely to be sent: unless the registry says every active tenant is
    at ``target`` already."""
    if manager.settings.tenants != "registry":
        return True
    with db.connect(manager.engine) as connection:
        return registry.any_active_not_at(connection, target)


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


def dry_run_sql(schema: str, from_revision: str | None, target: str) -> str:
    """The SQL one tenant's upgrade would run (Alembic offline mode); nothing is touched. A
    revision that reads the database cannot be rendered: the SQL stops there, saying so."""
    from tenantfleet import alembic_runtime

    try:
        return alembic_runtime.render_sql(schema, from_revision, target)
    except alembic_runtime.NotRendered as exc:
        return (
            f"{exc.partial}\n-- stopped: {exc}\n-- (a revision that reads the database"
            " cannot be rendered offline; the workers run it online)\n"
        )


def replay_paths(chosen: Plan) -> dict[str, list[str]]:
    """Which pending revisions the workers replay (SQL rendered once per process) and which
    they run online, as ``alembic upgrade`` does (``alembic_runtime.replays``; rendered here as
    the workers will): ``{"replayed": [...], "online": [...]}``. A revision pending from
    several revisions is listed under each path its spans take."""
    from tenantfleet import alembic_runtime, lint

    script = alembic_runtime.tenant_script()
    paths: dict[str, set[str]] = {"replayed": set(), "online": set()}
    for start in sorted({rev or "" for _, rev in chosen.behind}):
        frm = start or None
        path = "replayed" if alembic_runtime.replays(frm, chosen.target) else "online"
        for rev in lint.pending_revisions(script, [frm], chosen.target):
            paths[path].add(rev.revision)
    return {path: sorted(found) for path, found in paths.items()}
