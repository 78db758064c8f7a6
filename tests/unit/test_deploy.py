"""The deploy recipes under deploy/ are files that validate offline: the Kubernetes manifests
against the Kubernetes schemas (kubernetes-validate, strict: an unknown field fails), KEDA's
ScaledObject against the fields its redis scaler reads, the GitHub Actions workflow against
the workflow schema check-jsonschema vendors (no server, no network)."""

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

KUBERNETES = "1.30"
MANIFESTS = ["worker.yaml", "migrate-job.yaml", "flower.yaml"]
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}},
                },
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "redis"},
                            "metadata": {
                                "type": "object",
                                "required": ["address", "listName", "listLength"],
                                "additionalProperties": {"type": "string"},
                                "properties": {
                                    "listName": {"pattern": r"^tenantfleet\.[0-9a-f]{12}\.tenants$"}
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def documents(repo_root: Path, name: str) -> list[dict[str, Any]]:
    text = (repo_root / "deploy" / "kubernetes" / name).read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.mark.parametrize("name", MANIFESTS)
def test_each_kubernetes_manifest_validates_strictly(repo_root: Path, name: str) -> None:
    for doc in documents(repo_root, name):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_a_wrong_field_is_caught(repo_root: Path) -> None:
    (deployment, _) = documents(repo_root, "worker.yaml")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicsa"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_the_workers_finish_their_tenants_before_they_stop(repo_root: Path) -> None:
    deployment, budget = documents(repo_root, "worker.yaml")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > 900  # the task time limit's default
    assert "kill -TERM 1" in " ".join(
        pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    )
    assert budget["kind"] == "PodDisruptionBudget" and budget["spec"]["minAvailable"] >= 1
    (job,) = documents(repo_root, "migrate-job.yaml")
    assert "pre-upgrade" in job["metadata"]["annotations"]["helm.sh/hook"]
    assert job["spec"]["backoffLimit"] == 0


def test_the_scaled_object_names_what_kedas_redis_scaler_reads(repo_root: Path) -> None:
    (scaled,) = documents(repo_root, "keda-scaledobject.yaml")
    jsonschema.validate(scaled, SCALED_OBJECT)
    (worker, _) = documents(repo_root, "worker.yaml")
    assert scaled["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]
    broken = copy.deepcopy(scaled)
    del broken["spec"]["triggers"][0]["metadata"]["listName"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, SCALED_OBJECT)


def test_the_github_actions_workflow_validates(repo_root: Path, tmp_path: Path) -> None:
    workflow = repo_root / "deploy" / "github-actions" / "migrate.yml"

    def check(path: Path) -> subprocess.CompletedProcess[str]:
        argv = ["-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows"]
        return subprocess.run(
            [sys.executable, *argv, str(path)], capture_output=True, text=True, timeout=120
        )

    found = check(workflow)
    assert found.returncode == 0, found.stdout + found.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(workflow.read_text().replace("runs-on:", "run-on:"))
    assert check(broken).returncode != 0


SAID = [
    (0, "at the target"),
    (1, "retry RUN"),
    (2, "refused, nothing changed"),
    (3, "still running"),
]


@pytest.mark.parametrize(("code", "said"), SAID)
def test_the_shell_hook_passes_the_exit_code_on_and_says_what_it_means(
    repo_root: Path, tmp_path: Path, code: int, said: str
) -> None:
    """deploy/shell/migrate.sh, with a stand-in ``tenantfleet`` that exits ``code`` (the real
    command's codes are tested everywhere else): its exit code is that code, with one line."""
    script = repo_root / "deploy" / "shell" / "migrate.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    stand_in = tmp_path / "bin" / "tenantfleet"
    stand_in.parent.mkdir()
    stand_in.write_text(f'#!/bin/sh\necho "{{\\"args\\": \\"$*\\"}}"\nexit {code}\n')
    stand_in.chmod(0o755)
    done = subprocess.run(
        ["bash", str(script), "--wave", "10"],
        cwd=tmp_path,
        env={"PATH": f"{stand_in.parent}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == code
    assert said in done.stdout + done.stderr
    passed = (tmp_path / "migrate.json").read_text()
    assert "migrate --wait --timeout 1800 --json --wave 10" in passed
