"""Helpers shared by the tests: databases, the CLI as a subprocess, catalog snapshots."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from tenantfleet import db, versions

T = TypeVar("T")


def admin_engine(url: str) -> Engine:
    return db.make_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)


def create_database(admin_url: str, template: str | None = None, prefix: str = "tf") -> str:
    """A new database (cloned from ``template`` if given); its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = admin_engine(admin_url)
    with engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote
        clause = f" TEMPLATE {quoted(template)}" if template else ""
        connection.execute(sa.text(f"CREATE DATABASE {quoted(name)}{clause}"))
    engine.dispose()
    return sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = str(sa.engine.make_url(url).database)
    engine = admin_engine(admin_url)
    with engine.connect() as connection:
        quoted = connection.dialect.identifier_preparer.quote(name)
        connection.execute(sa.text(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
    engine.dispose()


def database_name(url: str) -> str:
    return str(sa.engine.make_url(url).database)


@dataclass
class Result:
    code: int
    out: str
    err: str


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> Result:
    """``tenantfleet ARGS`` as a real subprocess, as a deploy hook would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "tenantfleet", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_bench(
    pg_admin_url: str,
    repo_root: Path,
    tmp_path: Path,
    template: str,
    *argv: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``bench/fleet_bench.py ARGV`` (``env`` added to the environment) in a database of its
    own, dropped afterwards with its ``template`` (``w1`` or ``w2``)."""
    database = f"tf_bench_{uuid.uuid4().hex[:8]}"
    environment = {
        **os.environ,
        "TENANTFLEET_DATABASE_URL": pg_admin_url,
        "TENANTFLEET_STATE_DIR": str(tmp_path),
        **(env or {}),
    }
    try:
        return subprocess.run(
            [sys.executable, "bench/fleet_bench.py", *argv, "--database", database],
            cwd=repo_root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        for name in (database, f"{database}_{template}"):  # the copy and the template
            url = sa.engine.make_url(pg_admin_url).set(database=name)
            drop_database(pg_admin_url, url.render_as_string(hide_password=False))


class Times(NamedTuple):
    """When a run's tenant ran, as its row says (the views' rows leave the times out)."""

    database: str | None
    status: str
    started_at: datetime | None
    finished_at: datetime | None


def tenant_times(engine: Engine, run_id: int) -> dict[str, Times]:
    """Each tenant of the run, by schema: its database, status and times."""
    with engine.connect() as connection:
        found = connection.execute(
            sa.text(
                "SELECT schema_name, database, status, started_at, finished_at"
                " FROM public.migration_run_tenants WHERE run_id = :run"
            ),
            {"run": run_id},
        ).all()
    return {schema: Times(*rest) for schema, *rest in found}


def snapshot(engine: Engine, schemas: Iterable[str]) -> set[tuple[str, ...]]:
    """Tables, columns, indexes and constraints of ``schemas``, as the catalog shows them."""
    wanted = list(schemas)
    with engine.connect() as connection:
        columns = connection.execute(
            sa.text(
                "SELECT table_schema, table_name, column_name, data_type, is_nullable"
                " FROM information_schema.columns WHERE table_schema = ANY(:s)"
            ),
            {"s": wanted},
        ).all()
        indexes = connection.execute(
            sa.text(
                "SELECT schemaname, tablename, indexname FROM pg_indexes WHERE schemaname = ANY(:s)"
            ),
            {"s": wanted},
        ).all()
        sequences = [
            ("sequence", schema, name)
            for schema, name in connection.execute(
                sa.text(
                    "SELECT n.nspname, c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = ANY(:s) AND c.relkind = 'S'"
                ),
                {"s": wanted},
            )
        ]
    return (
        {("column", *map(str, row)) for row in columns}
        | {("index", *map(str, row)) for row in indexes}
        | set(sequences)
    )


def revision_of(engine: Engine, schema: str) -> str | None:
    with engine.connect() as connection:
        return versions.read_versions(connection, [schema])[schema]


def schema_names(engine: Engine) -> set[str]:
    with engine.connect() as connection:
        return set(connection.execute(sa.text("SELECT nspname FROM pg_namespace")).scalars())


SEED_HEAD = "20250415_000000"


def tenant_env(directory: Path, revisions: Sequence[tuple[str, str]]) -> Path:
    """A copy of the seed's tenant environment in ``directory`` with ``revisions`` (id, module
    body after the header) chained after the seed's head; its ``alembic.ini``."""
    target = directory / "tenant_env"
    shutil.copytree(
        Path(versions.TENANT_INI).parent,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    down = SEED_HEAD
    for revision, body in revisions:
        header = (
            f'"""{revision}"""\n\nimport sqlalchemy as sa\nfrom alembic import context, op\n\n'
            f"revision = {revision!r}\ndown_revision = {down!r}\n"
            "branch_labels = None\ndepends_on = None\n"
        )
        (target / "alembic" / "versions" / f"{revision}.py").write_text(
            header + textwrap.dedent(body)
        )
        down = revision
    return target / "alembic.ini"


def wait_for(
    condition: Callable[[], T | None],
    what: str = "the condition",
    timeout: float = 120,
    every: float = 0.1,
) -> T:
    """Polls ``condition`` until it returns something true and returns that; fails the test
    after ``timeout`` seconds (a bound for a stuck test, never a measure of speed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)
