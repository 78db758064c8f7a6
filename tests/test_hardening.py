"""What a new user and an attacker found (issue 11), each reproduced against real workers.

One bad tenant never stops the fleet; every exit code and every ``--json`` tells the truth; a
person waiting hears why within seconds; the registry says what the schemas are.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from tenantfleet import registry, runs
from tests.stack import Stack
from tests.test_fleet import break_tenants, migrate, repair_tenants

R1, R2, R3 = "20250102_000001", "20250301_000000", "20250415_000000"


@pytest.fixture(autouse=True)
def fresh_registry(stack: Stack) -> Iterator[None]:
    stack.deactivate_all()
    yield


def registry_revisions(stack: Stack, schemas: list[str]) -> dict[str, str | None]:
    with stack.engine.connect() as connection:
        return {
            t.schema_name: t.current_revision
            for t in registry.list_tenants(connection)
            if t.schema_name in schemas
        }


# -- B: one bad tenant stops nobody -----------------------------------------------------


def test_tenants_that_cannot_be_migrated_are_skipped_with_a_reason_and_the_rest_go_on(
    stack: Stack,
) -> None:
    schemas = stack.provision("bt", 6)
    with stack.engine.begin() as connection:
        registry.register(connection, "bt_gone", "registered, no schema")
        connection.execute(sa.text("UPDATE bt00004.alembic_version SET version_num = 'zzz999'"))
    dry = json.loads(stack.cli("migrate", "--dry-run", "--json", "--revision", R2).out)
    assert {t["schema"] for t in dry["skipped"]} == {"bt_gone", "bt00004"}  # says it, exit 1
    assert dry["refused_by"] is None
    result = migrate(stack, "--wait", "--json", "--revision", R2)
    assert result.code == 1, result.err
    report = json.loads(result.out)
    by_schema = {t["schema"]: t for t in report["tenants"]}
    assert report["status"] == "partial"
    assert by_schema["bt_gone"]["status"] == "skipped"
    assert "schema does not exist" in by_schema["bt_gone"]["error"]
    assert by_schema["bt00004"]["status"] == "skipped" and "zzz999" in by_schema["bt00004"]["error"]
    others = [s for s in schemas if s != "bt00004"]
    assert all(by_schema[s]["status"] == "succeeded" for s in others)
    assert set(stack.revisions(others).values()) == {R2}
    status = stack.cli("status", str(report["run_id"]))
    assert status.code == 1 and "bt_gone" in status.out and "zzz999" in status.out
    fleet = json.loads(stack.cli("fleet", "--json").out)  # the record: bt00004 changed by hand
    assert "bt_gone" in fleet["missing"] and "bt00004" not in fleet["unknown"]
    verified = json.loads(stack.cli("fleet", "--verify", "--json").out)
    assert "bt_gone" in verified["missing"] and verified["unknown"]["bt00004"] == "zzz999"

    strict = migrate(stack, "--wait", "--strict", "--tenant", "bt_gone", "--tenant", "bt00001")
    assert strict.code == 2 and "cannot be migrated (--strict)" in strict.err

    off = stack.cli("tenant", "deactivate", "bt_gone", "--reason", "churned 2026-11")
    assert off.code == 0, off.err
    stack.cli("tenant", "deactivate", "bt00004", "--reason", "restored from an old backup")
    clean = migrate(stack, "--wait", "--json")
    assert clean.code == 0, clean.err
    assert {t["schema"] for t in json.loads(clean.out)["tenants"]} == set(others)
    listed = json.loads(stack.cli("tenants", "list", "--json").out)
    reasons = {t["schema"]: t["deactivated_reason"] for t in listed}
    assert reasons["bt_gone"] == "churned 2026-11" and reasons["bt00001"] is None
    assert "churned 2026-11" in stack.cli("fleet").out
    assert stack.cli("tenant", "activate", "bt_gone").code == 0
    assert stack.cli("tenant", "deactivate", "nobody_here").code == 2


def test_a_name_tenantfleet_refuses_is_skipped_with_the_reason_and_stops_no_deploy(
    stack: Stack,
) -> None:
    """An app wrote names into the registry that tenantfleet will not touch: every deploy
    exited 2 before, and only SQL could remove them."""
    schemas = stack.provision("un", 2)
    with stack.engine.begin() as connection:
        for odd in ("Acme", "c_eu_berlin-mitte", "public"):
            connection.execute(
                sa.text("INSERT INTO public.tenant_registry (tenant_name, schema_name)"
                        " VALUES (:n, :n)"),
                {"n": odd},
            )  # fmt: skip
    result = migrate(stack, "--wait", "--json", "--revision", R2)
    assert result.code == 1, result.err
    by_schema = {t["schema"]: t for t in json.loads(result.out)["tenants"]}
    for odd in ("Acme", "c_eu_berlin-mitte", "public"):
        assert by_schema[odd]["status"] == "skipped", by_schema[odd]
        assert by_schema[odd]["error"].startswith("InvalidSchemaName: invalid schema name")
    assert {by_schema[s]["status"] for s in schemas} == {"succeeded"}
    assert "'Acme'" in stack.cli("fleet").out
    for odd in ("Acme", "c_eu_berlin-mitte", "public"):
        assert stack.cli("tenant", "deactivate", odd, "--reason", "not ours").code == 0
    assert migrate(stack, "--wait", "--revision", R2).code == 0


# -- C: exit codes and machine output ----------------------------------------------------


def test_a_failed_canary_without_wait_exits_1(stack: Stack) -> None:
    stack.provision("cn", 5)
    break_tenants(stack, ["cn00001"])
    result = migrate(stack, "--canary", "2", "--revision", R2)
    assert result.code == 1, (result.out, result.err)
    assert "failed" in result.out and "cn00001" in result.out
    repair_tenants(stack, ["cn00001"])


def test_every_json_command_prints_json_errors_included(stack: Stack) -> None:
    stack.provision("js", 2)
    done = json.loads(migrate(stack, "--wait", "--json").out)
    nothing = stack.cli("retry", str(done["run_id"]), "--json")
    assert nothing.code == 0
    assert json.loads(nothing.out)["run_id"] is None
    for args in (
        ["status", "987654", "--json"],
        ["migrate", "--revision", "nope", "--json"],
        ["tenant", "status", "ghost", "--json"],
    ):
        failed = stack.cli(*args)
        assert failed.code == 2, args
        assert json.loads(failed.out)["exit_code"] == 2
        assert failed.err.startswith("error: ") and failed.err.count("\n") == 1


def test_timestamps_and_names_have_one_shape(stack: Stack) -> None:
    stack.provision("sh", 1)
    report = json.loads(migrate(stack, "--wait", "--json").out)
    recent = json.loads(stack.cli("runs", "--json", "--limit", "1").out)[0]
    assert "T" in report["created_at"] and "T" in recent["created_at"]
    listed = json.loads(stack.cli("tenants", "list", "--json").out)
    assert all("schema" in t and "schema_name" not in t for t in listed)


def test_a_closed_pipe_is_a_normal_end(stack: Stack) -> None:
    stack.provision("pp", 30)
    env = {"TENANTFLEET_DATABASE_URL": stack.database_url}
    for args in (["tenants", "list"], ["fleet", "--json"]):
        shell = subprocess.run(
            f"{sys.executable} -m tenantfleet {' '.join(args)} | head -1; exit ${{PIPESTATUS[0]}}",
            shell=True,
            executable="/bin/bash",
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert shell.returncode == 0, shell.stderr
        assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["migrate", "--wait", "--timeout", "-5"],
        ["migrate", "--canary", "-1"],
        ["migrate", "--max-failures", "0"],
        ["runs", "--limit", "-1"],
        ["runs", "--limit", "many"],
        ["demo", "--tenants", "0"],
        ["migrate", "--wave", "0"],
        ["migrate", "--wave", "101%"],
        ["migrate", "--wave", "ten"],
        ["migrate", "--wave", "2", "--canary", "1"],
        ["migrate", "--wave-hold"],
        ["migrate", "--allow", "Not A Rule"],
        ["lint", "--allow", "DROP TABLE x"],
        ["rollback", "999999"],
        ["continue", "999999"],
    ],
)
def test_bad_numbers_are_refused_before_anything_happens(stack: Stack, args: list[str]) -> None:
    with stack.engine.connect() as connection:
        before = runs.list_runs(connection, 1)
    result = stack.cli(*args)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    with stack.engine.connect() as connection:
        assert runs.list_runs(connection, 1) == before


def test_a_lock_timeout_in_tenant_upgrade_is_a_tenant_failure_exit_1(stack: Stack) -> None:
    stack.provision("lu", 1)
    with stack.engine.connect() as blocker, blocker.begin():
        blocker.execute(sa.text("LOCK TABLE lu00001.users IN ACCESS EXCLUSIVE MODE"))
        result = stack.cli("tenant", "upgrade", "lu00001", "--revision", R2)
    assert result.code == 1, result.err
    assert "lock timeout" in result.err and result.err.count("\n") == 1
    assert stack.revisions(["lu00001"]) == {"lu00001": R1}


def test_resume_of_a_closed_run_says_there_was_nothing_to_resume(stack: Stack) -> None:
    stack.provision("rz", 1)
    done = json.loads(migrate(stack, "--wait", "--json").out)
    resumed = stack.cli("resume", str(done["run_id"]))
    assert resumed.code == 0
    assert "nothing to resume" in resumed.err and "enqueued" not in resumed.out + resumed.err


# -- the registry tells the truth ---------------------------------------------------------


def open_run(stack: Stack, schemas: list[str], target: str = R2) -> int:
    """A run recorded for ``schemas`` whose tasks nobody sent (yet)."""
    with stack.engine.begin() as connection:
        return runs.create_run(connection, target, [(s, R1) for s in schemas])


def test_the_registry_follows_each_schema_even_before_its_run_closes(stack: Stack) -> None:
    schemas = stack.provision("rg", 3)
    break_tenants(stack, ["rg00002"])
    run_id = open_run(stack, schemas)
    for schema in ("rg00001", "rg00002"):
        stack.send_by_hand(run_id, schema, R2).get(timeout=120, propagate=False)
    with stack.engine.connect() as connection:
        assert runs.get_run(connection, run_id).finished_at is None  # rg00003 is still queued
    assert registry_revisions(stack, ["rg00001", "rg00002"]) == {"rg00001": R2, "rg00002": R1}
    # a person upgrades the failed tenant by hand meanwhile: closing the run keeps that
    repair_tenants(stack, ["rg00002"])
    assert stack.cli("tenant", "upgrade", "rg00002", "--revision", R3).code == 0
    stack.send_by_hand(run_id, "rg00003", R2).get(timeout=120)
    assert stack.until_closed(run_id) is not None
    assert registry_revisions(stack, schemas) == {"rg00001": R2, "rg00002": R3, "rg00003": R2}


# -- D: a word where a person needs one ---------------------------------------------------


def test_status_exit_codes_follow_the_run_abandoned_alive_closed(stack: Stack) -> None:
    *schemas, bystander = stack.provision("so", 3)
    run_id = open_run(stack, schemas)  # recorded, never sent: its producer died
    abandoned = stack.cli("status", str(run_id))
    assert abandoned.code == 1 and "ABANDONED" in abandoned.out
    unblocked = migrate(stack, "--tenant", bystander, "--wait")  # it blocks no deploy
    assert unblocked.code == 0, unblocked.err
    with stack.engine.begin() as connection:
        runs.mark_dispatched(connection, run_id)
    alive = stack.cli("status", str(run_id), "--json")
    assert alive.code == 3, alive.err
    assert json.loads(alive.out)["alive"] is True and json.loads(alive.out)["workers"]
    for schema in schemas:
        stack.send_by_hand(run_id, schema, R2).get(timeout=120)
    assert stack.until_closed(run_id) is not None
    assert stack.cli("status", str(run_id)).code == 0


def test_a_chord_callback_that_cannot_reach_the_database_looks_again_later(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "too many clients" (or a restart) when the callback closes the run: a later look is
    scheduled, as for a run whose tenants are still pending, instead of failing for good."""
    from tenantfleet.tasks import finalize
    from tenantfleet.workers import resources

    monkeypatch.setenv("TENANTFLEET_DATABASE_URL", stack.database_url)
    monkeypatch.setattr(resources, "_engines", {})
    resources.settings.cache_clear()
    resources.queues.cache_clear()

    class TooManyClients(Exception):
        pgcode = "53300"

    def refuse(*_: object) -> None:
        raise OperationalError("SELECT", {}, TooManyClients("sorry, too many clients already"))

    scheduled: list[dict[str, object]] = []
    monkeypatch.setattr(finalize.runs, "finalize", refuse)
    monkeypatch.setattr(
        finalize.close_run, "apply_async", lambda *args, **options: scheduled.append(options)
    )
    try:
        assert finalize.close(424242) == "pending"
    finally:
        resources.settings.cache_clear()
        resources.queues.cache_clear()
    assert scheduled and scheduled[0]["queue"] == stack.queues.control
