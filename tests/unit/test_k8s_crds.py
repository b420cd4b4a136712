"""The custom resources we ship validate against the vendored CRD schemas (k8s/crds/, via k8s/crd_schema.py,
the code `make k8s-check` runs), and that validation does catch what the API server would prune or reject,
and an InferenceService that KServe would not pair with its ServingRuntime.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import re
import sys

import pytest

from tests.unit.k8s_render import K8S, find, render_all

sys.path.insert(0, str(K8S))
import crd_schema  # noqa: E402 - k8s/ is not a package


@pytest.fixture(scope="module")
def schemas() -> dict:
    return crd_schema.load_schemas(K8S / "crds")


@pytest.fixture(scope="module")
def kserve() -> list[dict]:
    return render_all(["overlays/kserve"])["overlays/kserve"]


def test_vendored_files_are_the_upstream_files_the_readme_names() -> None:
    table = (K8S / "crds" / "README.md").read_text()
    rows = re.findall(r"^\| `(\S+\.yaml\.gz)` \|.*\| ([0-9a-f]{64}) \|$", table, re.M)
    files = sorted(p.name for p in (K8S / "crds").glob("*.yaml.gz"))
    assert sorted(name for name, _ in rows) == files and len(files) == 3
    for name, sha in rows:
        assert hashlib.sha256(gzip.decompress((K8S / "crds" / name).read_bytes())).hexdigest() == sha, name


def test_every_custom_resource_we_render_validates(schemas: dict) -> None:
    rendered = render_all(["overlays/kserve", "examples/gpu-all"])
    checked = set()
    for docs in rendered.values():
        for doc in docs:
            key = (doc["apiVersion"], doc["kind"])
            if key[0].split("/")[0].endswith((".kserve.io", ".coreos.com")):
                assert key in schemas, key
                assert crd_schema.check(doc, schemas[key][1]) == [], key
                checked.add(key[1])
        assert crd_schema.kserve_pairing(docs) == []
    assert checked == {"InferenceService", "ServingRuntime", "ServiceMonitor"}


def test_fields_the_api_server_would_prune_or_reject_are_errors(schemas: dict, kserve: list[dict]) -> None:
    isvc = copy.deepcopy(find(kserve, "InferenceService")[0])
    isvc["spec"]["predictor"]["minReplica"] = 2  # misspelt: KServe would never see it
    problems = crd_schema.check(isvc, schemas[("serving.kserve.io/v1beta1", "InferenceService")][1])
    assert problems == ["spec.predictor: unknown field(s) ['minReplica']: the API server would prune them"]
    runtime = copy.deepcopy(find(kserve, "ServingRuntime")[0])
    runtime["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "eight"
    runtime["spec"]["containers"][0]["readinessProbe"]["exec"]["cmd"] = ["true"]
    problems = crd_schema.check(runtime, schemas[("serving.kserve.io/v1alpha1", "ServingRuntime")][1])
    assert len(problems) == 2 and "readinessProbe.exec: unknown field(s) ['cmd']" in problems[0]
    assert problems[1].startswith("spec.containers.0.resources.limits.cpu: 'eight' does not match")


def model(isvc: dict) -> dict:
    return isvc["spec"]["predictor"]["model"]


@pytest.mark.parametrize("change, expected", [
    (lambda i, r: model(i)["modelFormat"].update(version="2"), "model format 'codetr:2'"),
    (lambda i, r: model(i).update(protocolVersion="grpc-v2"), "protocolVersion grpc-v2"),
    (lambda i, r: r["spec"].update(disabled=True), "is disabled"),
    (lambda i, r: model(i).update(runtime="kserve-torchserve"), "not a ServingRuntime"),
])
def test_kserve_pairing_rules(kserve: list[dict], change, expected: str) -> None:
    docs = copy.deepcopy(kserve)
    change(find(docs, "InferenceService")[0], find(docs, "ServingRuntime")[0])
    problems = crd_schema.kserve_pairing(docs)
    assert len(problems) == 1 and expected in problems[0], problems
