"""Every ``--json`` shape has a JSON Schema in docs/schemas/, and real outputs of real commands
(real PostgreSQL, Redis and worker processes) validate against it: the reference cannot drift
from what the commands print."""

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import sqlalchemy as sa

from tenantfleet import fleet_setup, runs
from tests import helpers
from tests.stack import Stack

R1, R3 = fleet_setup.R1, "20250415_000000"
SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"


def schema(name: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    return found


def check(stack: Stack, name: str, *args: str, code: int = 0) -> Any:
    """``tenantfleet ARGS --json``: its exit code is ``code`` and its output validates against
    docs/schemas/NAME.schema.json."""
    done = helpers.run_cli(
        *args, "--json", env={"TENANTFLEET_DATABASE_URL": stack.database_url}, timeout=300
    )
    assert done.code == code, (args, done.code, done.err)
    printed = json.loads(done.out)
    if os.environ.get("TENANTFLEET_DUMP_JSON"):  # writing a schema: see what is printed
        dump = Path(os.environ["TENANTFLEET_DUMP_JSON"])
        dump.mkdir(parents=True, exist_ok=True)
        words = "_".join(a.strip("-").replace("/", "") for a in args)
        (dump / f"{name}-{words}.json").write_text(done.out)
        return printed
    validate(printed, name)
    return printed


def validate(printed: Any, name: str) -> None:
    jsonschema.validate(printed, schema(name), cls=jsonschema.Draft202012Validator)


def test_every_schema_is_a_valid_draft_2020_12_schema() -> None:
    files = sorted(SCHEMAS.glob("*.schema.json"))
    assert files
    for path in files:
        found = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(found)
        assert found["$schema"] == "https://json-schema.org/draft/2020-12/schema", path
        assert found.get("title") and found.get("description"), path


def test_real_outputs_validate_against_their_schemas(stack: Stack) -> None:
    """A run in two waves held between them (its status while open, ``continue``), with a failed
    tenant (its error) and a deactivated one, its retry (a child run), then every view of them,
    a refusal and a run with nothing to do."""
    stack.deactivate_all()
    schemas = ["js00001", "js00002", "js00003", "js00004"]
    fleet_setup.provision(stack.engine, schemas, R1)
    quote = stack.engine.dialect.identifier_preparer.quote
    with stack.engine.begin() as connection:  # R3's audit_log exists already: js00002 fails
        connection.execute(sa.text(f"CREATE TABLE {quote('js00002')}.audit_log (id int)"))
    check(stack, "tenant-row", "tenant", "deactivate", "js00004", "--reason", "moved away")
    check(stack, "tenant-row", "tenant", "activate", "js00003")
    check(stack, "revisions", "public", "status")
    check(stack, "revisions", "public", "upgrade")
    check(stack, "revisions", "tenant", "status", "js00001")
    check(stack, "tenants", "tenants", "list")
    check(stack, "plan", "migrate", "--revision", R3, "--dry-run", "--wave", "1")
    check(stack, "lint", "lint", "--revision", R3)
    producer = stack.cli_background(
        "migrate", "--revision", R3, "--wave", "1", "--wave-hold", "--wait", "--json"
    )
    try:
        assert producer.stderr is not None
        for line in producer.stderr:  # the producer says it holds
            if "`tenantfleet continue" in line:
                break
        with stack.engine.connect() as connection:
            run_id = str(runs.latest_run_id(connection))
        held = check(stack, "run", "status", run_id, code=3)  # open: held between waves
        assert held["held"] is True and held["finished_at"] is None
        check(stack, "continue", "continue", run_id)
        out, err = producer.communicate(timeout=300)
    finally:
        producer.kill()
    assert producer.returncode == 1, err  # js00002 failed
    validate(json.loads(out), "run")
    check(stack, "run", "status", run_id, code=1)
    check(stack, "run", "status", run_id, "--tenant", "js00002", code=1)
    check(stack, "fleet", "fleet")
    with stack.engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {quote('js00002')}.audit_log"))
    retried = check(stack, "run", "retry", run_id, "--wait")
    assert retried["parent_run_id"] == int(run_id)
    check(stack, "runs", "runs", "--limit", "5")
    check(stack, "fleet", "fleet")
    check(stack, "report", "report", run_id, "--html", str(stack.logs / "report.html"))
    check(stack, "queues", "queues")
    check(stack, "config", "config")
    check(stack, "rollback-plan", "rollback", run_id, "--dry-run")
    check(stack, "error", "cancel", run_id, code=2)  # a closed run: nothing to cancel
    check(stack, "error", "status", "999999", code=2)
    check(stack, "run", "migrate", "--revision", R3, "--wait")  # nothing to do


def test_the_error_shape_without_a_server() -> None:
    done = helpers.run_cli(
        "status", "--json", env={"TENANTFLEET_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}
    )
    assert done.code == 2
    jsonschema.validate(json.loads(done.out), schema("error"))
