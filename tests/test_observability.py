"""Seeing a fleet run, with real workers: Prometheus metrics scraped during and after a run
and checked against the run tables, every JSON log line of a run with failures and retries,
OpenTelemetry spans (in-memory exporter), and the HTML report rendered in headless Chromium."""

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tenantfleet import logs, runs
from tests import helpers
from tests.helpers import wait_for
from tests.stack import Stack, free_port, running_fleet, wait_for_http
from tests.test_cancel import WAITING_FOR_LOCKS
from tests.test_fleet import break_tenants

R2 = "20250301_000000"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
]


def parse(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels in the order printed)."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        value
        for key, value in samples.items()
        if (key == name or key.startswith(name + "{")) and all(w in key for w in wanted)
    )


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def run_table_metrics(stack: Stack) -> dict[str, float]:
    result = stack.cli("metrics")
    assert result.code == 0, result.err
    return parse(result.out)


RETRIED = sa.text("SELECT count(*) FROM migration_attempts WHERE outcome = 'retrying'")


def until_retried(stack: Stack, at_least: int, what: str) -> None:
    with stack.engine.connect() as watcher:
        wait_for(lambda: watcher.execute(RETRIED).scalar_one() >= at_least, what)


def test_metrics_during_and_after_a_run_match_the_run_tables(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    port = free_port()
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        TENANTFLEET_METRICS_PORT=str(port),
        TENANTFLEET_LOCK_TIMEOUT="2",
        TENANTFLEET_RETRY_BACKOFF="0.2",
        TENANTFLEET_MAX_RETRIES="100",
    ) as stack:
        wait_for_http(f"http://127.0.0.1:{port}/metrics")
        schemas = stack.provision("m", 40)
        break_tenants(stack, ["m00010", "m00020", "m00030"])
        blocker = stack.engine.connect()
        blocker.begin()
        blocker.execute(sa.text("LOCK TABLE m00001.users, m00002.users IN ACCESS EXCLUSIVE MODE"))
        migrate = stack.cli_background(
            "migrate", "--revision", R2, "--wait", "--json", "--max-failures", "10"
        )
        try:
            with stack.engine.connect() as watcher:
                wait_for(
                    lambda: watcher.execute(WAITING_FOR_LOCKS).scalar_one() >= 2,
                    "the two workers never blocked",
                )
            # Between two attempts (lock_timeout, then the backoff) a held tenant is retrying
            # and its worker runs other tenants: wait for a scrape taken while both are held.
            scrapes: list[dict[str, float]] = []

            def both_held() -> bool:
                scrapes.append(run_table_metrics(stack))
                return (
                    total(scrapes[-1], "tenantfleet_run_tenants", state="running") == 2
                    and total(scrapes[-1], "tenantfleet_run_tenants_waiting_for_lock") == 2
                )

            wait_for(both_held, "no scrape showed the two held tenants running and waiting")
            during = scrapes[-1]
            assert during["tenantfleet_run_open"] == 1
            failed = total(during, "tenantfleet_run_tenants", state="failed")
            assert during["tenantfleet_run_failure_budget_remaining"] == 10 - failed
            # the lock outlasts lock_timeout: both tenants retry until it goes
            until_retried(stack, 2, "no tenant retried")
        finally:
            blocker.rollback()
            blocker.close()
        out, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 1, err
        report = json.loads(out)

        after = run_table_metrics(stack)
        worker = scrape(port)
        counts = report["counts"]
        assert counts["failed"] == 3 and counts["succeeded"] == 37
        for outcome in ("succeeded", "failed"):
            assert total(after, "tenantfleet_run_tenants", state=outcome) == counts[outcome]
            assert (
                total(after, "tenantfleet_tenants_finished_total", outcome=outcome)
                == (counts[outcome])
            )
            assert (
                total(worker, "tenantfleet_worker_tenants_total", outcome=outcome)
                == (counts[outcome])
            )
        with stack.engine.connect() as connection:
            retried, timeouts = connection.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE outcome = 'retrying'),"
                    " count(*) FILTER (WHERE sqlstate = '55P03') FROM migration_attempts"
                )
            ).one()
        assert retried >= 2 and timeouts >= 2
        assert after["tenantfleet_retries_total"] == retried
        assert after["tenantfleet_lock_timeouts_total"] == timeouts
        assert total(worker, "tenantfleet_worker_retries_total") == retried
        assert total(worker, "tenantfleet_worker_lock_timeouts_total") == timeouts
        assert total(worker, "tenantfleet_tenant_duration_seconds_count") == 40 + retried
        assert after["tenantfleet_run_tenant_duration_seconds_count"] == 40
        assert after["tenantfleet_run_open"] == 0
        assert after["tenantfleet_run_failure_budget_remaining"] == 7
        assert all("schema" not in key and "tenant=" not in key for key in [*after, *worker])
        assert set(stack.revisions(schemas).values()) >= {R2}


def test_every_log_line_of_a_run_with_failures_and_retries_is_json(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENANTFLEET_LOG_FORMAT", "json")
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        concurrency=0,
        TENANTFLEET_LOG_FORMAT="json",
        TENANTFLEET_LOCK_TIMEOUT="0.5",
        TENANTFLEET_RETRY_BACKOFF="0.2",
    ) as stack:
        stack.provision("j", 12)
        break_tenants(stack, ["j00004"])
        worker = stack.start_worker(2)  # --quiet: no banner
        blocker = stack.engine.connect()
        blocker.begin()
        blocker.execute(sa.text("LOCK TABLE j00001.users IN ACCESS EXCLUSIVE MODE"))
        migrate = stack.cli_background("migrate", "--revision", R2, "--wait")
        try:
            until_retried(stack, 1, "j00001 never retried")
        finally:
            blocker.rollback()
            blocker.close()
        _, err = migrate.communicate(timeout=300)
        assert migrate.returncode == 1
        with stack.engine.connect() as connection:
            run_id = runs.latest_run_id(connection)
        from tenantfleet import processes

        processes.stop(worker)
    worker_lines = (stack.logs / "worker.log").read_text().splitlines()
    cli_lines = err.splitlines()
    assert worker_lines and cli_lines
    objects = [json.loads(line) for line in [*worker_lines, *cli_lines]]  # every line parses
    tenant_lines = [o for o in objects if o.get("logger") == "tenantfleet.tasks.tenant"]
    outcomes = {o["outcome"] for o in tenant_lines}
    assert {"succeeded", "failed", "retrying"} <= outcomes
    for found in tenant_lines:
        assert set(logs.TENANT_FIELDS) <= set(found)
        assert found["run_id"] == run_id and found["to_revision"] == R2
        assert found["worker"] and found["task_id"] and found["database"] == "default"
    failed = next(o for o in tenant_lines if o["outcome"] == "failed")
    assert failed["schema"] == "j00004" and failed["sqlstate"] == "42P07" and failed["attempt"] == 1
    retried = next(o for o in tenant_lines if o["outcome"] == "retrying")
    assert retried["schema"] == "j00001" and retried["sqlstate"] == "55P03"
    done = next(o for o in tenant_lines if o["schema"] == "j00001" and o["outcome"] == "succeeded")
    assert done["attempt"] >= 2 and done["from_revision"] == "20250102_000001"
    assert any(o.get("logger") == "tenantfleet.cli" for o in objects)


def test_spans_of_a_run_and_its_tenant_attempts(
    pg_admin_url: str, template_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tracing on: the producer's run span, and each tenant attempt's span under it, carried
    through the broker in the task message (the messages are read back from Redis and run in
    this process, so the in-memory exporter sees both sides)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setenv("TENANTFLEET_TRACING", "true")
    with running_fleet(pg_admin_url, template_url, tmp_path / "fleet", concurrency=0) as stack:
        monkeypatch.setenv("TENANTFLEET_DATABASE_URL", stack.database_url)
        stack.provision("o", 3)
        break_tenants(stack, ["o00002"])
        from tenantfleet import dispatch, planning, producer
        from tenantfleet.manager import MigrationManager
        from tenantfleet.tasks.tenant import migrate_tenant
        from tenantfleet.workers import resources

        forget_worker_state(resources)

        manager = MigrationManager()
        options = planning.MigrateOptions(revision=R2, include=("o00001", "o00002", "o00003"))
        run_id = producer.start(manager, options)
        app = dispatch.app()
        queue = stack.queues.tenants
        messages = []
        with app.connection_for_read() as connection:
            simple = connection.SimpleQueue(queue)
            for _ in range(3):
                message = simple.get(timeout=10)
                messages.append(message)
                message.ack()
            simple.close()
        for message in messages:
            args, kwargs, _ = message.payload
            assert "trace" in kwargs and kwargs["trace"]["traceparent"]
            migrate_tenant.apply(args=args, kwargs=kwargs)
        forget_worker_state(resources)
    spans = exporter.get_finished_spans()
    run_span = next(s for s in spans if s.name == "tenantfleet.run")
    attempts = [s for s in spans if s.name == "tenantfleet.tenant_attempt"]
    assert len(attempts) == 3
    database = helpers.database_name(stack.database_url)
    found = {str(dict(s.attributes or {})["tenantfleet.tenant"]): s for s in attempts}
    attributes = {schema: dict(span.attributes or {}) for schema, span in found.items()}
    run_context = run_span.context
    assert run_context is not None
    for schema, span in found.items():
        assert span.parent is not None and span.parent.span_id == run_context.span_id
        assert span.context is not None and span.context.trace_id == run_context.trace_id
        assert attributes[schema]["db.namespace"] == f"{database}|{schema}"
        assert attributes[schema]["db.system.name"] == "postgresql"
        assert attributes[schema]["tenantfleet.run_id"] == run_id
    assert attributes["o00001"]["tenantfleet.outcome"] == "succeeded"
    assert attributes["o00002"]["tenantfleet.outcome"] == "failed"
    assert found["o00002"].status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in found["o00002"].events)


def forget_worker_state(resources: Any) -> None:
    """This process plays a worker for one database: what it cached is for that database."""
    for cached in (resources.settings, resources.queues, resources.database_name):
        cached.cache_clear()
    for engine in resources._engines.values():
        engine.dispose()
    resources._engines.clear()


def _report_run(stack: Stack) -> int:
    """A run with failures, retries and two waves."""
    stack.provision("rp", 30)
    break_tenants(stack, ["rp00004", "rp00012"])
    blocker = stack.engine.connect()
    blocker.begin()
    blocker.execute(sa.text("LOCK TABLE rp00002.users IN ACCESS EXCLUSIVE MODE"))
    migrate = stack.cli_background(
        "migrate", "--revision", R2, "--wave", "5", "--max-failures", "5", "--wait"
    )
    try:
        until_retried(stack, 1, "rp00002 never retried")
    finally:
        blocker.rollback()
        blocker.close()
    _, err = migrate.communicate(timeout=300)
    assert migrate.returncode == 1, err
    with stack.engine.connect() as connection:
        return runs.latest_run_id(connection)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (.ci/run installs it)")
def test_the_report_renders_in_chromium(
    pg_admin_url: str, template_url: str, tmp_path: Path
) -> None:
    with running_fleet(
        pg_admin_url,
        template_url,
        tmp_path / "fleet",
        TENANTFLEET_LOCK_TIMEOUT="0.5",
        TENANTFLEET_RETRY_BACKOFF="0.2",
    ) as stack:
        run_id = _report_run(stack)
        page = tmp_path / "report.html"
        made = stack.cli("report", str(run_id), "--html", str(page), "--json")
        assert made.code == 0, made.err
        assert json.loads(made.out)["html"] == str(page)
    text = page.read_text()
    # nothing to fetch: no external script, style sheet, image or font
    assert not re.search(r"""(src|href)=["']?https?:|<link|url\(\s*["']?https?:""", text)
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert 'data-charts-drawn="2"' in dom  # both charts laid out with a size
    for outcome in ("succeeded", "failed", "retrying"):
        assert f'id="bars-{outcome}"' in dom, outcome
    assert 'id="duration-bars"' in dom
    assert "DuplicateTable: 2 tenants (failed)" in dom
    assert "rp00004, rp00012" in dom
    assert re.search(r"<h2>Waves</h2>", dom)
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.stat().st_size > 20_000  # a picture, not a blank page


def test_the_grafana_dashboard_uses_only_our_metric_names_and_flowers(repo_root: Path) -> None:
    dashboard = json.loads((repo_root / "docs" / "grafana-dashboard.json").read_text())
    ours = set(
        re.findall(
            r'"(tenantfleet_[a-z_]+)"', (repo_root / "tenantfleet" / "metrics.py").read_text()
        )
    )
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\b((?:tenantfleet|flower)_[a-z_]+)", target["expr"]))
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        assert name.startswith("flower_") or base in ours, name
