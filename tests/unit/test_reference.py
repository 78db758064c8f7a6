"""The declarations the documentation's reference is generated from, and the generators."""

import dataclasses
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tenantfleet import config, errors, metrics, states
from tenantfleet.cli import build_parser

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def reference() -> ModuleType:
    sys.path.insert(0, str(DOCS / "hooks"))
    try:
        import reference as module
    finally:
        sys.path.pop(0)
    return module


def test_every_setting_is_a_key_with_a_default_and_a_meaning() -> None:
    not_keys = {"databases", "config_file", "sources"}  # the file, and what it holds besides keys
    fields = {f.name for f in dataclasses.fields(config.Settings)} - not_keys
    assert fields == set(config.KEY_NAMES)
    for key in config.KEYS:
        assert key.default and key.meaning, key.name


def test_every_metric_is_declared_once_and_whole() -> None:
    names = [metric.name for metric in metrics.CATALOGUE]
    assert len(names) == len(set(names))
    for metric in metrics.CATALOGUE:
        assert metric.name.startswith("tenantfleet_") and metric.help
        assert metric.kind in ("counter", "gauge", "histogram")
        assert metric.source in ("worker", "run tables")
    assert metrics.Sample("tenantfleet_run_id", []).metric.kind == "gauge"
    with pytest.raises(KeyError):
        _ = metrics.Sample("tenantfleet_undeclared", []).metric


def test_the_schemas_states_are_the_states_defined_in_the_code() -> None:
    run = json.loads((DOCS / "schemas" / "run.schema.json").read_text())["properties"]
    assert run["status"]["enum"] == [s.value for s in states.RUN_STATES]
    for listed in ("tenants", "slowest"):
        found = run[listed]["items"]["properties"]["status"]["enum"]
        assert found == [s.value for s in states.TENANT_STATES]
    open_ = run["backfills"]["properties"]["open"]["items"]["properties"]["state"]["enum"]
    assert open_ == [s.value for s in states.BACKFILL_STATES]
    runs = json.loads((DOCS / "schemas" / "runs.schema.json").read_text())
    assert runs["items"]["properties"]["status"]["enum"] == [s.value for s in states.RUN_STATES]


def test_the_generated_reference_names_everything(reference: ModuleType) -> None:
    cli = reference.cli()
    for words, _, _ in reference._leaves(build_parser()):
        assert f"## tenantfleet {' '.join(words)}\n" in cli
    assert "| `--wave N\\|N%` |" in cli  # a cell's | escaped
    assert "%%" not in cli
    configuration = reference.configuration()
    assert all(f"`{key.variable}`" in configuration for key in config.KEYS)
    codes = reference.exit_codes()
    assert all(f"| {code} |" in codes for code, _, _ in errors.EXIT_CODES)
    exposed = reference.metrics()
    assert all(f"`{metric.exposed}`" in exposed for metric in metrics.CATALOGUE)
    assert "`tenantfleet_worker_tenants_total`" in exposed
    shapes = reference.json_shapes()
    assert shapes.count("\n## ") + shapes.startswith("## ") == len(
        list((DOCS / "schemas").glob("*.schema.json"))
    )


def test_a_marker_without_a_generator_fails_the_build(reference: ModuleType) -> None:
    assert reference.expand("a\n<!-- generated: exit-codes -->\nb").startswith("a\n| code |")
    with pytest.raises(ValueError, match="no generator"):
        reference.expand("<!-- generated: nothing -->")
