"""The ``tenantfleet`` command line: parses arguments, calls the modules that do the work, prints.

Exit codes: ``errors.EXIT_CODES``.
"""

import argparse
import gc
import getpass
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

from sqlalchemy.exc import DBAPIError

from tenantfleet import (
    __version__,
    commands,
    config,
    db,
    demo,
    dispatch,
    embedded,
    follow,
    logs,
    metrics,
    output,
    processes,
    scaffold,
)
from tenantfleet.errors import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    TenantfleetError,
    UsageError,
)
from tenantfleet.manager import MigrationManager, Status
from tenantfleet.names import shorten
from tenantfleet.planning import MigrateOptions
from tenantfleet.progress import Progress
from tenantfleet.registry import PROFILE_FIELDS

Handler = Callable[[argparse.Namespace], int]


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def _print_json(value: Any) -> None:
    print(output.json_text(value))


def _number(kind: type, minimum: float, what: str) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` of at least ``minimum``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    parse.__name__ = what
    return parse


SECONDS = _number(float, 0.001, "a positive number of seconds")
COUNT = _number(int, 1, "a whole number of at least 1")
COUNT_OR_ZERO = _number(int, 0, "a whole number of at least 0")
PORT = _number(int, 1, "a port number")


def RULE(text: str) -> str:  # noqa: N802 - an argparse type, named like the others
    if not config.RULE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a lint rule name")
    return text


def _print_status(status: Status, as_json: bool) -> None:
    if as_json:
        _print_json(output.status_dict(status))
    else:
        print(output.status_text(status))


# -- public ------------------------------------------------------------------------------


def cmd_public_init(args: argparse.Namespace) -> int:
    _print_status(MigrationManager().init_public(), args.json)
    return EXIT_OK


def cmd_public_upgrade(args: argparse.Namespace) -> int:
    _print_status(MigrationManager().upgrade_public(args.revision), args.json)
    return EXIT_OK


def cmd_public_status(args: argparse.Namespace) -> int:
    _print_status(MigrationManager().status_public(), args.json)
    return EXIT_OK


# -- one tenant --------------------------------------------------------------------------


def cmd_tenant_create(args: argparse.Namespace) -> int:
    profile = {name: getattr(args, name) for name in PROFILE_FIELDS}
    status = MigrationManager().init_tenant(
        args.schema,
        args.name,
        revision=args.revision,
        api_key=args.api_key,
        database=args.database,
        **profile,
    )
    _print_status(status, args.json)
    return EXIT_OK


def cmd_tenant_upgrade(args: argparse.Namespace) -> int:
    step = MigrationManager().upgrade_tenant(args.schema, args.revision)
    print(output.step_text(step))
    return EXIT_OK


def cmd_tenant_downgrade(args: argparse.Namespace) -> int:
    step = MigrationManager().downgrade_tenant(args.schema, args.revision)
    print(output.step_text(step))
    return EXIT_OK


def cmd_tenant_deactivate(args: argparse.Namespace) -> int:
    tenant = MigrationManager().set_active(args.schema, False, args.reason)
    _print_tenant(tenant, args.json, "deactivated: fleet runs leave it alone")
    return EXIT_OK


def cmd_tenant_activate(args: argparse.Namespace) -> int:
    tenant = MigrationManager().set_active(args.schema, True)
    _print_tenant(tenant, args.json, "active: fleet runs migrate it again")
    return EXIT_OK


def _print_tenant(tenant: Any, as_json: bool, what: str) -> None:
    if as_json:
        _print_json(output.tenant_dict(tenant))
    else:
        print(f"{tenant.schema_name}: {what}")


def cmd_tenant_status(args: argparse.Namespace) -> int:
    _print_status(MigrationManager().status_tenant(args.schema), args.json)
    return EXIT_OK


def cmd_tenants_list(args: argparse.Namespace) -> int:
    tenants = MigrationManager().list_tenants()
    if args.json:
        _print_json([output.tenant_dict(t) for t in tenants])
    else:
        print(output.tenants_table(tenants))
    return EXIT_OK


# -- the fleet ---------------------------------------------------------------------------


_json_logs = False
"""``log_format = "json"``: what the CLI says goes out as JSON log lines on stderr."""
_logger = logging.getLogger("tenantfleet.cli")


def _say(message: str) -> None:
    if _json_logs:
        _logger.info(message.strip())
    else:
        print(message, file=sys.stderr)


def cmd_migrate(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout goes with --wait")
    if args.sql and not args.dry_run:
        raise UsageError("--sql goes with --dry-run")
    manager = MigrationManager()
    options = MigrateOptions(
        revision=args.revision,
        include=tuple(args.tenant or ()),
        exclude=tuple(args.exclude or ()),
        upgrade_public=not args.no_public,
        canary=args.canary,
        canary_tenants=tuple(args.canary_tenant or ()),
        wait_for_active=args.wait_for_active,
        strict=args.strict,
        allow=tuple(args.allow or ()),
        **_rollout_options(args),
    )
    if args.dry_run:
        planned = commands.dry_run(manager, options, sql=args.sql)
        if args.json:
            shown = output.plan_dict(
                planned.plan, planned.waves, planned.sql, planned.replay, planned.refused_by
            )
            _print_json(shown)
        else:
            print(output.plan_text(planned.plan, planned.waves, planned.replay, planned.refused_by))
            if planned.sql:
                print(f"\n-- SQL of {planned.plan.behind[0][0]}'s upgrade:\n{planned.sql}")
        return EXIT_OK
    watch = commands.watch(manager, args.timeout, _say)
    run_id = commands.migrate(manager, options, _say, watch)
    return _follow(manager, run_id, args, watch)


def cmd_lint(args: argparse.Namespace) -> int:
    options = MigrateOptions(
        revision=args.revision,
        include=tuple(args.tenant or ()),
        exclude=tuple(args.exclude or ()),
    )
    found, code = commands.lint_revisions(MigrationManager(), options, tuple(args.allow or ()))
    if args.json:
        _print_json(found.as_dict())
    else:
        print(output.lint_text(found))
    return code


def _follow(
    manager: MigrationManager, run_id: int, args: argparse.Namespace, watch: follow.Watch
) -> int:
    """Print the run id (no --wait), or follow the run to its end and print its summary."""
    progress = Progress(say=_say if _json_logs else None) if args.wait else None
    listed = None if args.json else output.LISTED
    followed = commands.follow_run(
        manager, run_id, watch, wait=args.wait, on_progress=progress, listed=listed
    )
    if progress is not None:
        progress.close()
    if args.json:
        _print_json(followed.view)
    elif followed.closed or args.wait:
        print(output.run_summary(followed.view))
    else:
        print(f"run {run_id} enqueued; follow it with `tenantfleet status {run_id}`")
    if followed.timed_out:
        print(
            f"error: --timeout of {args.timeout:g} s reached; run {run_id} goes on", file=sys.stderr
        )
    return followed.exit_code


def cmd_retry(args: argparse.Namespace) -> int:
    manager = MigrationManager()
    watch = commands.watch(manager, args.timeout, _say)
    run_id = commands.retry(
        manager,
        args.run_id,
        tuple(args.tenant or ()),
        wait_for_active=args.wait_for_active,
        say=_say,
        watch=watch,
    )
    if run_id is None:
        message = f"run {args.run_id} has nothing to retry"
        if args.json:
            _print_json({"run_id": None, "retry_of": args.run_id, "message": message})
        else:
            print(message)
        return EXIT_OK
    return _follow(manager, run_id, args, watch)


def cmd_resume(args: argparse.Namespace) -> int:
    manager = MigrationManager()
    watch = commands.watch(manager, args.timeout, _say)
    resumed = commands.resume(manager, args.run_id, watch)
    if resumed.before.finished_at is not None:
        _say(f"run {args.run_id} is closed ({resumed.before.status}): nothing to resume")
    else:
        _say(f"run {args.run_id}: {resumed.sent} tenants enqueued again")
    return _follow(manager, args.run_id, args, watch)


def cmd_cancel(args: argparse.Namespace) -> int:
    reason = args.reason or f"cancelled by {getpass.getuser()}@{socket.gethostname()}"
    view, closed = commands.cancel(MigrationManager(), args.run_id, reason)
    if args.json:
        _print_json(view)
        return EXIT_OK
    in_flight = view["counts"]["pending"]
    _say(
        f"run {args.run_id}: {view['cancelled_now']} tenants not started are cancelled and will"
        " not be touched"
        + ("" if closed else f"; {in_flight} in flight finish, then the run closes")
    )
    if closed:
        print(output.run_summary(view))
    return EXIT_OK


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.wait:
        raise UsageError("--timeout goes with --wait")
    manager = MigrationManager()
    options = MigrateOptions(**_rollout_options(args))
    planned = commands.plan_rollback(manager, args.run_id, options)
    if args.dry_run:
        if args.json:
            _print_json(output.rollback_dict(planned))
        else:
            print(output.rollback_text(planned))
        return EXIT_OK
    if planned.drops and not args.yes:
        said = (
            f"rolling back run {args.run_id} drops tables {shorten(planned.drops)} in each of"
            f" its {len(planned.plan.behind)} tenants, with their data"
        )
        if not sys.stdin.isatty():
            raise UsageError(f"{said}: pass --yes to go on (--dry-run shows it all)")
        if input(f"{said}. Type yes to go on: ").strip() != "yes":
            raise UsageError("not confirmed: nothing was changed")
    watch = commands.watch(manager, args.timeout, _say)
    run_id = commands.rollback(manager, planned, options, _say, watch)
    _say(f"run {run_id} rolls back run {args.run_id}")
    return _follow(manager, run_id, args, watch)


def cmd_continue(args: argparse.Namespace) -> int:
    manager = MigrationManager()
    watch = commands.watch(manager, args.timeout, _say)
    wave = commands.continue_run(manager, args.run_id, _say, watch)
    message = f"run {args.run_id}: goes on after wave {wave}"
    if args.json:
        _print_json({"run_id": args.run_id, "continued_after_wave": wave, "message": message})
    else:
        print(message)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    listed = None if args.json else output.LISTED
    view, code = commands.status(MigrationManager(), args.run_id, args.tenant, listed)
    if args.json:
        _print_json(view)
    else:
        print(output.status_report(view))
    return code


def cmd_runs(args: argparse.Namespace) -> int:
    recent, by_database = commands.recent_runs(MigrationManager(), args.limit)
    if args.json:
        _print_json([output.run_dict(r, by_database.get(r.id, {})) for r in recent])
    else:
        print(output.runs_table(recent, by_database))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    run_id, page = commands.report_page(
        MigrationManager(), args.run_id, datetime.now().astimezone()
    )
    target = Path(args.html or f"tenantfleet-run-{run_id}.html")
    try:
        target.write_text(page)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror}") from None
    if args.json:
        _print_json(
            {"run_id": run_id, "html": str(target.absolute()), "bytes": target.stat().st_size}
        )
    else:
        print(f"run {run_id}: report written to {target}")
    return EXIT_OK


def cmd_queues(args: argparse.Namespace) -> int:
    found = dispatch.queues_of(MigrationManager())
    if args.json:
        _print_json({"tenants": found.tenants, "control": found.control})
    else:
        print(f"tenants: {found.tenants}\ncontrol: {found.control}")
    return EXIT_OK


def cmd_metrics(args: argparse.Namespace) -> int:
    read = commands.metrics_reader(MigrationManager())
    if not args.serve:
        sys.stdout.write(metrics.exposition(read))
        return EXIT_OK
    _say(f"serving the run tables' metrics on http://{args.address}:{args.port}/metrics")
    try:
        metrics.serve(read, args.address, args.port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.address}:{args.port}: {exc.strerror}") from None
    return EXIT_OK


def cmd_fleet(args: argparse.Namespace) -> int:
    survey = commands.fleet_survey(MigrationManager(), args.verify)
    if args.json:
        _print_json(output.fleet_dict(survey))
    else:
        print(output.fleet_text(survey))
    return EXIT_OK


def cmd_worker(args: argparse.Namespace) -> NoReturn:
    settings = config.load_settings()
    argv = processes.worker_argv(
        args.concurrency,
        hostname=args.hostname or f"tenantfleet-{os.getpid()}@%h",  # exec keeps this pid
        loglevel=args.loglevel,
        quiet=settings.log_format == "json",
    )
    os.execve(sys.executable, argv, processes.child_env(settings))


def cmd_flower(args: argparse.Namespace) -> NoReturn:
    settings = config.load_settings()
    extra = {}
    if not os.environ.get("FLOWER_BASIC_AUTH") and args.address in ("127.0.0.1", "localhost"):
        extra["FLOWER_UNAUTHENTICATED_API"] = "true"
    argv = processes.flower_argv(args.address, args.port)
    os.execve(sys.executable, argv, processes.child_env(settings, **extra))


def cmd_demo(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    manager = MigrationManager(settings)
    schemas = demo.provision(manager, args.tenants, print)
    worker = demo.start_workers(settings, args.workers, print)
    flower = demo.start_flower(settings, args.port, print) if args.flower else None
    try:
        print(f"migrating {len(schemas)} tenants to head with `tenantfleet migrate --wait`")
        watch = commands.watch(manager, None, _say)
        run_id = commands.migrate(manager, MigrateOptions(include=tuple(schemas)), _say, watch)
        as_migrate = argparse.Namespace(wait=True, timeout=None, json=False)
        code = _follow(manager, run_id, as_migrate, watch)
        if flower is not None:
            print(f"Flower: http://127.0.0.1:{args.port}/tasks  (Ctrl-C to stop)")
            flower.wait()
        return code
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        for proc in (flower, worker):
            if proc is not None:
                processes.stop(proc)


# -- the embedded stack ------------------------------------------------------------------


def cmd_dev_up(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    print(f"export TENANTFLEET_DATABASE_URL='{config.database_url(settings)}'")
    print(f"export TENANTFLEET_BROKER_URL='{config.broker_url(settings)}'")
    return EXIT_OK


def cmd_dev_status(args: argparse.Namespace) -> int:
    state = embedded.status(config.load_settings().state_dir)
    for name, url in state.items():
        print(f"{name}: {url or 'stopped'}")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    settings = config.load_settings()
    rows = config.describe(settings)
    where = str(settings.config_file) if settings.config_file else None
    if args.json:
        _print_json(
            {
                "version": __version__,
                "config_file": where,
                "settings": [{"key": k, "value": v, "source": src} for k, v, src in rows],
            }
        )
    else:
        print(f"tenantfleet {__version__}\nconfig file: {where or '(none found)'}\n")
        print(output.table(["key", "value", "from"], [list(row) for row in rows]))
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    tenant_env = Path(args.tenant_env) if args.tenant_env else None
    written = scaffold.init(Path.cwd(), tenant_env)
    for path in written:
        print(f"wrote {path}")
    if tenant_env is None:
        print("next: point tenant_alembic at your tenant Alembic environment (or --tenant-env DIR)")
    return EXIT_OK


def cmd_dev_down(args: argparse.Namespace) -> int:
    stopped = embedded.stop(config.load_settings().state_dir)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    return EXIT_OK


# -- the parser --------------------------------------------------------------------------


def _add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _command(
    group: Any, name: str, handler: Handler, help_text: str, json_flag: bool = True
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(func=handler)
    if json_flag:
        _add_json(parser)
    return parser


def _rollout_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``MigrateOptions`` of ``_rollout_arguments``."""
    return {
        "max_failures": args.max_failures,
        "waves": tuple(args.wave or ()),
        "wave_pause": args.wave_pause or 0.0,
        "wave_hold": args.wave_hold,
    }


def _rollout_arguments(command: argparse.ArgumentParser) -> None:
    """Waves and the failure budget: for ``migrate`` and ``rollback``."""
    command.add_argument(
        "--wave",
        action="append",
        metavar="N|N%",
        help="a wave: the next N (or N %%) of the tenants by schema name; repeatable, the rest"
        " go last; a wave starts when the one before succeeded (within --max-failures)",
    )
    command.add_argument(
        "--wave-pause", type=SECONDS, metavar="SECONDS", help="wait this long between waves"
    )
    command.add_argument(
        "--wave-hold",
        action="store_true",
        help="between waves, wait for `tenantfleet continue RUN`",
    )
    command.add_argument(
        "--max-failures",
        type=COUNT,
        metavar="N",
        help="after N failed tenants, skip the tenants not started yet",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tenantfleet",
        description="Migration workers for schema-per-tenant PostgreSQL.",
        epilog="Exit codes: " + ", ".join(f"{code} {short}" for code, short, _ in EXIT_CODES) + ".",
    )
    parser.add_argument("--version", action="version", version=f"tenantfleet {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="the config file (default: tenantfleet.toml or pyproject.toml, found from here up;"
        " also TENANTFLEET_CONFIG)",
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    public = commands.add_parser("public", help="the public schema (registry, run tables)")
    public_cmds = public.add_subparsers(dest="action", required=True, parser_class=_Parser)
    _command(public_cmds, "init", cmd_public_init, "create the registry and run tables")
    upgrade = _command(public_cmds, "upgrade", cmd_public_upgrade, "upgrade the public schema")
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    _command(public_cmds, "status", cmd_public_status, "current, head and pending revisions")

    tenant = commands.add_parser("tenant", help="one tenant schema")
    tenant_cmds = tenant.add_subparsers(dest="action", required=True, parser_class=_Parser)
    create = _command(
        tenant_cmds,
        "create",
        cmd_tenant_create,
        "create a schema, register it and migrate it, as one unit",
    )
    create.add_argument("schema", help="the new schema's name (1-63 of a-z, 0-9, _)")
    create.add_argument("--name", help="tenant_name (default: the schema name)")
    create.add_argument(
        "--revision", default="head", help="migrate it to this revision (default: head)"
    )
    create.add_argument("--api-key", dest="api_key", help="the registry's api_key column")
    create.add_argument(
        "--database",
        metavar="KEY",
        help="the database to create it in: a key of [tool.tenantfleet.databases] (default: this"
        " one)",
    )
    for name in PROFILE_FIELDS:
        create.add_argument(
            f"--{name.replace('_', '-')}", dest=name, help=f"the registry's {name} column"
        )
    t_upgrade = _command(
        tenant_cmds, "upgrade", cmd_tenant_upgrade, "upgrade one tenant", json_flag=False
    )
    t_upgrade.add_argument("schema", help="the tenant's schema name")
    t_upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    t_down = _command(
        tenant_cmds, "downgrade", cmd_tenant_downgrade, "downgrade one tenant", json_flag=False
    )
    t_down.add_argument("schema", help="the tenant's schema name")
    t_down.add_argument("--revision", required=True, help="the revision to go down to, or base")
    t_status = _command(tenant_cmds, "status", cmd_tenant_status, "one tenant's revisions")
    t_status.add_argument("schema", help="the tenant's schema name")
    t_off = _command(
        tenant_cmds, "deactivate", cmd_tenant_deactivate, "take a tenant out of fleet runs"
    )
    t_off.add_argument("schema", help="the tenant's schema name")
    t_off.add_argument("--reason", help="why (shown by `tenants list` and `fleet`)")
    t_on = _command(tenant_cmds, "activate", cmd_tenant_activate, "put a tenant back in")
    t_on.add_argument("schema", help="the tenant's schema name")

    tenants = commands.add_parser("tenants", help="the registry")
    tenants_cmds = tenants.add_subparsers(dest="action", required=True, parser_class=_Parser)
    _command(tenants_cmds, "list", cmd_tenants_list, "list registered tenants")

    migrate = _command(
        commands, "migrate", cmd_migrate, "upgrade every active tenant through the workers"
    )
    migrate.add_argument("--revision", default="head", help="target revision (default: head)")
    migrate.add_argument("--tenant", action="append", metavar="S", help="only this schema")
    migrate.add_argument("--exclude", action="append", metavar="S", help="skip this schema")
    migrate.add_argument("--wait", action="store_true", help="follow the run to its end")
    migrate.add_argument("--timeout", type=SECONDS, metavar="SECONDS", help="exit 3 after")
    migrate.add_argument("--no-public", action="store_true", help="do not upgrade public first")
    migrate.add_argument(
        "--canary",
        type=COUNT_OR_ZERO,
        default=0,
        metavar="N",
        help="migrate the first N tenants (by schema name) first; the rest only if all succeed",
    )
    migrate.add_argument(
        "--canary-tenant", action="append", metavar="S", help="a canary chosen by name"
    )
    _rollout_arguments(migrate)
    migrate.add_argument("--dry-run", action="store_true", help="print the plan, touch nothing")
    migrate.add_argument("--sql", action="store_true", help="with --dry-run: one tenant's SQL")
    migrate.add_argument(
        "--wait-for-active", action="store_true", help="wait for an active run instead of refusing"
    )
    migrate.add_argument(
        "--strict",
        action="store_true",
        help="refuse (exit 2) when a tenant cannot be migrated, instead of skipping it",
    )

    lint_cmd = _command(
        commands,
        "lint",
        cmd_lint,
        "check the SQL of every pending revision (squawk and the fleet's rules); exit 2 when"
        " a finding blocks",
    )
    lint_cmd.add_argument("--revision", default="head", help="target revision (default: head)")
    lint_cmd.add_argument("--tenant", action="append", metavar="S", help="only this schema")
    lint_cmd.add_argument("--exclude", action="append", metavar="S", help="skip this schema")
    for gated in (migrate, lint_cmd):
        gated.add_argument(
            "--allow",
            action="append",
            type=RULE,
            metavar="RULE",
            help="a lint rule whose findings do not block (repeatable; also lint_allow)",
        )

    retry = _command(commands, "retry", cmd_retry, "migrate again what a run did not finish")
    retry.add_argument("run_id", type=int, help="the run whose unfinished tenants to migrate")
    retry.add_argument("--tenant", action="append", metavar="S", help="only this schema")
    resume = _command(
        commands, "resume", cmd_resume, "enqueue again the lost tenants of an unfinished run"
    )
    resume.add_argument("run_id", type=int, help="the unfinished run")
    back = _command(
        commands,
        "rollback",
        cmd_rollback,
        "a new run that brings every tenant a run upgraded back to where it came from",
    )
    back.add_argument("run_id", type=int, help="the run to undo")
    back.add_argument(
        "--dry-run", action="store_true", help="show what it would undo; change nothing"
    )
    back.add_argument(
        "--yes", action="store_true", help="go on when its downgrades drop tables (asked on a TTY)"
    )
    _rollout_arguments(back)
    for follower in (retry, resume, back):
        follower.add_argument("--wait", action="store_true", help="follow the run to its end")
        follower.add_argument("--timeout", type=SECONDS, metavar="SECONDS", help="exit 3 after")
    retry.add_argument(
        "--wait-for-active", action="store_true", help="wait for an active run instead of refusing"
    )
    cancel = _command(
        commands,
        "cancel",
        cmd_cancel,
        "stop a run: tenants not started are recorded cancelled, those in flight finish",
    )
    cancel.add_argument("run_id", type=int, help="the open run to stop")
    go_on = _command(
        commands,
        "continue",
        cmd_continue,
        "let a run held between waves (--wave-hold) start its next wave",
    )
    go_on.add_argument("run_id", type=int, help="the held run")
    go_on.add_argument(
        "--timeout",
        type=SECONDS,
        metavar="SECONDS",
        help="when this command sends the next wave (the run's producer is gone), exit 3 after",
    )
    cancel.add_argument("--reason", help="recorded on each cancelled tenant (default: who, where)")
    status = _command(commands, "status", cmd_status, "a run: counts, failures, slowest tenants")
    status.add_argument("run_id", type=int, nargs="?", help="default: the latest run")
    status.add_argument(
        "--tenant", metavar="S", help="also list every attempt at this tenant in the run"
    )
    runs_cmd = _command(commands, "runs", cmd_runs, "recent runs")
    runs_cmd.add_argument("--limit", type=COUNT, default=20, help="how many runs (default: 20)")
    fleet_cmd = _command(commands, "fleet", cmd_fleet, "tenants per revision, behind head, drift")
    fleet_cmd.add_argument(
        "--verify",
        action="store_true",
        help="read every schema's version table, not the registry's record of it, and list"
        " the schemas changed around tenantfleet (without it: the record, one query, with"
        " the registry as the tenant source)",
    )
    report_cmd = _command(
        commands,
        "report",
        cmd_report,
        "one self-contained HTML page about a run: counts, timeline, durations, failures",
    )
    report_cmd.add_argument("run_id", type=int, nargs="?", help="default: the latest run")
    report_cmd.add_argument(
        "--html", metavar="FILE", help="where to write it (default: tenantfleet-run-N.html)"
    )
    _command(
        commands,
        "queues",
        cmd_queues,
        "the broker queues of the control database (a queue-length autoscaler's list name)",
    )
    metrics_cmd = _command(
        commands,
        "metrics",
        cmd_metrics,
        "the run tables' Prometheus metrics: printed once, or --serve'd",
        json_flag=False,
    )
    metrics_cmd.add_argument("--serve", action="store_true", help="serve them until Ctrl-C")
    metrics_cmd.add_argument(
        "--address", default="127.0.0.1", help="--serve on this address (default: 127.0.0.1)"
    )
    metrics_cmd.add_argument(
        "--port", type=PORT, default=9810, help="--serve on this port (default: 9810)"
    )

    worker = _command(
        commands,
        "worker",
        cmd_worker,
        "run a Celery worker (celery -A tenantfleet.workers worker)",
        json_flag=False,
    )
    worker.add_argument(
        "--concurrency",
        "-c",
        type=COUNT,
        default=os.cpu_count() or 2,
        help="pool processes: tenants migrated at once (default: the machine's CPUs)",
    )
    worker.add_argument("--loglevel", default="INFO", help="Celery's log level (default: INFO)")
    worker.add_argument(
        "--hostname",
        "-n",
        metavar="NAME",
        help="the worker's name in Flower and the logs, Celery's templates allowed (%%h: the"
        " host); default tenantfleet-PID@%%h, unique for every worker on a host",
    )
    flower = _command(
        commands,
        "flower",
        cmd_flower,
        "run Flower (celery -A tenantfleet.workers flower)",
        json_flag=False,
    )
    flower.add_argument("--address", default="127.0.0.1", help="listen here (default: 127.0.0.1)")
    flower.add_argument(
        "--port", type=PORT, default=5555, help="listen on this port (default: 5555)"
    )
    demo_cmd = _command(
        commands, "demo", cmd_demo, "a fleet migration on the embedded stack", json_flag=False
    )
    demo_cmd.add_argument(
        "--tenants", type=COUNT, default=200, help="demo tenants to create (default: 200)"
    )
    demo_cmd.add_argument("--workers", type=COUNT, default=2, help="worker processes (default: 2)")
    demo_cmd.add_argument("--flower", action="store_true", help="keep Flower up until Ctrl-C")
    demo_cmd.add_argument("--port", type=PORT, default=5555, help="Flower's port (default: 5555)")

    _command(
        commands, "config", cmd_config, "the resolved configuration and where each value came from"
    )
    init = _command(
        commands, "init", cmd_init, "configure tenantfleet in this app", json_flag=False
    )
    init.add_argument(
        "--tenant-env", metavar="DIR", help="also write a tenant Alembic environment in DIR"
    )

    dev = commands.add_parser("dev", help="the embedded default stack")
    dev_cmds = dev.add_subparsers(dest="action", required=True, parser_class=_Parser)
    _command(dev_cmds, "up", cmd_dev_up, "start it and print its URLs", json_flag=False)
    _command(dev_cmds, "status", cmd_dev_status, "show what runs", json_flag=False)
    _command(dev_cmds, "down", cmd_dev_down, "stop it", json_flag=False)
    return parser


def _fail(
    args: argparse.Namespace, message: str, code: int, details: dict[str, Any] | None = None
) -> int:
    """One line on stderr; with ``--json``, the same as a JSON object on stdout (with the
    error's ``details``)."""
    if _json_logs:
        _logger.error(message, extra={"exit_code": code})
    else:
        print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_json({"error": message, "exit_code": code, **(details or {})})
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config:  # every process this command starts reads the same file
        os.environ[config.CONFIG_VARIABLE] = str(Path(args.config).absolute())
    _setup_logging()
    try:
        return int(args.func(args))
    except TenantfleetError as exc:
        if args.debug:
            raise
        return _fail(args, str(exc), exc.exit_code, exc.details)
    except DBAPIError as exc:
        if args.debug:
            raise
        return _fail(args, f"database: {db.first_line(exc)}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", EXIT_INTERRUPTED)


def _setup_logging() -> None:
    """Text (``tenantfleet: ...`` warnings) or, with ``log_format = "json"``, every line the
    CLI says as a JSON object. A configuration that does not load is reported by the command."""
    global _json_logs
    try:
        log_format = config.load_settings().log_format
    except TenantfleetError:
        log_format = "text"
    _json_logs = log_format == "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logs.formatter(log_format, "tenantfleet: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    _logger.setLevel(logging.INFO)


class _PipeSafe:
    """stdout that takes a closed pipe (``tenantfleet tenants list | head -1``) as a normal end:
    what is left to print goes nowhere, and the command keeps its own exit code."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._discard()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._discard()

    def _discard(self) -> None:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def entry() -> NoReturn:
    """The console script and ``python -m tenantfleet``: ``main``, then exit.

    Freezing the objects left (``gc.freeze``) spares the interpreter its final full garbage
    collection over every object SQLAlchemy, Alembic and Celery created: 0.1-0.2 s off every
    command, the deploy hook's included. Everything is still released at exit.
    """
    sys.stdout = _PipeSafe(sys.stdout)
    code = main()
    sys.stdout.flush()
    gc.freeze()
    sys.exit(code)
