"""tenantfleet on an application of its own (``examples/saas_app``), end to end.

A fresh virtual environment gets tenantfleet (built from this repository, not editable) and the
example app beside it; everything then runs there, from the app's folder, as a team would:
its config in its ``pyproject.toml``, its own public history, its tenants listed by its own
query, its tenant revisions (one importing app code, a data migration with a ``%``, one reading
the database), real worker processes, a broken tenant, a retry, a dry run, autogenerate, and a
rolling deploy.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from tenantfleet import db, processes
from tests import helpers

ACCOUNTS = 101
BROKEN = "a0042"
T5 = '''"""customers.vip (deployed while a worker runs)

Revision ID: t0005
Revises: t0004
"""

import sqlalchemy as sa
from alembic import op

revision = "t0005"
down_revision = "t0004"
branch_labels = None
depends_on = None
tenantfleet_replay = True


def upgrade() -> None:
    op.add_column("customers", sa.Column("vip", sa.Boolean))


def downgrade() -> None:
    op.drop_column("customers", "vip")
'''
T6 = T5.replace("t0005", "t0006").replace('"t0004"', '"t0005"').replace("vip", "vip2")


@pytest.fixture(scope="session")
def app_python(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment with tenantfleet and the example app installed, nothing else."""
    env_dir = tmp_path_factory.mktemp("appenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            str(repo_root),
            str(repo_root / "examples" / "saas_app"),
        ],
        check=True,
        timeout=900,
        capture_output=True,
    )
    return python


@dataclass
class App:
    folder: Path
    python: Path
    env: dict[str, str]
    engine: sa.engine.Engine

    def run(self, *args: str, folder: Path | None = None, timeout: float = 300) -> helpers.Result:
        done = subprocess.run(
            [str(self.python), "-m", *args],
            cwd=folder or self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return helpers.Result(done.returncode, done.stdout, done.stderr)

    def tenantfleet(self, *args: str, timeout: float = 300) -> helpers.Result:
        return self.run("tenantfleet", *args, timeout=timeout)

    def worker(self, folder: Path, log: Path) -> "subprocess.Popen[bytes]":
        ready = log.read_text().count(" ready.") if log.exists() else 0
        worker = processes.spawn(
            [str(self.python), "-m", "tenantfleet", "worker", "-c", "2"], self.env, log, folder
        )
        deadline = time.monotonic() + 120
        while not log.exists() or log.read_text().count(" ready.") <= ready:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        return worker

    def scalar(self, sql: str) -> object:
        with self.engine.connect() as connection:
            return connection.execute(sa.text(sql)).scalar()


@pytest.fixture
def app(
    app_python: Path, repo_root: Path, pg_admin_url: str, redis_url: str, tmp_path: Path
) -> Iterator[App]:
    folder = tmp_path / "saas_app"
    shutil.copytree(repo_root / "examples" / "saas_app", folder)
    url = helpers.create_database(pg_admin_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTFLEET_")}
    env.update(
        SAAS_DATABASE_URL=url,
        TENANTFLEET_BROKER_URL=redis_url,
        TENANTFLEET_RESULT_BACKEND=redis_url,
        TENANTFLEET_STATE_DIR=str(tmp_path / "state"),
        TENANTFLEET_LOCK_TIMEOUT="1",
        TENANTFLEET_RETRY_BACKOFF="0.2",
        TENANTFLEET_RETRY_BACKOFF_MAX="1",
        TENANTFLEET_MAX_RETRIES="2",
    )
    engine = db.make_engine(url)
    yield App(folder, app_python, env, engine)
    engine.dispose()
    helpers.drop_database(pg_admin_url, url)


def test_only_tenantfleet_is_installed_as_a_top_level_package(app_python: Path) -> None:
    away = app_python.parent  # not the repository, whose folders would be found from here
    for name in ("tasks", "workers", "migrations"):
        probe = subprocess.run(
            [str(app_python), "-c", f"import {name}"], capture_output=True, cwd=away
        )
        assert probe.returncode != 0, name
    found = subprocess.run([str(app_python), "-c", "import tenantfleet.workers"], cwd=away)
    assert found.returncode == 0


def test_the_example_app_end_to_end(app: App, tmp_path: Path) -> None:
    # the app's own public history, its accounts and their (empty) schemas
    assert app.run("alembic", "-c", "public_migrations/alembic.ini", "upgrade", "head").code == 0
    schemas = [f"a{i:04d}" for i in range(1, ACCOUNTS + 1)]
    with app.engine.begin() as connection:
        for schema in schemas:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        connection.execute(
            sa.text("INSERT INTO public.accounts (schema_name) SELECT unnest(CAST(:s AS text[]))"),
            {"s": schemas},
        )
        connection.execute(
            sa.text(
                "INSERT INTO public.accounts (schema_name, is_active) VALUES ('closed1', false)"
            )
        )
        connection.execute(sa.text(f'CREATE TABLE "{BROKEN}".customers (id int)'))

    shown = json.loads(app.tenantfleet("config", "--json").out)
    where = {row["key"]: row["source"] for row in shown["settings"]}
    assert where["tenants"].endswith("pyproject.toml [tool.tenantfleet]")
    assert where["broker_url"] == "env TENANTFLEET_BROKER_URL"

    planned = app.tenantfleet("migrate", "--dry-run", "--sql", "--json")
    assert planned.code == 0, planned.err
    plan = json.loads(planned.out)
    assert len(plan["tenants"]) == ACCOUNTS and plan["tenants"][0]["from_revision"] is None
    assert "paid 100% upfront" in plan["sql"] and "CREATE TABLE customers" in plan["sql"]

    worker = app.worker(app.folder, tmp_path / "worker.log")
    try:
        first = app.tenantfleet("migrate", "--wait", "--json")
        assert first.code == 1, first.err
        report = json.loads(first.out)
        assert (report["counts"]["succeeded"], report["counts"]["failed"]) == (ACCOUNTS - 1, 1)
        assert [t["schema"] for t in report["tenants"] if t["status"] == "failed"] == [BROKEN]
        assert app.scalar("SELECT version_num FROM public.alembic_version") == "p0001"
        assert app.scalar("SELECT note FROM a0001.invoices") == "paid 100% upfront"
        assert app.scalar("SELECT currency || customer_count FROM a0001.invoices") == "EUR1"
        assert app.scalar("SELECT to_regclass('closed1.customers')") is None

        with app.engine.begin() as connection:
            connection.execute(sa.text(f'DROP TABLE "{BROKEN}".customers'))
        retried = app.tenantfleet("retry", str(report["run_id"]), "--wait", "--json")
        assert retried.code == 0, retried.err
        assert app.scalar(f'SELECT note FROM "{BROKEN}".invoices') == "paid 100% upfront"

        check = app.run(
            "alembic", "-c", "tenant_migrations/alembic.ini", "-x", "schema=a0007", "check"
        )
        assert check.code == 0, check.out + check.err

        # a revision deployed while the worker runs: it reads its scripts again
        (app.folder / "tenant_migrations" / "versions" / "t0005_vip.py").write_text(T5)
        rolled = app.tenantfleet("migrate", "--wait", "--json")
        assert rolled.code == 0, rolled.err
        assert json.loads(rolled.out)["counts"]["succeeded"] == ACCOUNTS
    finally:
        processes.stop(worker)

    # a host still on the older code: its worker hands the tasks back, touches nothing
    old = tmp_path / "old_host"
    shutil.copytree(app.folder, old)
    (app.folder / "tenant_migrations" / "versions" / "t0006_vip2.py").write_text(T6)
    old_worker = app.worker(old, tmp_path / "old_worker.log")
    try:
        waited = app.tenantfleet("migrate", "--wait", "--json", "--timeout", "15")
        assert waited.code == 3, waited.err
        assert "no live worker knows revision t0006" in waited.err
        run_id = json.loads(waited.out)["run_id"]
        status = json.loads(app.tenantfleet("status", str(run_id), "--json").out)
        assert status["counts"]["succeeded"] == 0
        assert any(
            "waiting for a worker that knows revision t0006" in (t["error"] or "")
            for t in status["tenants"]
        )
        assert app.scalar("SELECT count(*) FROM pg_attribute WHERE attname = 'vip2'") == 0
        assert "handed back" in (tmp_path / "old_worker.log").read_text()
        new_worker = app.worker(app.folder, tmp_path / "worker.log")
        try:
            deadline = time.monotonic() + 300
            while app.tenantfleet("status", str(run_id)).code != 0:
                assert time.monotonic() < deadline
                time.sleep(1)
        finally:
            processes.stop(new_worker)
    finally:
        processes.stop(old_worker)
    assert (
        app.scalar("SELECT count(DISTINCT attrelid) FROM pg_attribute WHERE attname = 'vip2'")
        == ACCOUNTS
    )
