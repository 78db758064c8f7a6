"""Where the whole fleet stands: how many tenants at each revision, who is behind, who drifted.

The Alembic layer (``alembic_runtime``, ``lint``, ``gate``) is imported by the functions
that use it: importing this module loads no Alembic, which the read-only commands never need
(docs/ARCHITECTURE.md).
"""

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from tenantfleet import databases, db, registry, tenants
from tenantfleet.config import Settings
from tenantfleet.databases import EngineFor, Placed


@dataclass(frozen=True)
class DatabaseSurvey:
    """One database's share of the fleet: its revision histogram and its drift."""

    tenants: int
    by_revision: dict[str, int]
    behind: int
    unknown: int
    missing: int
    unreachable: str | None = None
    """Why it could not be read (its tenants then count as neither behind nor at head)."""


@dataclass(frozen=True)
class Survey:
    head: str | None
    tenants: int
    inactive: int | None
    """Deactivated tenants (None: the source, a query or discovery, does not say)."""
    by_revision: dict[str, int]
    behind: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    deactivated: dict[str, str | None] = field(default_factory=dict)
    """Inactive tenants and why (``tenant deactivate --reason``)."""
    databases: dict[str, DatabaseSurvey] = field(default_factory=dict)
    """By database key (``default``: the control database)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Names the tenant source lists that tenantfleet will not touch, and why."""
    read_schemas: bool = True
    """Every schema's version table was read; False: the registry's record was used, and only
    the schemas it has no revision for were read (``RECORDED``)."""
    unrecorded: dict[str, dict[str, str | None]] = field(default_factory=dict)
    """With every schema read: schema -> ``{"recorded": ..., "found": ...}`` where its version
    table says another revision than the registry records (changed around tenantfleet)."""


RECORDED = "registry"
"""The tenant source whose revisions the survey takes from the record by default: the
registry's ``current_revision``, written with every schema change tenantfleet makes, in the
same transaction. Reading 100,000 version tables takes the server 10-17 CPU-seconds (each
table's catalog entries loaded on first use); the record, one query."""


def survey(
    connection: Connection, settings: Settings, engine_for: EngineFor, verify: bool = False
) -> Survey:
    """Where the fleet stands, as a whole and per database. With the registry as the tenant
    source, from the revisions it records (the schemas without one read, every schema's
    existence checked); with ``verify``, or another source, from every schema's version
    table, one pass per database and every database at once."""
    from tenantfleet import alembic_runtime

    script = alembic_runtime.tenant_script()
    head = script.get_current_head()
    known = {r.revision for r in script.walk_revisions()}

    def elsewhere(database: str) -> list[str]:
        with db.connect(engine_for(database)) as other:
            return tenants.discover(other)

    active, refused = tenants.split_refused(
        tenants.select(connection, settings, elsewhere=elsewhere)
    )
    registered = settings.tenants == RECORDED
    recorded = registry.recorded_revisions(connection) if registered else {}
    inactive = registry.deactivated(connection) if registered else {}
    present, unreachable = _revisions(engine_for, active, recorded, read_all=verify)
    unrecorded = (
        {
            s: {"recorded": recorded[s], "found": v}
            for s, v in present.items()
            if recorded.get(s) is not None and _revision(recorded[s]) != v
        }
        if verify
        else {}
    )
    missing = [
        t.schema for t in active if t.schema not in present and t.database not in unreachable
    ]
    unknown = {s: str(v) for s, v in present.items() if v is not None and v not in known}
    behind = sorted(s for s, v in present.items() if v != head and s not in unknown)
    counted = Counter(v or "(none)" for v in present.values())
    per_database: dict[str, DatabaseSurvey] = {}
    behind_set, missing_set = set(behind), set(missing)
    for database in sorted({t.database for t in active}, key=lambda d: d or ""):
        mine = [t.schema for t in active if t.database == database]
        revisions = Counter(present[s] or "(none)" for s in mine if s in present)
        per_database[databases.shown(database)] = DatabaseSurvey(
            tenants=len(mine),
            by_revision=dict(sorted(revisions.items())),
            behind=sum(s in behind_set for s in mine),
            unknown=sum(s in unknown for s in mine),
            missing=sum(s in missing_set for s in mine),
            unreachable=unreachable.get(database),
        )
    return Survey(
        head=head,
        tenants=len(active),
        inactive=len(inactive) if registered else None,
        by_revision=dict(sorted(counted.items())),
        behind=behind,
        unknown=dict(sorted(unknown.items())),
        missing=missing,
        deactivated=inactive,
        databases=per_database,
        refused={t.schema: why for t, why in refused},
        read_schemas=verify or all(recorded.get(t.schema) is None for t in active),
        unrecorded=dict(sorted(unrecorded.items())),
    )


def _revision(recorded: str | None) -> str | None:
    """A recorded revision as a version table shows it: ``base`` is no version row."""
    return None if recorded == "base" else recorded


def _revisions(
    engine_for: EngineFor,
    active: list[Placed],
    recorded: dict[str, str | None],
    read_all: bool,
) -> tuple[dict[str, str | None], dict[str | None, str]]:
    """(schema -> revision for every active tenant whose schema exists, the databases that could
    not be reached): read from each version table when ``read_all`` or the registry records
    none, else the recorded revision of each schema that exists."""
    if read_all or not recorded:
        read = databases.read_versions(engine_for, active)
        return read.found, read.unreachable
    unread = [t for t in active if recorded.get(t.schema) is None]
    read = databases.read_versions(engine_for, unread)
    on_record = [t for t in active if recorded.get(t.schema) is not None]
    exists, unreachable = databases.existing(engine_for, on_record)
    present = {t.schema: _revision(recorded[t.schema]) for t in on_record if t.schema in exists}
    return {**present, **read.found}, {**read.unreachable, **unreachable}
