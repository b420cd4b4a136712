"""Rendering k8s/ for the manifest tests (test_k8s_manifests.py, test_k8s_cluster.py) and reading objects.

Tools: kubectl (or kustomize) renders; `bash k8s/check.sh install` puts kubectl into the tools venv. Without
one the tests skip, except under CI (CI set), where a missing tool fails: .ci/run installs them.
CODETR_K8S_DIR renders another copy of k8s/ (to see the tests fail on an old version).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = Path(os.environ.get("CODETR_K8S_DIR", REPO / "k8s"))
VENV = Path(os.environ.get("K8S_VENV", REPO / ".cache" / "venv-k8s"))
DEPLOYABLE = ["overlays/cpu", "overlays/gpu", "overlays/kserve", "examples/gpu-all"]
HEALTHCHECK = "/usr/local/bin/codetr-healthcheck"


def missing(what: str) -> None:
    message = f"{what} (bash k8s/check.sh install)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render_command() -> list[str]:
    for kubectl in (VENV / "bin" / "kubectl", shutil.which("kubectl")):
        if kubectl and Path(kubectl).exists():
            return [str(kubectl), "kustomize"]
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    missing("no kubectl or kustomize to render k8s/ with")
    raise AssertionError("unreachable")


def render_all(names: list[str] = DEPLOYABLE) -> dict[str, list[dict]]:
    command, out = render_command(), {}
    for name in names:
        run = subprocess.run([*command, str(K8S / name)], capture_output=True, text=True)
        assert run.returncode == 0, f"{name} does not render: {run.stderr}"
        out[name] = [doc for doc in yaml.safe_load_all(run.stdout) if doc]
    return out


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def workloads(docs: list[dict]) -> list[tuple[str, dict]]:
    """(label, pod spec) for every pod the render creates; KServe's = InferenceService predictor + runtime."""
    pods = [(f"Deployment/{d['metadata']['name']}", d["spec"]["template"]["spec"])
            for d in find(docs, "Deployment")]
    for isvc in find(docs, "InferenceService"):
        pods.append((f"InferenceService/{isvc['metadata']['name']}", kserve_pod(docs, isvc)))
    return pods


def kserve_pod(docs: list[dict], isvc: dict) -> dict:
    """The predictor pod spec KServe builds: the runtime's pod spec under the predictor's own fields."""
    predictor = isvc["spec"]["predictor"]
    runtime = find(docs, "ServingRuntime", predictor["model"]["runtime"])
    assert runtime, f"InferenceService {isvc['metadata']['name']} names a runtime this render lacks"
    skip = ("model", "minReplicas", "maxReplicas", "annotations", "labels", "deploymentStrategy")
    spec = {k: v for k, v in predictor.items() if k not in skip}
    spec["containers"] = runtime[0]["spec"]["containers"]
    spec["volumes"] = runtime[0]["spec"].get("volumes", []) + predictor.get("volumes", [])
    for key in ("nodeSelector", "tolerations", "affinity"):  # the runtime's unless the predictor has them
        if key not in spec and key in runtime[0]["spec"]:
            spec[key] = runtime[0]["spec"][key]
    return spec


def server(pod: dict) -> dict:
    return pod["containers"][0]


def properties(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def model_config() -> dict:
    return yaml.safe_load((REPO / "config" / "model-config.yaml").read_text())
