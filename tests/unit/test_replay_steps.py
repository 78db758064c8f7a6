"""A revision with an autocommit block, rendered once and cut as Alembic runs it online (no
server: Alembic's offline mode)."""

import io
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from tenantfleet import alembic_runtime, replay
from tests import helpers

TWO_BLOCKS = """
tenantfleet_replay = True


def upgrade() -> None:
    op.add_column("users", sa.Column("handle", sa.Text()))
    with op.get_context().autocommit_block():
        op.create_index("ix_a", "users", ["handle"], postgresql_concurrently=True)
        op.create_index(
            "ix_b", "users", ["handle"], postgresql_concurrently=True,
            postgresql_where=sa.text("handle <> ';\\n\\n'"),
        )
    op.alter_column("users", "handle", existing_type=sa.Text(), comment="indexed")
"""


def test_a_revision_is_cut_into_its_transaction_its_block_statements_and_what_follows(
    tmp_path: Path,
) -> None:
    ini = helpers.tenant_env(tmp_path, [("c0001", TWO_BLOCKS)])

    def config(buffer: io.StringIO, schema: str) -> Config:
        return alembic_runtime.as_one_tenant(Config(str(ini), output_buffer=buffer), schema)

    span = replay.Span(
        ScriptDirectory.from_config(Config(str(ini))),
        config,
        alembic_runtime.tenant_context_options(),
        helpers.SEED_HEAD,
        "c0001",
    )
    found = replay.segments(span.render())
    assert [s.autocommit for s in found] == [False, True, True, False]
    assert found[0].sql == (
        "-- Running upgrade 20250415_000000 -> c0001\n\nALTER TABLE users ADD COLUMN handle TEXT;"
    )
    assert found[1].sql == "CREATE INDEX CONCURRENTLY ix_a ON users (handle);"
    assert found[1].small_table == ("CREATE INDEX ix_a ON users (handle)", "users")
    assert found[0].small_table is None and found[3].small_table is None
    assert (
        found[2].sql == "CREATE INDEX CONCURRENTLY ix_b ON users (handle) WHERE handle <> ';\n\n';"
    )
    assert found[3].sql.startswith("COMMENT ON COLUMN users.handle IS 'indexed';")
    assert found[3].sql.endswith(
        "UPDATE alembic_version SET version_num='c0001'"
        " WHERE alembic_version.version_num = '20250415_000000';"
    )


def test_a_revision_without_a_block_is_one_transaction() -> None:
    assert replay.segments("ALTER TABLE a ADD b int;\n\nUPDATE v SET x = 1;\n\n") == [
        replay.Segment("ALTER TABLE a ADD b int;\n\nUPDATE v SET x = 1;", autocommit=False)
    ]


def test_a_span_that_only_builds_indexes_concurrently_is_one_guarded_transaction_where_small(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = helpers.tenant_env(tmp_path, [("c0001", TWO_BLOCKS)])
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    monkeypatch.setenv("TENANTFLEET_SMALL_INDEX_ROWS", "500")
    alembic_runtime.forget_scripts()
    try:
        sql = alembic_runtime.small_span_sql(helpers.SEED_HEAD, "c0001")
    finally:
        alembic_runtime.forget_scripts()
    assert sql is not None
    guard, *rest = sql.split(";\n")
    assert guard == (
        "SELECT public.tenantfleet_expect((SELECT count(*) FROM (SELECT FROM users LIMIT 501)"
        " AS r) <= 500, 'a table it indexes is not small')"
    )
    assert "CREATE INDEX ix_a ON users (handle)" in rest and "CONCURRENTLY" not in sql
    assert sql.rstrip(";").endswith("WHERE alembic_version.version_num = '20250415_000000'")
