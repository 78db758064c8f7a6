"""Operating the fleet: status, runs, fleet, retry, resume, canary, max-failures, dry-run, guard."""

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tenantfleet import config, db, runs
from tenantfleet.cli import build_parser
from tests import helpers
from tests.stack import Stack
from tests.test_fleet import break_tenants, migrate, repair_tenants

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


@pytest.fixture(autouse=True)
def fresh_registry(stack: Stack) -> Iterator[None]:
    stack.deactivate_all()
    yield


def test_retry_after_a_fix_brings_every_tenant_to_the_target(stack: Stack) -> None:
    schemas = stack.provision("rt", 8)
    break_tenants(stack, ["rt00002", "rt00005"])
    first = json.loads(migrate(stack, "--wait", "--json", "--revision", R2).out)
    assert first["counts"]["failed"] == 2

    nothing_fixed = stack.cli("retry", str(first["run_id"]), "--wait", "--tenant", "rt00005")
    assert nothing_fixed.code == 1 and "rt00005" in nothing_fixed.out
    assert "rt00002" not in nothing_fixed.out  # --tenant narrowed it

    refused = stack.cli("retry", str(first["run_id"]), "--tenant", "rt00001")
    assert refused.code == 2 and "not failed, skipped or unfinished" in refused.err

    repair_tenants(stack, ["rt00002", "rt00005"])
    retried = stack.cli("retry", str(first["run_id"]), "--wait", "--json")
    assert retried.code == 0, retried.err
    report = json.loads(retried.out)
    assert report["parent_run_id"] == first["run_id"] and report["target_revision"] == R2
    assert sorted(t["schema"] for t in report["tenants"]) == ["rt00002", "rt00005"]
    assert set(stack.revisions(schemas).values()) == {R2}
    again = stack.cli("retry", str(report["run_id"]))
    assert again.code == 0 and "nothing to retry" in again.out


def test_status_runs_and_fleet_show_where_things_stand(stack: Stack) -> None:
    schemas = stack.provision("st", 6)
    break_tenants(stack, ["st00004"])
    run = json.loads(migrate(stack, "--wait", "--json", "--revision", R2).out)
    with stack.engine.begin() as connection:
        connection.execute(sa.text("UPDATE st00006.alembic_version SET version_num = 'dead1'"))

    status = stack.cli("status", str(run["run_id"]), "--json")
    assert status.code == 1
    shown = json.loads(status.out)
    assert {k: shown[k] for k in ("run_id", "status", "counts", "tenants")} == {
        k: run[k] for k in ("run_id", "status", "counts", "tenants")
    }
    assert len(shown["slowest"]) == 5
    text = stack.cli("status").out  # the latest run
    assert f"run {run['run_id']}: partial" in text and "slowest tenants:" in text
    assert "st00004  failed" in text and "DuplicateTable" in text

    listed = json.loads(stack.cli("runs", "--json", "--limit", "1").out)
    assert [r["id"] for r in listed] == [run["run_id"]]
    assert "partial" in stack.cli("runs").out

    # the record: what tenantfleet did (st00006 changed by hand since, unseen)
    recorded = json.loads(stack.cli("fleet", "--json").out)
    assert recorded["read_schemas"] is False and recorded["unrecorded"] == {}
    assert recorded["by_revision"] == {R1: 1, R2: 5} and recorded["unknown"] == {}
    assert "as the registry records them" in stack.cli("fleet").out
    # every schema read: the hand-made change shows, against the record
    surveyed = json.loads(stack.cli("fleet", "--verify", "--json").out)
    assert surveyed["head"] == R3 and surveyed["tenants"] == 6 and surveyed["read_schemas"]
    assert surveyed["by_revision"] == {R1: 1, R2: 4, "dead1": 1}
    assert surveyed["unknown"] == {"st00006": "dead1"}
    assert surveyed["unrecorded"] == {"st00006": {"recorded": R2, "found": "dead1"}}
    assert sorted(surveyed["behind"]) == sorted(set(schemas) - {"st00006"})
    text = stack.cli("fleet", "--verify").out
    assert "drift, at a revision the scripts do not know (1): st00006=dead1" in text
    assert f"st00006 at dead1, recorded {R2}" in text


SAYS_WHAT_LOADED = (
    "import sys\n"
    "from tenantfleet.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('loaded alembic:', 'alembic' in sys.modules, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def test_the_read_only_commands_never_load_alembic(stack: Stack, tmp_path: Path) -> None:
    """Alembic is a third of a command's start: the views that need none of it import none of
    it (``tenantfleet.versions``), and ``fleet``, which reads the tenant scripts, does."""
    stack.provision("ro", 2)
    run = json.loads(migrate(stack, "--wait", "--json", "--revision", R2).out)
    run_id = str(run["run_id"])
    page = str(tmp_path / "report.html")
    for args, loads in [
        (["status", run_id], False),
        (["status", run_id, "--json"], False),
        (["runs"], False),
        (["report", run_id, "--html", page], False),
        (["metrics"], False),
        (["fleet"], True),
    ]:
        proc = subprocess.run(
            [sys.executable, "-c", SAYS_WHAT_LOADED, *args],
            env={**os.environ, "TENANTFLEET_DATABASE_URL": stack.database_url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, (args, proc.stderr)
        assert proc.stderr.splitlines()[-1] == f"loaded alembic: {loads}", args


def test_canary_failure_stops_the_rollout_before_the_rest_is_touched(stack: Stack) -> None:
    schemas = stack.provision("cn", 10)
    break_tenants(stack, ["cn00002"])
    untouched = helpers.snapshot(stack.engine, schemas[2:])
    result = migrate(stack, "--canary", "2", "--wait", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    states = {t["schema"]: t["status"] for t in report["tenants"]}
    assert states["cn00001"] == "succeeded" and states["cn00002"] == "failed"
    assert {states[s] for s in schemas[2:]} == {"skipped"}
    assert report["status"] == "failed"
    assert helpers.snapshot(stack.engine, schemas[2:]) == untouched

    repair_tenants(stack, ["cn00002"])
    named = migrate(stack, "--canary-tenant", "cn00005", "--wait", "--json")
    assert named.code == 0, named.err
    assert set(stack.revisions(schemas).values()) == {R3}


def test_max_failures_skips_the_tenants_not_started(stack: Stack) -> None:
    schemas = stack.provision("mf", 24)
    broken = schemas[:4]
    break_tenants(stack, broken)
    result = migrate(stack, "--max-failures", "2", "--wait", "--json")
    assert result.code == 1
    report = json.loads(result.out)
    counts = report["counts"]
    assert report["status"] == "failed"
    assert counts["failed"] >= 2 and counts["skipped"] >= 10
    assert counts["failed"] + counts["skipped"] + counts["succeeded"] == 24
    skipped = [t["schema"] for t in report["tenants"] if t["status"] == "skipped"]
    assert set(stack.revisions(skipped).values()) == {R1}
    assert all(
        "--max-failures" in t["error"] for t in report["tenants"] if t["status"] == "skipped"
    )


def test_dry_run_prints_the_plan_and_sql_and_touches_nothing(stack: Stack) -> None:
    schemas = stack.provision("dr", 3)
    before = helpers.snapshot(stack.engine, [*schemas, "public"])
    with stack.engine.connect() as connection:
        runs_before = len(runs.list_runs(connection, 1000))
    plan = stack.cli("migrate", "--dry-run", "--sql", "--revision", R2)
    assert plan.code == 0, plan.err
    assert "dry run: 3 tenants would be migrated to " + R2 in plan.out
    assert "dr00001  " + R1 in plan.out
    assert "ALTER TABLE users ADD COLUMN phone VARCHAR(64)" in plan.out
    assert "quote_ident('dr00001')" in plan.out
    as_json = json.loads(stack.cli("migrate", "--dry-run", "--json", "--canary", "1").out)
    assert as_json["canaries"] == ["dr00001"] and len(as_json["tenants"]) == 3
    assert helpers.snapshot(stack.engine, [*schemas, "public"]) == before
    with stack.engine.connect() as connection:
        assert len(runs.list_runs(connection, 1000)) == runs_before


def finish(process: "subprocess.Popen[str]") -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def test_two_concurrent_migrates_yield_exactly_one_run(stack: Stack) -> None:
    stack.provision("gd", 4)
    blocker = stack.engine.connect()
    transaction = blocker.begin()
    blocker.execute(sa.text("LOCK TABLE gd00001.users IN ACCESS EXCLUSIVE MODE"))
    env = {"TENANTFLEET_DATABASE_URL": stack.database_url}
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", "migrate"],
            env={**stack.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = [finish(r) for r in racers]
    try:
        codes = sorted(code for code, _, _ in outcomes)
        assert codes == [0, 2], outcomes
        refusal = next(err for code, _, err in outcomes if code == 2)
        assert "is active" in refusal and "--wait-for-active" in refusal
        waiter = subprocess.Popen(
            [sys.executable, "-m", "tenantfleet", "migrate", "--wait-for-active", "--wait"],
            env={**stack.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.5)
        assert waiter.poll() is None  # still waiting for the active run
    finally:
        transaction.rollback()
        blocker.close()
    out, err = waiter.communicate(timeout=120)
    assert waiter.returncode == 0, err
    assert "waiting for run" in err and "nothing_to_do" in out


def test_an_abandoned_run_blocks_nobody_and_resume_finishes_it(stack: Stack) -> None:
    """A producer that died after writing its run and before enqueuing anything."""
    schemas = stack.provision("ab", 3)
    with stack.engine.begin() as connection:
        run_id = runs.create_run(connection, R2, [(s, R1) for s in schemas])
    # never sent and nobody sending it (no dispatch lock): abandoned at once, not after a delay
    status = stack.cli("status", str(run_id))
    assert status.code == 1 and "ABANDONED" in status.out  # 1: it needs a person
    other = stack.provision("ab2", 1)
    assert stack.cli("migrate", "--wait", "--tenant", other[0]).code == 0

    resumed = stack.cli("resume", str(run_id), "--wait", "--json")
    assert resumed.code == 0, resumed.err
    assert json.loads(resumed.out)["status"] == "succeeded"
    assert set(stack.revisions(schemas).values()) == {R2}
    done = stack.cli("resume", str(run_id))
    assert done.code == 0 and "nothing to resume" in done.err


def test_every_compose_command_is_one_the_cli_accepts(repo_root: Path, stack: Stack) -> None:
    compose = yaml.safe_load((repo_root / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "worker", "flower", "migrate"} <= set(services)
    parser = build_parser()
    for name in ("worker", "flower", "migrate"):
        command = [
            arg.replace("${WORKER_CONCURRENCY:-2}", "2") for arg in services[name]["command"]
        ]
        parsed = parser.parse_args(command)
        assert parsed.command == name
        assert "healthcheck" in services[name] or name == "migrate"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert "change-me" not in (repo_root / "docker-compose.yml").read_text()
    stack.provision("dc", 2)
    hook = stack.cli(*services["migrate"]["command"])  # the deploy hook, against our servers
    assert hook.code == 0 and json.loads(hook.out)["counts"]["succeeded"] == 2


def test_status_without_runs_and_unknown_run_are_clear_errors(database_url: str) -> None:
    missing = helpers.run_cli("status")
    assert missing.code == 2 and "no run recorded yet" in missing.err
    unknown = helpers.run_cli("status", "4242")
    assert unknown.code == 2 and "no run with id 4242" in unknown.err
    settings = config.load_settings()
    assert settings.stale_run_after == 600.0
    with db.begin(db.make_engine(database_url)) as connection:
        assert runs.open_runs(connection) == []


def test_queues_names_what_the_workers_consume(stack: Stack) -> None:
    """What a queue-length autoscaler (deploy/kubernetes/keda-scaledobject.yaml) needs."""
    found = stack.cli("queues", "--json")
    assert found.code == 0, found.err
    assert json.loads(found.out) == {
        "tenants": stack.queues.tenants,
        "control": stack.queues.control,
    }
