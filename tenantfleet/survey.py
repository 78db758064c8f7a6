"""Where the whole fleet stands: how many tenants at each revision, who is behind, who drifted."""

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from tenantfleet import alembic_runtime, databases, db, registry, tenants
from tenantfleet.config import Settings
from tenantfleet.databases import EngineFor


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


def survey(connection: Connection, settings: Settings, engine_for: EngineFor) -> Survey:
    """Read every schema of the tenant source's revision, one pass per database and every
    database at once, and sort the fleet by it, as a whole and per database."""
    script = alembic_runtime.tenant_script()
    head = script.get_current_head()
    known = {r.revision for r in script.walk_revisions()}

    def elsewhere(database: str) -> list[str]:
        with db.connect(engine_for(database)) as other:
            return tenants.discover(other)

    active, refused = tenants.split_refused(
        tenants.select(connection, settings, elsewhere=elsewhere)
    )
    inactive: dict[str, str | None] = {}
    if settings.tenants == "registry":
        inactive = {
            t.schema_name: t.deactivated_reason
            for t in registry.list_tenants(connection)
            if not t.is_active
        }
    read = databases.read_versions(engine_for, active)
    present = read.found
    missing = [
        t.schema for t in active if t.schema not in present and t.database not in read.unreachable
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
            unreachable=read.unreachable.get(database),
        )
    return Survey(
        head=head,
        tenants=len(active),
        inactive=len(inactive) if settings.tenants == "registry" else None,
        by_revision=dict(sorted(counted.items())),
        behind=behind,
        unknown=dict(sorted(unknown.items())),
        missing=missing,
        deactivated=inactive,
        databases=per_database,
        refused={t.schema: why for t, why in refused},
    )
