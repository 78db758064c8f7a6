"""``tenantfleet cancel RUN``: tenants not started are recorded ``cancelled`` and never touched,
tenants in flight finish, the run closes ``cancelled``; ``retry`` picks the cancelled ones up.
While two tenants wait on a lock, ``status`` names the session that holds it."""

import json
import time
from pathlib import Path

import sqlalchemy as sa

from tenantfleet import fleet_setup, runs
from tests.stack import running_fleet

R1, R2 = fleet_setup.R1, fleet_setup.R2

WAITING_FOR_LOCKS = sa.text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def test_cancel_touches_no_tenant_not_started_and_lets_those_in_flight_finish(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        concurrency=2,
        TENANTFLEET_LOCK_TIMEOUT="300",
    ) as stack:
        schemas = stack.provision("x", 30)
        blocker = stack.engine.connect()
        blocker.begin()
        blocker_pid = blocker.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        blocker.execute(sa.text("LOCK TABLE x00001.users, x00002.users IN ACCESS EXCLUSIVE MODE"))
        migrate = stack.cli_background("migrate", "--revision", R2, "--wait", "--json")
        try:
            deadline = time.monotonic() + 120
            with stack.engine.connect() as watcher:
                while watcher.execute(WAITING_FOR_LOCKS).scalar_one() < 2:
                    assert time.monotonic() < deadline, "the two workers never blocked"
                    time.sleep(0.1)
                run_id = runs.latest_run_id(watcher)
            status = stack.cli("status", str(run_id), "--json")
            assert status.code == 3, status.err  # open and alive
            blocked = {b["tenant"]: b for b in json.loads(status.out)["blocked"]}
            assert set(blocked) == {"x00001", "x00002"}
            assert blocked["x00001"]["blocker_pid"] == blocker_pid
            assert blocked["x00001"]["waits_for"].endswith("on x00001.users")
            assert blocked["x00001"]["blocker_state"] == "idle in transaction"
            assert "LOCK TABLE" in blocked["x00001"]["blocker_query"]
            text = stack.cli("status", str(run_id)).out
            assert (
                "tenants waiting for a lock, and who holds it" in text and str(blocker_pid) in text
            )
            cancelled = stack.cli("cancel", str(run_id), "--reason", "bad deploy: stop")
            assert cancelled.code == 0, cancelled.err
            assert "28 tenants not started are cancelled" in cancelled.err
            assert "2 in flight finish" in cancelled.err
            again = stack.cli("cancel", str(run_id))
            assert again.code == 0  # still open: nothing more to cancel, said so
        finally:
            blocker.rollback()
            blocker.close()
        out, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 1, err
        report = json.loads(out)
        assert report["status"] == "cancelled"
        states = {t["schema"]: t for t in report["tenants"]}
        assert {s for s, t in states.items() if t["status"] == "succeeded"} == {
            "x00001",
            "x00002",
        }
        rest = [s for s in schemas if s not in ("x00001", "x00002")]
        assert {states[s]["status"] for s in rest} == {"cancelled"}
        assert states[rest[0]]["error"] == "Cancelled: bad deploy: stop"
        assert {s for s, v in stack.revisions(schemas).items() if v == R2} == {"x00001", "x00002"}
        closed = stack.cli("cancel", str(run_id))
        assert closed.code == 2 and "is closed (cancelled): nothing to cancel" in closed.err
        status = stack.cli("status", str(run_id))
        assert status.code == 1 and "28 cancelled" in status.out
        retried = stack.cli("retry", str(run_id), "--wait", "--json")
        assert retried.code == 0, retried.err
        assert json.loads(retried.out)["counts"]["succeeded"] == 28
        assert set(stack.revisions(schemas).values()) == {R2}


def test_every_attempt_at_a_tenant_is_kept_and_listed(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    """A tenant whose table another session holds times out (lock_timeout 1 s in the tests),
    is retried, and succeeds once the lock is gone: ``status RUN --tenant S`` lists both
    attempts with worker, times, outcome and SQLSTATE."""
    with running_fleet(pg_admin_url, template_url, tmp_path / "fleet", concurrency=2) as stack:
        schemas = stack.provision("y", 3)
        blocker = stack.engine.connect()
        blocker.begin()
        blocker.execute(sa.text("LOCK TABLE y00001.users IN ACCESS EXCLUSIVE MODE"))
        migrate = stack.cli_background("migrate", "--revision", R2, "--wait")
        try:
            deadline = time.monotonic() + 120
            with stack.engine.connect() as watcher:
                while True:
                    attempts = watcher.execute(
                        sa.text(
                            "SELECT max(attempts) FROM public.migration_run_tenants"
                            " WHERE schema_name = 'y00001'"
                        )
                    ).scalar()
                    if attempts is not None and attempts >= 2:
                        break
                    assert time.monotonic() < deadline, "the tenant was never retried"
                    time.sleep(0.1)
                run_id = runs.latest_run_id(watcher)
        finally:
            blocker.rollback()
            blocker.close()
        _, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 0, err
        listed = stack.cli("status", str(run_id), "--tenant", "y00001", "--json")
        found = json.loads(listed.out)["attempts"]
        assert [a["attempt"] for a in found] == list(range(1, len(found) + 1))
        assert found[0]["outcome"] == "retrying" and found[0]["sqlstate"] == "55P03"
        assert found[0]["error_message"].startswith("LockNotAvailable: ")
        assert found[-1]["outcome"] == "succeeded" and found[-1]["sqlstate"] is None
        assert all(a["worker"] and a["finished_at"] for a in found)
        text = stack.cli("status", str(run_id), "--tenant", "y00001").out
        assert "attempts:" in text and "55P03" in text
        other = json.loads(stack.cli("status", str(run_id), "--tenant", "y00002", "--json").out)
        assert [a["outcome"] for a in other["attempts"]] == ["succeeded"]
        stranger = stack.cli("status", str(run_id), "--tenant", "nobody")
        assert stranger.code == 2 and "has no tenant nobody" in stranger.err
        assert set(stack.revisions(schemas).values()) == {R2}
