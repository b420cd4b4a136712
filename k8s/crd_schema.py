"""Custom resources checked the way the API server would: against the vendored CRD schemas in k8s/crds/
(k8s/crds/README.md names their release), plus KServe's rules for pairing an InferenceService with a
ServingRuntime. Used by k8s/validate.py (`make k8s-check`) and tests/unit/test_k8s_crds.py.

Pruning: the API server silently drops every field a structural schema does not declare (unless the schema
says x-kubernetes-preserve-unknown-fields), so a misspelt field is not an error there but a setting that
never takes effect. Here it is an error: every object schema with `properties` and no `additionalProperties`
gets `additionalProperties: false`. Not checked: x-kubernetes-validations (CEL rules) and metadata beyond its
field names (the API server validates ObjectMeta itself).
"""

from __future__ import annotations

import copy
import gzip
from pathlib import Path

import jsonschema
import yaml

CRD_DIR = Path(__file__).resolve().parent / "crds"
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 2 MB of schema in ~1 s instead of ~13
OBJECT_META = {"name", "namespace", "labels", "annotations", "generateName", "finalizers", "ownerReferences"}


def load_schemas(folder: Path = CRD_DIR) -> dict[tuple[str, str], tuple[str, dict]]:
    """{(apiVersion, kind): (file name, openAPIV3Schema)} for every served version of every vendored CRD."""
    schemas = {}
    for path in sorted(folder.glob("*.yaml.gz")):
        for crd in yaml.load_all(gzip.decompress(path.read_bytes()), Loader=LOADER):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served", True):
                    schema = structural(version["schema"]["openAPIV3Schema"])
                    schemas[(f"{group}/{version['name']}", kind)] = (path.name, schema)
    return schemas


def structural(schema: dict) -> dict:
    """A copy in which undeclared fields fail validation and `nullable` allows null, recursively."""
    schema = copy.deepcopy(schema)

    def visit(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        if node.get("nullable") and isinstance(node.get("type"), str):
            node["type"] = [node["type"], "null"]
        for key, value in node.items():
            if key in ("properties", "patternProperties", "definitions"):
                for child in value.values():
                    visit(child)
            elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
                visit(value)
    visit(schema)
    return schema


def check(doc: dict, schema: dict) -> list[str]:
    """Schema violations of one object, each as `path: message`; unknown fields named as such."""
    problems = []
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(part) for part in error.absolute_path) or "<root>"
        if error.validator == "additionalProperties":
            extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
            problems.append(f"{where}: unknown field(s) {extra}: the API server would prune them")
        else:
            problems.append(f"{where}: {error.message[:300]}")
    unknown_meta = sorted(set(doc.get("metadata", {})) - OBJECT_META)
    if unknown_meta:
        problems.append(f"metadata: unknown field(s) {unknown_meta}")
    return problems


def kserve_pairing(docs: list[dict]) -> list[str]:
    """KServe v0.20's checks before it deploys an InferenceService's predictor with the runtime it names
    (pkg/controller/v1beta1/inferenceservice/components/predictor.go, pkg/apis/serving/v1beta1/
    predictor_model.go): the runtime exists, is enabled and single-model, supports the model's protocol
    version (when the model sets one) and lists the model format: `name`, or `name:version` when the model
    gives a version. With a named runtime autoSelect does not matter."""
    runtimes = {d["metadata"]["name"]: d["spec"] for d in docs if d.get("kind") == "ServingRuntime"}
    problems = []
    for isvc in (d for d in docs if d.get("kind") == "InferenceService"):
        where = f"InferenceService/{isvc['metadata']['name']}"
        predictor = isvc["spec"].get("predictor", {})
        model = predictor.get("model")
        if not model:
            continue
        name = model.get("runtime")
        if name not in runtimes:
            problems.append(f"{where}: runtime {name!r} is not a ServingRuntime of this render")
            continue
        runtime = runtimes[name]
        formats = set()
        for offered in runtime.get("supportedModelFormats", []):
            formats.add(offered["name"])
            if "version" in offered:
                formats.add(f"{offered['name']}:{offered['version']}")
        wanted = model["modelFormat"]["name"]
        if "version" in model["modelFormat"]:
            wanted += f":{model['modelFormat']['version']}"
        protocol, offered_protocols = model.get("protocolVersion"), runtime.get("protocolVersions") or []
        for failed, message in (
            (runtime.get("disabled") is True, "is disabled"),
            (runtime.get("multiModel") is True, "is a multi-model runtime"),
            (bool(runtime.get("workerSpec")) != bool(predictor.get("workerSpec")), "multi-node mismatch"),
            (protocol is not None and offered_protocols and protocol not in offered_protocols,
             f"does not support protocolVersion {protocol} (only {offered_protocols})"),
            (wanted not in formats, f"does not list model format {wanted!r} (it has {sorted(formats)})"),
        ):
            if failed:
                problems.append(f"{where}: runtime {name} {message}")
    return problems
