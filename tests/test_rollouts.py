"""Safe rollouts with real workers: the lint gate (our rules and squawk's), waves that stop at a
failing wave or hold for ``continue``, and the rollback of a run (every tenant back at its own
from-revision, compared through the catalog)."""

import json
from collections.abc import Iterator
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
import sqlalchemy as sa

from tenantfleet import runs
from tests import helpers
from tests.stack import Stack, running_fleet
from tests.test_fleet import break_tenants, repair_tenants

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


@pytest.fixture(autouse=True)
def fresh_registry(stack: Stack) -> Iterator[None]:
    stack.deactivate_all()
    yield


def _json(result: helpers.Result) -> Any:
    return json.loads(result.out)


def test_waves_stop_at_the_wave_that_failed_and_never_start_the_next(stack: Stack) -> None:
    schemas = stack.provision("wv", 20)
    break_tenants(stack, ["wv00004"])  # in wave 2 (2 tenants, then 25 % of 20: 5)
    untouched = helpers.snapshot(stack.engine, schemas[7:])
    plan = _json(stack.cli("migrate", "--dry-run", "--json", "--wave", "2", "--wave", "25%"))
    assert plan["waves"] == [2, 5, 13] and plan["canaries"] == ["wv00001", "wv00002"]
    with stack.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE tenant_registry SET tenant_state = CASE schema_name"
                " WHEN 'wv00020' THEN 'AK' WHEN 'wv00019' THEN 'AL' ELSE 'CA' END"
            )
        )
    ordered = stack.cli(
        "migrate", "--dry-run", "--json", "--wave", "2", TENANTFLEET_WAVE_ORDER="tenant_state"
    )
    assert _json(ordered)["canaries"] == ["wv00020", "wv00019"]
    unknown = stack.cli("migrate", "--dry-run", "--wave", "2", TENANTFLEET_WAVE_ORDER="plan")
    assert unknown.code == 2 and "tenant_registry has no column 'plan'" in unknown.err
    result = stack.cli(
        "migrate", "--revision", R2, "--wave", "2", "--wave", "25%", "--wait", "--json"
    )
    assert result.code == 1, result.err
    report = _json(result)
    by_wave = {w["wave"]: w for w in report["waves"]}
    assert by_wave[1]["succeeded"] == 2
    assert by_wave[2]["succeeded"] == 4 and by_wave[2]["failed"] == 1
    assert by_wave[3]["skipped"] == 13 and by_wave[3]["total"] == 13
    states = {t["schema"]: t for t in report["tenants"]}
    assert states["wv00020"]["error"] == "Skipped: skipped: wave 2 did not succeed (wv00004)"
    assert helpers.snapshot(stack.engine, schemas[7:]) == untouched
    assert "wave" in stack.cli("status", str(report["run_id"])).out

    repair_tenants(stack, ["wv00004"])
    again = stack.cli("retry", str(report["run_id"]), "--wait")
    assert again.code == 0, again.err
    assert set(stack.revisions(schemas).values()) == {R2}


def _holding(stack: Stack, prefix: str, count: int) -> tuple[list[str], "Popen[str]", int]:
    """``count`` tenants at r1 in a run to r2 in waves of 2 then the rest, held after its first
    wave: (the schemas, its producer, still waiting for ``continue``, the run id)."""
    schemas = stack.provision(prefix, count)
    producer = stack.cli_background(
        "migrate", "--revision", R2, "--wave", "2", "--wave-hold", "--wait", "--json"
    )
    assert producer.stderr is not None
    for line in producer.stderr:  # the condition meant: the producer says it holds
        if "`tenantfleet continue" in line:
            break
    with stack.engine.connect() as connection:
        return schemas, producer, runs.latest_run_id(connection)


def test_a_held_run_waits_for_continue_between_waves(stack: Stack) -> None:
    schemas, producer, run_id = _holding(stack, "wh", 6)
    try:
        with stack.engine.connect() as connection:
            counts = runs.counts_by_wave(connection, run_id)
        assert counts[1].succeeded == 2 and counts[2].queued == 4  # wave 2 not sent
        status = _json(stack.cli("status", str(run_id), "--json"))
        assert status["wave"] == 1 and status["finished_at"] is None
        assert status["replay"] == {"replayed": [R2], "online": []}  # the run record says
        go_on = stack.cli("continue", str(run_id))
        assert go_on.code == 0 and "goes on after wave 1" in go_on.out
        out, err = producer.communicate(timeout=300)
    finally:
        producer.kill()
    assert producer.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert set(stack.revisions(schemas).values()) == {R2}
    closed = stack.cli("continue", str(run_id))
    assert closed.code == 2 and "is closed" in closed.err


def test_a_run_cancelled_while_held_between_waves_sends_nothing_more(stack: Stack) -> None:
    schemas, producer, run_id = _holding(stack, "wc", 6)
    try:
        cancelled = stack.cli("cancel", str(run_id))
        assert cancelled.code == 0, cancelled.err
        out, err = producer.communicate(timeout=300)
    finally:
        producer.kill()
    assert producer.returncode == 1, err
    report = json.loads(out)
    assert report["status"] == "cancelled"
    assert {w["wave"]: w["cancelled"] for w in report["waves"]} == {1: 0, 2: 4}
    found = stack.revisions(schemas)
    assert {found[s] for s in schemas[:2]} == {R2} and {found[s] for s in schemas[2:]} == {R1}


def test_rollback_brings_every_tenant_back_to_its_own_revision(stack: Stack) -> None:
    at_r1 = stack.provision("rb", 6)
    at_r2 = stack.provision("rc", 4, R2)
    before = helpers.snapshot(stack.engine, at_r1 + at_r2)
    first = _json(stack.cli("migrate", "--wait", "--json"))
    assert first["status"] == "succeeded"
    assert set(stack.revisions(at_r1 + at_r2).values()) == {R3}
    # one tenant moved since: it is listed, not touched
    assert stack.cli("tenant", "downgrade", "rb00006", "--revision", R2).code == 0

    dry = _json(stack.cli("rollback", str(first["run_id"]), "--dry-run", "--json"))
    assert dry["drops_tables"] == ["audit_log"]  # r2's downgrade, with its rows
    assert {t["schema"] for t in dry["skipped"]} == {"rb00006"}
    unasked = stack.cli("rollback", str(first["run_id"]), "--wait")  # no TTY, no --yes
    assert unasked.code == 2 and "drops tables audit_log" in unasked.err
    assert set(stack.revisions(at_r1[:5] + at_r2).values()) == {R3}  # nothing changed
    result = stack.cli("rollback", str(first["run_id"]), "--wave", "3", "--yes", "--wait", "--json")
    assert result.code == 1, result.err  # the moved tenant is skipped
    report = _json(result)
    assert report["rollback_of"] == first["run_id"]
    assert report["parent_run_id"] == first["run_id"]
    states = {t["schema"]: t for t in report["tenants"]}
    assert states["rb00006"]["status"] == "skipped"
    assert "not at 20250415_000000 where run" in states["rb00006"]["error"]
    assert {states[s]["to_revision"] for s in at_r1[:5]} == {R1}
    assert {states[s]["to_revision"] for s in at_r2} == {R2}
    found = stack.revisions(at_r1 + at_r2)
    assert {found[s] for s in at_r1[:5]} == {R1} and {found[s] for s in at_r2} == {R2}
    assert found["rb00006"] == R2
    assert stack.cli("tenant", "downgrade", "rb00006", "--revision", R1).code == 0
    assert helpers.snapshot(stack.engine, at_r1 + at_r2) == before

    again = stack.cli("rollback", str(report["run_id"]))
    assert again.code == 2 and "is itself a rollback" in again.err


OUTSIDE = """
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN plan_id bigint REFERENCES public.plans (id)")


def downgrade() -> None:
    op.drop_column("users", "plan_id")
"""
NO_DOWNGRADE = """
def upgrade() -> None:
    op.add_column("users", sa.Column("nick", sa.Text()))
"""
BIG_INDEX = """
def upgrade() -> None:
    op.create_index("ix_orders_amount", "orders", ["amount"])


def downgrade() -> None:
    op.drop_index("ix_orders_amount", "orders")
"""
DROP_COLUMN = """
def upgrade() -> None:
    op.drop_column("users", "nick")


def downgrade() -> None:
    op.add_column("users", sa.Column("nick", sa.Text()))
"""
READS = """
def upgrade() -> None:
    users = op.get_bind().execute(sa.text("SELECT count(*) FROM users")).scalar()
    op.execute(f"COMMENT ON TABLE users IS 'had {users} users'")


def downgrade() -> None:
    op.execute("SELECT 1")
"""
BLOCKING = {
    "l0001": "outside-tenant-schema",
    "l0002": "missing-downgrade",
    "l0003": "index-on-big-table",
    "l0004": "ban-drop-column",
}


def test_the_lint_gate_refuses_blocking_findings_unless_allowed_by_name(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = helpers.tenant_env(
        tmp_path,
        [
            ("l0001", OUTSIDE),
            ("l0002", NO_DOWNGRADE),
            ("l0003", BIG_INDEX),
            ("l0004", DROP_COLUMN),
            ("l0005", READS),
        ],
    )
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    monkeypatch.setenv("TENANTFLEET_LINT_BIG_TABLE_ROWS", "1000")
    with running_fleet(
        pg_admin_url, template_url, tmp_path / "fleet", TENANTFLEET_TENANT_ALEMBIC=str(ini)
    ) as stack:
        schemas = stack.provision("li", 3, R3)
        with stack.engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE public.plans (id bigint PRIMARY KEY)"))
            connection.execute(
                sa.text(
                    "INSERT INTO li00002.orders (user_id, amount, status)"
                    " SELECT (SELECT min(id) FROM li00002.users), g, 'new'"
                    " FROM generate_series(1, 5000) AS g"
                )
            )
            connection.execute(sa.text("ANALYZE li00002.orders"))
        before = helpers.snapshot(stack.engine, schemas)

        linted = stack.cli("lint", "--json")
        assert linted.code == 2, linted.err
        report = _json(linted)
        assert report["revisions"] == ["l0001", "l0002", "l0003", "l0004", "l0005"]
        errors = {(f["revision"], f["rule"]) for f in report["findings"] if f["level"] == "error"}
        assert errors == set(BLOCKING.items())
        big = next(f for f in report["findings"] if f["rule"] == "index-on-big-table")
        assert "li00002" in big["message"] and "ix_orders_amount" in big["statement"]
        assert any(
            f["revision"] == "l0005" and f["rule"] == "not-rendered" and f["level"] == "warning"
            for f in report["findings"]
        )
        assert "blocking findings" in stack.cli("lint").out

        refused = stack.cli("migrate", "--wait")
        assert refused.code == 2
        assert "the lint gate refuses the run: 4 blocking findings" in refused.err
        for revision, rule in BLOCKING.items():
            assert f"  {revision} {rule}: " in refused.err
        assert helpers.snapshot(stack.engine, schemas) == before
        with stack.engine.connect() as connection:
            assert connection.execute(sa.text("SELECT count(*) FROM migration_runs")).scalar() == 0

        three = [f"--allow={rule}" for rule in list(BLOCKING.values())[:3]]
        still = stack.cli("migrate", *three)
        assert still.code == 2 and "1 blocking findings" in still.err
        allowed = stack.cli("lint", "--json", TENANTFLEET_LINT_ALLOW=",".join(BLOCKING.values()))
        assert allowed.code == 0 and _json(allowed)["blocking"] == 0

        ran = stack.cli("migrate", *three, "--allow", "ban-drop-column", "--wait", "--json")
        assert ran.code == 0, ran.err
        assert set(stack.revisions(schemas).values()) == {"l0005"}
        refused_back = stack.cli("rollback", str(_json(ran)["run_id"]))
        assert refused_back.code == 2
        assert "cannot be rolled back: no downgrade() in l0002" in refused_back.err
        assert set(stack.revisions(schemas).values()) == {"l0005"}


HANDLE = """
tenantfleet_replay = True


def upgrade() -> None:
    op.execute("ALTER TABLE users ADD COLUMN IF NOT EXISTS handle text")
    op.execute("UPDATE users SET handle = 'u' || id WHERE handle IS NULL")


def downgrade() -> None:
    op.drop_column("users", "handle")
"""
CONCURRENT_INDEX = """
def upgrade() -> None:
    op.execute("COMMENT ON COLUMN users.handle IS 'unique soon'")
    with op.get_context().autocommit_block():
        op.create_index(
            "ux_users_handle", "users", ["handle"], unique=True, postgresql_concurrently=True,
            if_not_exists=True,
        )
    op.execute("COMMENT ON COLUMN users.handle IS 'unique'")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ux_users_handle", "users", postgresql_concurrently=True)
"""
INVALID_INDEXES = sa.text(
    "SELECT count(*) FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
    " WHERE c.relname = 'ux_users_handle' AND NOT i.indisvalid"
)


def test_a_concurrent_index_revision_runs_outside_one_transaction_with_honest_records(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 tenants through a revision with ``autocommit_block()``; one fails mid-build (a
    duplicate under the new unique index): its invalid index is dropped, it is recorded failed
    at the revision it reached (the one before, committed), and a retry finishes it."""
    ini = helpers.tenant_env(tmp_path, [("c0001", HANDLE), ("c0002", CONCURRENT_INDEX)])
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    with running_fleet(
        pg_admin_url, template_url, tmp_path / "fleet", TENANTFLEET_TENANT_ALEMBIC=str(ini)
    ) as stack:
        schemas = stack.provision("ci", 100, R3)
        with stack.engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE ci00042.users ADD COLUMN handle text"))
            connection.execute(sa.text("UPDATE ci00042.users SET handle = 'same'"))
        linted = _json(stack.cli("lint", "--json"))
        assert linted["blocking"] == 0  # a concurrent build in an autocommit block is fine

        result = stack.cli("migrate", "--wait", "--json")
        assert result.code == 1, result.err
        report = _json(result)
        states = {t["schema"]: t for t in report["tenants"]}
        assert report["counts"]["succeeded"] == 99 and report["counts"]["failed"] == 1
        broken = states["ci00042"]
        assert broken["status"] == "failed" and broken["reached_revision"] == "c0001"
        assert "UniqueViolation" in broken["error"] or "duplicate" in broken["error"]
        found = stack.revisions(schemas)
        assert found["ci00042"] == "c0001"
        assert {v for s, v in found.items() if s != "ci00042"} == {"c0002"}
        with stack.engine.connect() as connection:
            assert connection.execute(INVALID_INDEXES).scalar() == 0
            valid = connection.execute(
                sa.text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ux_users_handle'")
            ).scalar()
            assert valid == 99
        # the registry records where the span stopped: fleet's view equals the schemas'
        recorded = _json(stack.cli("fleet", "--json"))
        assert recorded["by_revision"] == {"c0001": 1, "c0002": 99}
        assert _json(stack.cli("fleet", "--verify", "--json"))["unrecorded"] == {}

        with stack.engine.begin() as connection:
            connection.execute(sa.text("UPDATE ci00042.users SET handle = 'u' || id"))
        retried = stack.cli("retry", str(report["run_id"]), "--wait")
        assert retried.code == 0, retried.err
        assert set(stack.revisions(schemas).values()) == {"c0002"}
        with stack.engine.connect() as connection:
            assert connection.execute(INVALID_INDEXES).scalar() == 0
            valid = connection.execute(
                sa.text("SELECT count(*) FROM pg_indexes WHERE indexname = 'ux_users_handle'")
            ).scalar()
            assert valid == 100

        back = stack.cli("rollback", str(report["run_id"]), "--yes", "--wait", "--json")
        assert back.code == 0, back.err  # the 99 it upgraded; the retry's run is its own
        assert {v for s, v in stack.revisions(schemas).items() if s != "ci00042"} == {R3}


CONCURRENT_INDEX_REPLAYED = """
import os

tenantfleet_replay = True


def upgrade() -> None:
    calls = os.environ.get("TF_TEST_UPGRADE_CALLS")
    if calls:  # how often Alembic ran this function: per tenant online, per render replayed
        with open(calls, "a") as seen:
            seen.write("called\\n")
    op.alter_column("users", "handle", existing_type=sa.Text(), comment="unique soon")
    with op.get_context().autocommit_block():
        op.create_index(
            "ux_users_handle", "users", ["handle"], unique=True, postgresql_concurrently=True,
            if_not_exists=True,
        )
    op.alter_column("users", "handle", existing_type=sa.Text(), comment="unique")


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ux_users_handle", "users", postgresql_concurrently=True)
"""


@pytest.mark.parametrize("small_index_rows", ["0", "1000"])
def test_a_concurrent_index_revision_that_opts_in_is_replayed_in_alembics_own_transactions(
    pg_admin_url: str,
    template_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    small_index_rows: str,
) -> None:
    """The same revision written with Alembic's operations and ``tenantfleet_replay = True``:
    rendered once per worker process, not run per tenant. With ``small_index_rows`` 0, in the
    same transactions as Alembic (the comment before the block commits, the index builds in
    autocommit, the version row commits with what follows): a tenant whose build fails is left
    as Alembic would leave it, its invalid index dropped. With the default, the tenants' users
    tables (50 rows) are small: each span is one transaction, the index built in it, and the
    failing tenant is untouched. A retry finishes it either way."""
    calls = tmp_path / "upgrade-calls"
    ini = helpers.tenant_env(tmp_path, [("c0001", HANDLE), ("c0002", CONCURRENT_INDEX_REPLAYED)])
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        TENANTFLEET_TENANT_ALEMBIC=str(ini),
        TF_TEST_UPGRADE_CALLS=str(calls),
        TENANTFLEET_SMALL_INDEX_ROWS=small_index_rows,
    ) as stack:
        schemas = stack.provision("cr", 30, R3)
        first = stack.cli("migrate", "--revision", "c0001", "--wait")  # raw SQL: online
        assert first.code == 0, first.err
        with stack.engine.begin() as connection:
            connection.execute(sa.text("UPDATE cr00017.users SET handle = 'same'"))
        result = stack.cli("migrate", "--wait", "--json")
        assert result.code == 1, result.err
        report = _json(result)
        assert report["counts"] == {**report["counts"], "succeeded": 29, "failed": 1}
        (broken,) = [t for t in report["tenants"] if t["status"] == "failed"]
        assert broken["schema"] == "cr00017"
        # step-wise: it reached the revision before (where it began); one transaction: untouched
        assert broken["reached_revision"] == ("c0001" if small_index_rows == "0" else None)
        assert "UniqueViolation" in broken["error"] or "duplicate" in broken["error"]
        assert len(calls.read_text().splitlines()) < 29  # rendered per process, not per tenant
        found = stack.revisions(schemas)
        assert found["cr00017"] == "c0001"
        assert {v for s, v in found.items() if s != "cr00017"} == {"c0002"}
        comments = sa.text(
            "SELECT n.nspname, col_description(c.oid, a.attnum) FROM pg_attribute AS a"
            " JOIN pg_class AS c ON c.oid = a.attrelid JOIN pg_namespace AS n"
            " ON n.oid = c.relnamespace WHERE c.relname = 'users' AND a.attname = 'handle'"
            " AND n.nspname LIKE 'cr%'"
        )
        with stack.engine.connect() as connection:
            assert connection.execute(INVALID_INDEXES).scalar() == 0
            said: dict[str, str] = {n: c for n, c in connection.execute(comments).all()}
        if small_index_rows == "0":  # its first transaction committed (as online), not its last
            assert said.pop("cr00017") == "unique soon"
        else:  # one transaction: all or nothing
            assert said.pop("cr00017") is None
        assert set(said.values()) == {"unique"}

        with stack.engine.begin() as connection:
            connection.execute(sa.text("UPDATE cr00017.users SET handle = 'u' || id"))
        retried = stack.cli("retry", str(report["run_id"]), "--wait")
        assert retried.code == 0, retried.err
        assert set(stack.revisions(schemas).values()) == {"c0002"}
        with stack.engine.connect() as connection:
            valid = connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_indexes WHERE indexname = 'ux_users_handle'"
                    " AND schemaname LIKE 'cr%'"
                )
            ).scalar()
        assert valid == 30


def _held(stack: Stack, prefix: str, count: int) -> tuple[list[str], int]:
    """``_holding``, then its producer killed."""
    schemas, producer, run_id = _holding(stack, prefix, count)
    producer.kill()
    producer.communicate()
    return schemas, run_id


def test_a_held_run_stays_held_without_its_producer_and_moves_no_tenant_twice(
    stack: Stack,
) -> None:
    schemas, run_id = _held(stack, "hk", 6)
    status = stack.cli("status", str(run_id))
    assert f"held at wave 1: `tenantfleet continue {run_id}`" in status.out, status.out
    assert _json(stack.cli("status", str(run_id), "--json"))["status"] == "held"
    assert f"held at wave 1: `tenantfleet continue {run_id}`" in stack.cli("runs").out

    overtake = stack.cli("migrate", "--wait")  # the single-run guard: held means held
    assert overtake.code == 2, overtake.err
    assert f"run {run_id} is held at wave 1" in overtake.err
    assert f"`tenantfleet continue {run_id}`" in overtake.err
    resumed = stack.cli("resume", str(run_id))
    assert resumed.code == 2 and f"`tenantfleet continue {run_id}`" in resumed.err
    dry = stack.cli("migrate", "--dry-run")
    assert f"migrate would be refused now: run {run_id} is held at wave 1" in dry.out, dry.out

    # while held, an operator takes a wave-2 tenant past the run's target by hand
    assert stack.cli("tenant", "upgrade", "hk00005", "--revision", R3).code == 0
    go_on = stack.cli("continue", str(run_id), "--timeout", "120")
    assert go_on.code == 0, go_on.err
    closed = stack.until_closed(run_id)
    assert closed is not None and closed.status == "partial"
    report = _json(stack.cli("status", str(run_id), "--json"))
    tenants = {t["schema"]: t for t in report["tenants"]}
    moved = tenants["hk00005"]
    assert moved["status"] == "skipped", moved
    assert moved["error"].startswith(f"MovedSince: moved to {R3} since the plan saw it at {R1}")
    assert "moved by hand" in moved["error"]
    found = stack.revisions(schemas)
    assert found["hk00005"] == R3  # never taken back down
    assert {found[s] for s in schemas if s != "hk00005"} == {R2}
    assert {t["status"] for s, t in tenants.items() if s != "hk00005"} == {"succeeded"}


def test_a_tenant_moved_by_another_run_is_skipped_with_that_run_named(stack: Stack) -> None:
    """An abandoned run resumed after another run moved its tenants touches none of them."""
    schemas, run_id = _held(stack, "hm", 4)
    cancelled = stack.cli("cancel", str(run_id))
    assert cancelled.code == 0, cancelled.err
    later = _json(stack.cli("migrate", "--wait", "--json"))
    assert later["status"] == "succeeded" and set(stack.revisions(schemas).values()) == {R3}
    # a message of the first run delivered late (a redelivery, a resend): it finds the tenant
    # moved, touches nothing and records nothing in the closed run
    with stack.engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE public.migration_run_tenants SET status = 'queued', finished_at = NULL"
                " WHERE run_id = :run AND schema_name = 'hm00004'"
            ),
            {"run": run_id},
        )
        connection.execute(
            sa.text("UPDATE public.migration_runs SET finished_at = NULL WHERE id = :run"),
            {"run": run_id},
        )
    stack.send_by_hand(run_id, "hm00004", R2).get(timeout=120)
    with stack.engine.connect() as connection:
        (row,) = [t for t in runs.tenants_of(connection, run_id) if t.schema_name == "hm00004"]
    assert row.status == "skipped" and row.error_class == "MovedSince"
    assert f"moved by run {later['run_id']}" in (row.error_message or "")
    assert stack.revisions(["hm00004"])["hm00004"] == R3


HIDDEN_BEHIND_A_SET = """
def upgrade() -> None:
    op.execute(
        "SET LOCAL lock_timeout = '5s'; ALTER TABLE public.tenant_registry ADD COLUMN hacked int"
    )


def downgrade() -> None:
    op.execute("SELECT 1")
"""
DROPS_IN_A_DO_BLOCK = """
def upgrade() -> None:
    op.execute("DO $$ BEGIN EXECUTE 'ALTER TABLE users DROP COLUMN email'; END $$")


def downgrade() -> None:
    op.execute("SELECT 1")
"""


def test_the_lint_gate_reads_every_statement_and_blocks_what_it_cannot_read(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DDL on public behind an earlier statement of the same string, and a DROP COLUMN inside a
    DO block, each passed the gate before (every tenant changed, exit 0): now the run is
    refused, nothing changes, and --json lists the findings."""
    ini = helpers.tenant_env(
        tmp_path, [("h0001", HIDDEN_BEHIND_A_SET), ("h0002", DROPS_IN_A_DO_BLOCK)]
    )
    monkeypatch.setenv("TENANTFLEET_TENANT_ALEMBIC", str(ini))
    with running_fleet(
        pg_admin_url, template_url, tmp_path / "fleet", TENANTFLEET_TENANT_ALEMBIC=str(ini)
    ) as stack:
        schemas = stack.provision("hb", 2, R3)
        before = helpers.snapshot(stack.engine, schemas)
        refused = stack.cli("migrate", "--wait", "--json")
        assert refused.code == 2, refused.err
        found = {(f["revision"], f["rule"]) for f in _json(refused)["findings"]}
        assert found == {("h0001", "outside-tenant-schema"), ("h0002", "unchecked-code")}
        assert helpers.snapshot(stack.engine, schemas) == before
        with stack.engine.connect() as connection:
            columns = connection.execute(
                sa.text(
                    "SELECT count(*) FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND column_name = 'hacked'"
                )
            ).scalar()
        assert columns == 0
