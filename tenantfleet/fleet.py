"""Where the whole fleet stands: how many tenants at each revision, who is behind, who drifted."""

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from tenantfleet import alembic_runtime, registry, tenants
from tenantfleet.config import Settings


@dataclass(frozen=True)
class FleetReport:
    head: str | None
    tenants: int
    inactive: int
    by_revision: dict[str, int]
    behind: list[str] = field(default_factory=list)
    unknown: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    deactivated: dict[str, str | None] = field(default_factory=dict)
    """Inactive tenants and why (``tenant deactivate --reason``)."""


def survey(connection: Connection, settings: Settings) -> FleetReport:
    """Read every schema of the tenant source's revision in one pass and sort the fleet by it."""
    script = alembic_runtime.tenant_script()
    head = script.get_current_head()
    known = {r.revision for r in script.walk_revisions()}
    active = tenants.select(connection, settings)
    inactive: dict[str, str | None] = {}
    if settings.tenants == "registry":
        inactive = {
            t.schema_name: t.deactivated_reason
            for t in registry.list_tenants(connection)
            if not t.is_active
        }
    versions = alembic_runtime.read_versions(connection, active)
    missing = [s for s in active if s not in versions]
    present = {s: v for s, v in versions.items()}
    unknown = {s: str(v) for s, v in present.items() if v is not None and v not in known}
    behind = sorted(s for s, v in present.items() if v != head and s not in unknown)
    counted = Counter(v or "(none)" for v in present.values())
    return FleetReport(
        head=head,
        tenants=len(active),
        inactive=len(inactive),
        by_revision=dict(sorted(counted.items())),
        behind=behind,
        unknown=dict(sorted(unknown.items())),
        missing=missing,
        deactivated=inactive,
    )
