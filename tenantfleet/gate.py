"""The lint gate of a run: every revision some tenant of the plan would run, checked before
anything is recorded or sent (``LintRefused``, one line per blocking finding)."""

from collections.abc import Sequence

from tenantfleet import alembic_runtime, lint
from tenantfleet.databases import Placed
from tenantfleet.errors import LintRefused
from tenantfleet.manager import MigrationManager
from tenantfleet.planning import Plan


def lint_plan(manager: MigrationManager, chosen: Plan, allow: Sequence[str] = ()) -> lint.Findings:
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
            " by name: --allow RULE, or lint_allow in the config)\n" + "\n".join(lines),
            {"findings": [f.__dict__ for f in blocking]},
        )
