"""The Alembic layer: configs for both environments, the tenant run path, revision lookups.

``migrations/*/alembic/env.py`` and the workers both go through here, so a tenant is confined to
its schema, locked and configured the same way whether it is migrated by ``alembic -c ...``, by
``MigrationManager`` or by a Celery task. The fast path (``migrate_tenant``) reuses one parsed
``ScriptDirectory`` per process and skips env.py, which ``alembic.command`` re-runs on every call.
"""

import argparse
import io
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from tenantfleet import backfill, db, ledger, locks, models, replay, sql, versions
from tenantfleet import config as tf_config
from tenantfleet.backfill import Backfill
from tenantfleet.errors import (
    InvalidSchemaName,
    TenantStateError,
    UnknownRevision,
    UnsupportedRevision,
)
from tenantfleet.names import validate_schema_name
from tenantfleet.versions import (
    BASE,
    LEGACY_PUBLIC_VERSION_TABLE,
    PUBLIC_INI,
    PUBLIC_VERSION_TABLE,
    TENANT_INI,
    VERSION_TABLE,
    Step,
)

CONFINE = sql.query("confine")
"""Confine the transaction to a schema and lock it (binds: ``confine_params``)."""
CONFINE_SQL = sa.text(f"{CONFINE}; SELECT to_regclass('{VERSION_TABLE}') IS NOT NULL")
READ_VERSIONS = f"SELECT version_num FROM {VERSION_TABLE}"


def public_config(connection: Connection | None = None) -> Config:
    cfg = Config(str(PUBLIC_INI))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade_public(connection: Connection, revision: str) -> None:
    """Upgrade tenantfleet's public schema to ``revision`` on ``connection``."""
    resolve_revision(public_script(), revision)
    command.upgrade(public_config(connection), revision)


def tenant_ini() -> Path:
    """The tenant environment's ``alembic.ini``: the configured one, or the seed's."""
    return tf_config.load_settings().tenant_alembic or TENANT_INI


def tenant_config(schema: str, connection: Connection | None = None) -> Config:
    cfg = as_one_tenant(Config(str(tenant_ini())), validate_schema_name(schema))
    cfg.attributes["connection"] = connection
    return cfg


def as_one_tenant(cfg: Config, schema: str) -> Config:
    """``cfg`` as ``alembic -c ... -x schema=S`` hands it to env.py and the revisions: the schema
    as the one ``-x`` argument (``context.get_x_argument(as_dictionary=True)["schema"]``, the
    usual multi-tenant idiom) and as ``cfg.attributes["schema"]``. A worker, the offline
    rendering and a tenant command show a revision exactly what plain Alembic shows it."""
    cfg.attributes["schema"] = schema
    cfg.attributes["configure_logger"] = False  # tenantfleet's own process keeps its logging
    cfg.cmd_opts = argparse.Namespace(x=[f"schema={schema}"])
    return cfg


@cache
def tenant_script() -> ScriptDirectory:
    """The tenant revisions, parsed once per process."""
    return ScriptDirectory.from_config(Config(str(tenant_ini())))


def knows_revision(revision: str) -> bool:
    """Whether the tenant scripts define ``revision``, reading them again from disk once if
    not (a new revision deployed to this host after the process parsed them)."""
    if revision == BASE:
        return True
    for attempt in range(2):
        try:
            if tenant_script().get_revision(revision) is not None:
                return True
        except (CommandError, RevisionError):
            pass
        if attempt == 0:
            forget_scripts()
    return False


def forget_scripts() -> None:
    """Drop what this process parsed or rendered of the tenant revisions: read them again."""
    tenant_script.cache_clear()
    replayable_sql.cache_clear()
    _process_tenant_config.cache_clear()
    commits_part_way.cache_clear()
    replayable_steps.cache_clear()
    small_span_sql.cache_clear()
    _source.cache_clear()


@cache
def public_script() -> ScriptDirectory:
    return ScriptDirectory.from_config(Config(str(PUBLIC_INI)))


def resolve_revision(script: ScriptDirectory, revision: str) -> str | None:
    """The full id of ``revision`` (``head``, ``base``, an id or a unique prefix)."""
    if revision == "base":
        return None
    try:
        found = script.get_revision(revision)
    except CommandError:
        found = None
    if found is None:
        known = ", ".join(r.revision for r in script.walk_revisions()) or "none"
        raise UnknownRevision(f"unknown revision {revision!r} (known: {known}, head, base)")
    return found.revision


def revisions_below(script: ScriptDirectory, target: str) -> frozenset[str | None]:
    """Every state a tenant can be in that an upgrade to ``target`` moves forward (base too)."""
    below: set[str | None] = {None}
    below.update(r.revision for r in script.iterate_revisions(target, "base"))
    below.discard(target)
    return frozenset(below)


def goes_down(current: str | None, destination: str | None) -> bool:
    """Whether moving from ``current`` to ``destination`` (None or ``base``: before the first
    revision) is a downgrade: the destination lies strictly below."""
    if current is None or current == destination:
        return False
    if destination in (None, BASE):
        return True
    try:
        return destination in revisions_below(tenant_script(), current)
    except (CommandError, RevisionError):  # an unknown current: Alembic online says so
        return False


AUTOCOMMIT_MARKER = "autocommit_block"


def _span(current: str | None, target: str) -> tuple[list[Any], str | None] | None:
    """The revisions between ``current`` and ``target`` (either way), and the lower end; None
    for a branched or unknown ``current`` (Alembic online decides)."""
    if goes_down(current, target):
        upper, lower = current, None if target == BASE else target
    else:
        upper, lower = target, current
    try:
        return list(tenant_script().iterate_revisions(upper, lower or "base")), lower
    except RevisionError:
        return None


@cache
def commits_part_way(current: str | None, target: str) -> bool:
    """Whether a revision between ``current`` and ``target`` (either way) uses
    ``autocommit_block()``: its span cannot be the tenant's one transaction."""
    if current == target:
        return False
    found = _span(current, target)
    if found is None:
        return False
    span, lower = found
    return any(r.revision != lower and AUTOCOMMIT_MARKER in _source(r.path) for r in span)


def _upgrade_revisions(current: str | None, target: str) -> list[Any]:
    """The revisions an upgrade from ``current`` to ``target`` runs, oldest first (none for a
    downgrade, or a branched or unknown ``current``)."""
    if current == target or goes_down(current, target):
        return []
    found = _span(current, target)
    if found is None:
        return []
    span, lower = found
    return [r for r in reversed(span) if r.revision != lower]


@cache
def span_backfills(current: str | None, target: str) -> tuple[tuple[str, Backfill], ...]:
    """(revision, backfill) for every backfill an upgrade from ``current`` to ``target``
    declares (``tenantfleet.backfill``), oldest revision first; none for a downgrade."""
    return tuple(
        (r.revision, b)
        for r in _upgrade_revisions(current, target)
        for b in backfill.declared(r.module)
    )


@cache
def span_requires(current: str | None, target: str) -> tuple[str, ...]:
    """The backfills the revisions of an upgrade from ``current`` to ``target`` need done first
    (``requires_backfills``). One the span itself declares counts too: its batches run after
    the span, so the revision that needs it cannot be in the same upgrade."""
    revisions = _upgrade_revisions(current, target)
    return tuple(dict.fromkeys(n for r in revisions for n in backfill.required(r.module)))


def backfill_triggers_sql(current: str | None, target: str) -> str:
    """The triggers of the span's backfills, for the DDL transaction ("" when none)."""
    return ";\n".join(b.trigger_sql() for _, b in span_backfills(current, target))


def backfill_entries_sql(current: str | None, target: str) -> list[str]:
    """For the DDL transaction of a tenant of the control database: each of the span's
    backfills entered in the ledger (``ledger.entry_with_ddl_sql``: a small table filled and
    its entry done, a big one's entry pending; binds ``run_id`` and ``schema``)."""
    return [
        ledger.entry_with_ddl_sql(revision, bf) for revision, bf in span_backfills(current, target)
    ]


@cache
def on_the_way(current: str | None, target: str) -> frozenset[str | None]:
    """Every revision a span from ``current`` to ``target`` that commits part way may have
    stopped at, both ends included (where an earlier attempt of the same span left it)."""
    found = _span(current, target) if current != target else None
    revisions: set[str | None] = {current, None if target == BASE else target}
    if found is not None:
        revisions.update(r.revision for r in found[0])
    return frozenset(revisions)


@cache
def _source(path: str) -> str:
    with open(path) as module:
        return module.read()


def pending(script: ScriptDirectory, current: str | None, target: str | None) -> list[str]:
    """Revision ids between ``current`` and ``target``, oldest first."""
    if target is None or current == target:
        return []
    try:
        revs = list(script.iterate_revisions(target, current or "base"))
    except RevisionError:
        raise TenantStateError(
            f"revision {current!r} is unknown to the migration scripts"
        ) from None
    return [r.revision for r in reversed(revs)]


def tenant_context_options(schema: str | None = None) -> dict[str, Any]:
    """``context.configure`` options of every tenant environment (env.py and the fast path);
    an env.py adds its own ``target_metadata``.

    With ``schema`` (the workers' online runs, on a connection confined to it), the version
    table is named in that schema: without one, Alembic's check that the table exists asks
    ``pg_table_is_visible()`` of every table of that name in the database: 0.2-0.35 s a tenant
    at 100,000 tenants (bench/scale.py). Offline renders stay unqualified (one rendering serves
    every tenant), and so does env.py (autogenerate leaves out the version table only when it
    is in the schema it compares).
    """
    options: dict[str, Any] = {
        "version_table": VERSION_TABLE,
        "transaction_per_migration": False,
        "compare_type": True,
    }
    if schema is not None:
        options["version_table_schema"] = schema
    return options


def public_context_options() -> dict[str, Any]:
    """``context.configure`` options of tenantfleet's own tables: its own version table, and
    autogenerate compares only its own tables (an app's public tables are not its business)."""
    return {
        "target_metadata": models.metadata,
        "version_table": PUBLIC_VERSION_TABLE,
        "transaction_per_migration": False,
        "compare_type": True,
        "include_name": _only_tenantfleet_tables,
    }


def _only_tenantfleet_tables(name: str | None, type_: str, _parents: Any) -> bool:
    return type_ != "table" or name in models.metadata.tables


def adopt_legacy_public_version(connection: Connection) -> None:
    """Move tenantfleet's revision out of ``public.alembic_version`` (where versions before
    0.2 kept it, sharing it with any app history) into ``public.tenantfleet_version``."""
    legacy = f"public.{LEGACY_PUBLIC_VERSION_TABLE}"
    has = versions.has_relation
    if has(connection, f"public.{PUBLIC_VERSION_TABLE}") or not has(connection, legacy):
        return
    ours = set(versions.public_history())
    rows = connection.execute(sa.text(f"SELECT version_num FROM {legacy}")).scalars()
    found = list(rows)
    mine = [r for r in found if r in ours]
    if not mine:
        return
    connection.execute(
        sa.text(
            f"CREATE TABLE public.{PUBLIC_VERSION_TABLE} (version_num VARCHAR(32) NOT NULL,"
            f" CONSTRAINT {PUBLIC_VERSION_TABLE}_pkc PRIMARY KEY (version_num))"
        )
    )
    connection.execute(
        sa.text(f"INSERT INTO public.{PUBLIC_VERSION_TABLE} SELECT unnest(CAST(:m AS text[]))"),
        {"m": mine},
    )
    if len(mine) == len(found):
        connection.execute(sa.text(f"DROP TABLE {legacy}"))
    else:
        connection.execute(
            sa.text(f"DELETE FROM {legacy} WHERE version_num = ANY(:m)"), {"m": mine}
        )


def confine_to_schema(
    connection: Connection, schema: str, settings: tf_config.Settings | None = None
) -> bool:
    """Inside the current transaction: search_path = the schema alone, timeouts, per-schema lock.

    The advisory lock key is derived from the schema name, so different schemas migrate in
    parallel while two runs of the same schema (a duplicate delivery, a manual ``alembic``
    call) wait for each other, up to ``lock_timeout``. Returns whether the schema has a version
    table, read under the lock (it saves ``migrate_tenant`` a round trip).
    """
    return bool(connection.execute(CONFINE_SQL, confine_params(schema, settings)).scalar())


def confine_params(schema: str, settings: tf_config.Settings | None = None) -> dict[str, str]:
    settings = settings or tf_config.load_settings()
    return {
        "schema": validate_schema_name(schema),
        "lock_timeout": f"{int(settings.lock_timeout * 1000)}ms",
        "statement_timeout": f"{int(settings.statement_timeout * 1000)}ms",
    }


def lock_public(connection: Connection) -> None:
    """Serialise public-schema upgrades between racing producers."""
    connection.execute(sa.text("SELECT set_config('search_path', 'public', true)"))
    locks.lock_name(connection, locks.PUBLIC)


@contextmanager
def env_connection(cfg: Config, schema: str | None = None) -> Iterator[Connection]:
    """The connection env.py runs on: the caller's (``attributes``) or a fresh one.

    A fresh engine for a tenant starts its sessions with the tenant schema as search_path, so
    that autogenerate reflects that schema as the default one.
    """
    given = cfg.attributes.get("connection")
    if given is not None:
        yield given
        return
    url = cfg.get_main_option("sqlalchemy.url") or tf_config.database_url(tf_config.load_settings())
    connect_args = {"options": f"-c search_path={schema}"} if schema else {}
    engine = db.make_engine(url, poolclass=NullPool, connect_args=connect_args)
    try:
        with db.connect(engine) as connection:
            yield connection
    finally:
        engine.dispose()


def schema_from_config(cfg: Config) -> str:
    """The target tenant schema: ``config.attributes['schema']`` or ``-x schema=NAME``."""
    schema = cfg.attributes.get("schema")
    if schema is None:
        x_args = dict(arg.split("=", 1) for arg in (cfg.cmd_opts.x or []) if "=" in arg)  # type: ignore[union-attr]
        schema = x_args.get("schema")
    if not schema:
        raise CommandError("the tenant environment needs a schema: pass -x schema=NAME")
    try:
        return validate_schema_name(schema)
    except InvalidSchemaName as exc:  # Alembic prints a CommandError as one clean line
        raise CommandError(str(exc)) from None


def migrate_tenant(
    connection: Connection,
    schema: str,
    destination: str | None,
    *,
    downgrade: bool = False,
    has_version_table: bool | None = None,
) -> Step:
    """Move one tenant to ``destination`` (an id, or None for base) inside the caller's transaction.

    The caller has begun a transaction and called ``confine_to_schema``; nothing is committed
    here, so the caller can record the outcome atomically with the schema change. Upgrades replay
    the span's SQL rendered once per process (``replayable_sql``) when they can, and otherwise run
    Alembic online, as ``alembic upgrade`` would.
    """
    if not downgrade and destination is not None:
        has_table, versions = version_rows(connection, has_version_table)
        sql = upgrade_sql(versions if has_table else None, destination)
        if sql is not None:
            if sql:
                connection.exec_driver_sql(replay.driver_sql(sql), ())
            return Step(schema, current_revision(versions), destination)
    return migrate_online(connection, schema, destination, downgrade=downgrade)


def upgrade_sql(versions: list[str] | None, destination: str) -> str | None:
    """The SQL that brings a tenant whose version rows are ``versions`` (None: no version table)
    to ``destination`` ("" when it is there), or None when Alembic must run it online."""
    if versions is not None and len(versions) != 1:
        # a branched tenant, or one downgraded to base (an empty version table): Alembic
        # works out the steps
        return None
    return replayable_sql(current_revision(versions), destination)


def current_revision(versions: list[str] | None) -> str | None:
    return ",".join(versions) if versions else None


def migrate_online(
    connection: Connection, schema: str, destination: str | None, *, downgrade: bool = False
) -> Step:
    script = tenant_script()
    seen: dict[str, tuple[str, ...]] = {}

    def steps(rev: Any, _context: Any) -> Any:
        """Alembic's own step planning (what ``command.upgrade``/``downgrade`` hand it)."""
        seen["from"] = tuple(rev)
        if downgrade or (len(rev) == 1 and goes_down(rev[0], destination)):
            return script._downgrade_revs(destination or BASE, rev)
        if destination in (None, BASE):
            return []  # an upgrade to base: nothing to do
        return script._upgrade_revs(destination, rev)

    cfg = as_one_tenant(_process_tenant_config(), schema)
    cfg.attributes["connection"] = connection
    try:
        with EnvironmentContext(cfg, script, fn=steps, destination_rev=destination) as env:
            env.configure(connection=connection, **tenant_context_options(schema))
            env.run_migrations()
    except CommandError as exc:
        raise TenantStateError(f"tenant {schema!r}: {exc}") from None
    except AssertionError as exc:
        if not _raised_in(exc, "autocommit_block"):
            raise
        raise UnsupportedRevision(
            f"tenant {schema!r}: a revision uses autocommit_block() (e.g. CREATE INDEX"
            " CONCURRENTLY), which cannot run inside the tenant's one transaction; the tenant"
            f" was rolled back (the fleet runs it: tenantfleet migrate --tenant {schema})"
        ) from None
    started = ",".join(seen.get("from", ())) or None
    if not downgrade and destination not in (None, BASE):
        triggers = backfill_triggers_sql(started, destination)
        if triggers:  # in the same transaction as the DDL: every row written from now on
            connection.exec_driver_sql(triggers)
    return Step(schema, started, destination)


def _raised_in(exc: BaseException, function: str) -> bool:
    return any(frame.name == function for frame in traceback.extract_tb(exc.__traceback__))


def version_rows(connection: Connection, has_table: bool | None = None) -> tuple[bool, list[str]]:
    """Whether the confined schema has a version table (asked unless known), and its rows."""
    if has_table is None:
        has_table = versions.has_relation(connection, VERSION_TABLE)
    if not has_table:
        return False, []
    rows = connection.execute(sa.text(READ_VERSIONS)).scalars()
    return True, list(rows)


@cache
def replayable_sql(current: str | None, destination: str) -> str | None:
    """The SQL of the upgrade ``current`` -> ``destination`` when every tenant can replay it as
    is (``tenantfleet.replay``: revisions opt in); "" when there is nothing to do; else None (run
    Alembic online). Rendered once per process; ``TENANTFLEET_REPLAY_SQL=false`` turns it off."""
    if current == destination:
        return ""
    if (
        not tf_config.load_settings().replay_sql
        or goes_down(current, destination)
        or commits_part_way(current, destination)
    ):
        return None
    try:
        span = replay.Span(
            tenant_script(), _render_config, tenant_context_options(), current, destination
        )
        rendered = span.render()
    except Exception:  # NotReplayable, or anything offline mode cannot do: run online
        return None
    triggers = backfill_triggers_sql(current, destination)
    return f"{rendered};\n{triggers}" if triggers else rendered


@cache
def replayable_steps(current: str | None, destination: str) -> tuple[replay.Segment, ...] | None:
    """For an upgrade that commits part way (``commits_part_way``): its SQL rendered once, as
    the transactions and autocommit statements Alembic online runs with a transaction per
    revision (``replay.segments``), when every revision opted in and renders the same for every
    tenant; else None (``tenantfleet.stepwise`` runs Alembic online)."""
    if not tf_config.load_settings().replay_sql or not commits_part_way(current, destination):
        return None
    found: list[replay.Segment] = []
    before = current
    for revision in _upgrade_revisions(current, destination):
        span = replay.Span(
            tenant_script(), _render_config, tenant_context_options(), before, revision.revision
        )
        try:
            found += replay.segments(span.render())
        except Exception:  # NotReplayable, or anything offline mode cannot do: run online
            return None
        before = revision.revision
    return tuple(found) if found else None


@cache
def small_span_sql(current: str | None, destination: str) -> str | None:
    """For a replayed span that commits part way only to build indexes concurrently: the span
    as one transaction's SQL, each index built in it, behind a guard that raises SQLSTATE
    TF409 (``public.tenantfleet_expect``, the control database's) unless every table it
    indexes has at most ``small_index_rows`` rows; with its backfills' triggers. None when it
    does not apply. The attempt sends it in its one round trip; where the guard raises, the
    attempt goes the long way (``tenantfleet.stepwise``)."""
    found = replayable_steps(current, destination)
    if found is None:
        return None
    check = replay.small_check_sql(found, tf_config.load_settings().small_index_rows)
    if check is None:
        return None
    guard = f"SELECT public.tenantfleet_expect({check}, 'a table it indexes is not small')"
    statements = [guard, *replay.in_one_transaction(found)]
    triggers = backfill_triggers_sql(current, destination)
    return ";\n".join([*statements, triggers] if triggers else statements)


def replays(current: str | None, destination: str) -> bool:
    """Whether workers replay the upgrade from ``current`` to ``destination`` (in one
    transaction, or step-wise) rather than run Alembic online."""
    return (
        replayable_sql(current, destination) is not None
        or replayable_steps(current, destination) is not None
    )


class NotRendered(Exception):
    """A span offline mode cannot render (a revision reads the database); ``partial`` is what
    was rendered before it stopped."""

    def __init__(self, message: str, partial: str) -> None:
        super().__init__(message)
        self.partial = partial


def render_sql(schema: str, from_revision: str | None, target: str) -> str:
    """The SQL Alembic's offline mode renders for ``schema`` from ``from_revision`` (None: base)
    to ``target``, as ``alembic upgrade --sql`` prints it; ``NotRendered`` when it cannot."""
    buffer = io.StringIO()
    cfg = tenant_config(schema)
    cfg.output_buffer = buffer
    span = f"{from_revision}:{target}" if from_revision else target
    try:
        command.upgrade(cfg, span, sql=True)
    except Exception as exc:
        raise NotRendered(f"{type(exc).__name__}: {exc}", buffer.getvalue()) from None
    return buffer.getvalue()


def render_downgrade_sql(schema: str, current: str, target: str) -> str:
    """The SQL Alembic's offline mode renders for ``schema`` going down from ``current`` to
    ``target`` (``base``: before the first revision), as ``alembic downgrade --sql`` prints it;
    ``NotRendered`` when it cannot."""
    buffer = io.StringIO()
    cfg = tenant_config(schema)
    cfg.output_buffer = buffer
    try:
        command.downgrade(cfg, f"{current}:{target}", sql=True)
    except Exception as exc:
        raise NotRendered(f"{type(exc).__name__}: {exc}", buffer.getvalue()) from None
    return buffer.getvalue()


def _render_config(buffer: io.StringIO, schema: str) -> Config:
    return as_one_tenant(Config(str(tenant_ini()), output_buffer=buffer), schema)


@cache
def _process_tenant_config() -> Config:
    return Config(str(tenant_ini()))
