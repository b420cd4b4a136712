"""The Kubernetes manifests in k8s/: every kustomization renders, validates against the Kubernetes 1.32
schemas and passes checkov (k8s/validate.py, in the tools venv k8s/check.sh makes), and the rendered objects
keep the properties the deployment relies on: restricted pod security, a management port that is never
reachable, probes that work with token auth, drain-before-stop rollouts, and consistent KServe and HPA
wiring. The two scripts the pods run (the model download and the preStop drain) run here against local
files and a fake TorchServe.

Tools: kubectl (or kustomize) renders; the tools venv adds kubernetes-validate and checkov. Without them
these tests skip, except under CI (CI set), where a missing tool fails: .ci/run installs them.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest
import yaml

from tests.unit.k8s_render import (
    DEPLOYABLE,
    HEALTHCHECK,
    K8S,
    REPO,
    VENV,
    find,
    missing,
    model_config,
    properties,
    render_all,
    server,
    workloads,
)

ACCEPTED_SKIPS = {"CKV_K8S_43", "CKV_K8S_40"}  # each one justified in k8s/base/deployment.yaml
MANAGEMENT_PORT = 8081


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return render_all()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "checkov").exists():
        missing(f"no checkov/kubernetes-validate venv at {VENV}")
    out = tmp_path_factory.mktemp("k8s-check")
    run = subprocess.run([str(python), str(K8S / "validate.py"), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    report = json.loads((out / "report.json").read_text())
    report["stdout"], report["returncode"] = run.stdout + run.stderr, run.returncode
    return report


# ---- schemas and checkov ---------------------------------------------------------------------------------

def test_every_manifest_validates_and_passes_checkov(report: dict) -> None:
    assert report["returncode"] == 0 and not report["problems"], report["stdout"]
    expected = set(DEPLOYABLE) | {"namespace.yaml", "components/gpu-time-slicing/device-plugin"}
    assert expected <= set(report["sources"])
    assert report["kubernetes_version"].startswith("1.32")
    objects = [o for source in report["sources"].values() for o in source["objects"]]
    assert len(objects) >= 40
    assert all(o["schema"] == "ok" for o in objects)
    custom = {(o["apiVersion"], o["kind"]) for o in objects if o["schema_source"].startswith("k8s/crds/")}
    assert custom == {("monitoring.coreos.com/v1", "ServiceMonitor"),
                      ("serving.kserve.io/v1beta1", "InferenceService"),
                      ("serving.kserve.io/v1alpha1", "ServingRuntime")}
    scan = report["checkov"]
    assert scan["summary"]["passed"] >= 200 and scan["failed"] == []
    assert {s["id"] for s in scan["skipped"]} <= ACCEPTED_SKIPS
    assert all(len(s["reason"]) > 20 for s in scan["skipped"])


def test_every_component_is_rendered_by_some_kustomization() -> None:
    used = set()
    for path in K8S.rglob("kustomization.yaml"):
        for ref in yaml.safe_load(path.read_text()).get("components", []):
            used.add((path.parent / ref).resolve())
    components = {p.parent.resolve() for p in K8S.rglob("kustomization.yaml")
                  if yaml.safe_load(p.read_text()).get("kind") == "Component"}
    assert components and components <= used, components - used


# ---- pod security ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DEPLOYABLE)
def test_pods_meet_the_restricted_pod_security_standard(rendered: dict, name: str) -> None:
    pods = workloads(rendered[name])
    assert pods
    for label, pod in pods:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, label
        assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (1000, 1000, 1000), label
        assert context["seccompProfile"]["type"] == "RuntimeDefault", label
        assert pod["automountServiceAccountToken"] is False, label
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), label
        assert not [v for v in pod.get("volumes", []) if "hostPath" in v], label
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{label} {container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            capabilities = security["capabilities"]
            assert capabilities["drop"] == ["ALL"] and not capabilities.get("add"), where
            assert security.get("privileged") is not True and security["runAsNonRoot"] is True, where
            assert container["resources"]["limits"]["memory"], where


def dockerfile_env() -> dict[str, str]:
    """ENV of docker/Dockerfile (the image's writable paths), defaults when the file is not there."""
    env = {"TEMP": "/tmp", "LOG_LOCATION": "/home/model-server/logs", "CODETR_WORKDIR": "/tmp/torchserve"}
    dockerfile = REPO / "docker" / "Dockerfile"
    if dockerfile.exists():
        env.update(re.findall(r"\b(TEMP|LOG_LOCATION|CODETR_WORKDIR)=(\S+)", dockerfile.read_text()))
    return env


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_image_writable_paths_are_emptydirs(rendered: dict, name: str) -> None:
    for label, pod in workloads(rendered[name]):
        empty = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounted = {m["mountPath"] for m in server(pod)["volumeMounts"] if m["name"] in empty}
        for key, path in dockerfile_env().items():
            assert any(path == m or path.startswith(m + "/") for m in mounted), f"{label}: {key}={path}"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_the_management_port_is_never_exposed(rendered: dict, name: str) -> None:
    docs = rendered[name]
    for label, pod in workloads(docs):
        for container in pod["containers"]:
            ports = {p["containerPort"] for p in container.get("ports", [])}
            assert MANAGEMENT_PORT not in ports and ports <= {8080, 8082}, label
    for service in find(docs, "Service"):
        for port in service["spec"]["ports"]:
            assert MANAGEMENT_PORT not in (port["port"], port.get("targetPort")), service["metadata"]["name"]
            assert port.get("targetPort") in ("http", "metrics", 8080, 8082), service["metadata"]["name"]
    policies = find(docs, "NetworkPolicy")
    assert policies
    for policy in policies:
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert ports == {8080, 8082}, policy["metadata"]["name"]
        assert all(rule.get("ports") for rule in policy["spec"]["ingress"])  # no rule opens every port


def test_config_properties_keep_management_on_loopback_and_match_the_repo_settings() -> None:
    ours = properties(K8S / "base" / "config.properties")
    repo = properties(REPO / "config" / "config.properties")
    assert ours["management_address"] == "http://127.0.0.1:8081"
    assert ours["inference_address"] == "http://0.0.0.0:8080"
    assert ours["metrics_address"] == "http://0.0.0.0:8082"
    assert ours["disable_token_authorization"] == "false"
    differ = {"inference_address", "metrics_address", "model_store", "metrics_config", "vmargs"}
    same = {k for k in ours.keys() | repo.keys() if k not in differ}
    assert {k: ours.get(k) for k in same} == {k: repo.get(k) for k in same}
    dockerfile = REPO / "docker" / "Dockerfile"
    if dockerfile.exists():  # the image ships metrics.yaml where our config points
        assert "config/metrics.yaml /home/model-server/config/" in dockerfile.read_text()
    assert ours["metrics_config"] == "/home/model-server/config/metrics.yaml"


# ---- probes and rollouts ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DEPLOYABLE)
def test_probes_wait_for_the_model_and_spare_busy_workers(rendered: dict, name: str) -> None:
    startup_timeout = model_config()["startupTimeout"]
    for label, pod in workloads(rendered[name]):
        container = server(pod)
        for probe in ("startupProbe", "readinessProbe"):
            assert container[probe]["exec"]["command"] == [HEALTHCHECK], f"{label} {probe}"
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= startup_timeout, label
        # /ping stays 200 while workers are busy (TorchServe 0.12 WorkerThread.isHealthy): a long
        # threshold on it restarts only pods whose workers never come back (test_k8s_cluster.py, defect 7)
        liveness = container["livenessProbe"]
        assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 120, label


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_rollouts_drain_before_stopping(rendered: dict, name: str) -> None:
    response_timeout = model_config()["responseTimeout"]
    docs = rendered[name]
    strategies = [d["spec"]["strategy"] for d in find(docs, "Deployment")]
    strategies += [i["spec"]["predictor"]["deploymentStrategy"] for i in find(docs, "InferenceService")]
    assert strategies
    for strategy in strategies:  # surge next to the old pods, or the GPU-pool variant (one at a time)
        assert strategy["rollingUpdate"] in ({"maxSurge": 1, "maxUnavailable": 0},
                                             {"maxSurge": 0, "maxUnavailable": 1})
    for label, pod in workloads(docs):
        container = server(pod)
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        deadline = int(env["DRAIN_DEADLINE_S"])
        assert response_timeout < deadline < pod["terminationGracePeriodSeconds"], label
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "python3" and command[1].endswith("/drain.py"), label
        hooks = [m for m in container["volumeMounts"] if command[1].startswith(m["mountPath"] + "/")]
        volume = next(v for v in pod["volumes"] if v["name"] == hooks[0]["name"])
        assert volume["configMap"]["name"].startswith("codetr-serve-hooks-"), label  # kustomize's hashed name


# ---- model delivery, GPUs, scaling -----------------------------------------------------------------------

def test_the_pvc_is_mounted_read_only_with_a_version_subpath(rendered: dict) -> None:
    docs = rendered["overlays/gpu"]
    claim = find(docs, "PersistentVolumeClaim", "codetr-model-store")[0]
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    pod = workloads(docs)[0][1]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-store")
    assert volume["persistentVolumeClaim"] == {"claimName": "codetr-model-store", "readOnly": True}
    mount = next(m for m in server(pod)["volumeMounts"] if m["name"] == "model-store")
    assert mount["readOnly"] is True and mount["subPath"].endswith("/model-store")
    assert mount["mountPath"] == "/home/model-server/model-store"


def test_model_download_replaces_the_pvc_with_a_checked_download(rendered: dict) -> None:
    docs = rendered["examples/gpu-all"]
    assert not find(docs, "PersistentVolumeClaim")
    template = find(docs, "Deployment", "codetr-serve")[0]["spec"]["template"]
    pod, annotations = template["spec"], template["metadata"]["annotations"]
    volume = next(v for v in pod["volumes"] if v["name"] == "model-store")
    assert set(volume) == {"name", "emptyDir"}
    mount = next(m for m in server(pod)["volumeMounts"] if m["name"] == "model-store")
    assert mount["readOnly"] is True and "subPath" not in mount
    fetch = pod["initContainers"][0]
    assert fetch["image"] == server(pod)["image"] and fetch["command"][0] == "python3"
    env = {e["name"]: e for e in fetch["env"]}
    for variable in ("MODEL_URL", "MODEL_SHA256"):
        field = env[variable]["valueFrom"]["fieldRef"]["fieldPath"]
        key = re.fullmatch(r"metadata\.annotations\['(.+)'\]", field)
        assert key and isinstance(annotations[key.group(1)], str)
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["codetr-serve/model-sha256"])
    egress = find(docs, "NetworkPolicy")[0]["spec"]["egress"]
    assert {p["port"] for rule in egress for p in rule["ports"]} == {53, 80, 443}


def test_gpu_pods_get_one_gpu_and_cpu_pods_none(rendered: dict) -> None:
    for name in ("overlays/gpu", "overlays/kserve"):
        pod = workloads(rendered[name])[0][1]
        assert server(pod)["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"]) and pod["nodeSelector"]
        assert server(pod)["image"].endswith(":cu130")
    pod = workloads(rendered["overlays/cpu"])[0][1]
    assert "nvidia.com/gpu" not in json.dumps(pod) and server(pod)["image"].endswith(":cpu")
    resources = server(pod)["resources"]
    assert resources["requests"]["cpu"] == resources["limits"]["cpu"]


def test_time_slicing_config_is_a_device_plugin_config() -> None:
    path = K8S / "components/gpu-time-slicing/device-plugin/time-slicing-config.yaml"
    config_map = yaml.safe_load(path.read_text())
    configs = {name: yaml.safe_load(text) for name, text in config_map["data"].items()}
    assert all(c["version"] == "v1" for c in configs.values())
    shared = [c["sharing"]["timeSlicing"] for c in configs.values() if "sharing" in c]
    resources = [r for s in shared for r in s["resources"]]
    assert resources and all(r["name"] == "nvidia.com/gpu" and r["replicas"] >= 2 for r in resources)


def test_hpa_reads_the_metric_the_adapter_rule_makes(rendered: dict) -> None:
    docs = rendered["examples/gpu-all"]
    hpa = find(docs, "HorizontalPodAutoscaler")[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert find(docs, "Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in find(docs, "Deployment")[0]["spec"]  # the HPA owns it
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    values = yaml.safe_load((K8S / "components/autoscaling/prometheus-adapter-values.yaml").read_text())
    rule = values["rules"]["custom"][0]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    declared = yaml.safe_load((REPO / "config" / "metrics.yaml").read_text())["ts_metrics"]["counter"]
    counters = {m["name"] for m in declared}
    used = set(re.findall(r"\b(ts_[a-z_]+)\{", rule["metricsQuery"]))
    assert used == {"ts_queue_latency_microseconds", "ts_inference_requests_total"} and used <= counters
    assert hpa["spec"]["minReplicas"] >= 2  # the PodDisruptionBudget needs one left during a drain


# ---- KServe ----------------------------------------------------------------------------------------------

def test_kserve_runtime_serves_our_image_on_torchserves_own_routes(rendered: dict) -> None:
    docs = rendered["overlays/kserve"]
    isvc, runtime = find(docs, "InferenceService")[0], find(docs, "ServingRuntime")[0]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    claim = re.fullmatch(r"pvc://([^/]+)/(.+)", model["storageUri"])
    assert claim and find(docs, "PersistentVolumeClaim", claim.group(1))
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert set(runtime["spec"]["protocolVersions"]) == {"v1", "v2"}
    container = runtime["spec"]["containers"][0]
    assert container["name"] == "kserve-container" and container["ports"][0]["containerPort"] == 8080
    assert container["image"].startswith("codetr-serve:")
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TS_CONFIG_FILE"] == "/mnt/models/config/config.properties"
    assert env["MODEL_STORE"] == "/mnt/models/model-store"
    assert not container.get("args") and not container.get("command")  # the image's entrypoint, no wrapper
    policy = find(docs, "NetworkPolicy")[0]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector == {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    if env.get("CODETR_DISABLE_TOKEN_AUTH") == "1":  # then the network must pick the callers of 8080
        rule = next(r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 8080)
        assert rule.get("from")


# ---- the scripts the pods run ----------------------------------------------------------------------------

FETCH = K8S / "components" / "model-download" / "fetch_model.py"
DRAIN = K8S / "hooks" / "drain.py"


def make_tar(path: Path, members: dict[str, bytes | None], link: tuple[str, str] | None = None) -> str:
    """A tar of files (bytes) and folders (None); returns its sha256."""
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            archive.addfile(info)
    return hashlib.sha256(path.read_bytes()).hexdigest()


MANIFEST = json.dumps({"model": {"modelName": "co_detr", "modelVersion": "1.0"}}).encode()
MODEL = {"co_detr": None, "co_detr/MAR-INF/MANIFEST.json": MANIFEST, "co_detr/model.safetensors": b"w" * 4096}


def fetch(tmp_path: Path, url: str, sha: str) -> tuple[int, str, Path]:
    store = tmp_path / "store"
    env = {"PATH": os.environ["PATH"], "MODEL_URL": url, "MODEL_SHA256": sha, "MODEL_STORE": str(store),
           "FETCH_ATTEMPTS": "1"}
    run = subprocess.run([sys.executable, str(FETCH)], env=env, capture_output=True, text=True, timeout=60)
    return run.returncode, run.stderr, store


def test_fetch_model_unpacks_a_checked_archive(tmp_path: Path) -> None:
    sha = make_tar(tmp_path / "m.tar", MODEL)
    code, log, store = fetch(tmp_path, (tmp_path / "m.tar").as_uri(), sha)
    assert code == 0, log
    assert (store / "co_detr" / "model.safetensors").read_bytes() == b"w" * 4096
    assert sorted(p.name for p in store.iterdir()) == ["co_detr"]  # no .download, no .staging left
    assert fetch(tmp_path, (tmp_path / "m.tar").as_uri(), sha)[0] == 0  # a restarted initContainer is a no-op


@pytest.mark.parametrize("case", ["wrong sha256", "path escape", "symlink", "no model", "no settings"])
def test_fetch_model_refuses_bad_downloads(tmp_path: Path, case: str) -> None:
    members, link = dict(MODEL), None
    if case == "path escape":
        members["../escaped"] = b"x"
    if case == "symlink":
        link = ("co_detr/weights", "/etc/passwd")
    if case == "no model":
        members = {"notes.txt": b"hello"}
    sha = make_tar(tmp_path / "m.tar", members, link)
    if case == "wrong sha256":
        sha = "0" * 64
    code, log, store = fetch(tmp_path, (tmp_path / "m.tar").as_uri(), "" if case == "no settings" else sha)
    assert code == (2 if case == "no settings" else 1), log
    assert not (tmp_path / "escaped").exists()
    assert not store.exists() or not [p for p in store.iterdir() if not p.name.startswith(".")]


class FakeTorchServe(http.server.BaseHTTPRequestHandler):
    """Inference answers 400 InvalidKeyException to any key but the current one; /token rotates it."""

    calls: list[tuple[str, str]] = []
    key_file: Path

    def log_message(self, *args) -> None:  # quiet
        pass

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        keys = json.loads(self.key_file.read_text())
        token = self.headers.get("Authorization", "")
        self.calls.append((self.path, token))
        assert body.startswith(b"\x89PNG") and self.headers["Content-Type"] == "image/png"
        if token != f"Bearer {keys['inference']['key']}" or keys["inference"].get("expired"):
            self._answer(400, b'{"code": 400, "type": "InvalidKeyException", "message": "Token expired"}')
        else:
            self._answer(200, b"[]")

    def do_GET(self) -> None:  # noqa: N802
        keys = json.loads(self.key_file.read_text())
        self.calls.append((self.path, self.headers.get("Authorization", "")))
        api_key = f"Bearer {keys['API']['key']}"
        if self.path == "/token?type=inference" and self.headers["Authorization"] == api_key:
            keys["inference"] = {"key": "fresh"}
            self.key_file.write_text(json.dumps(keys))
            self._answer(200, b"{}")
        else:
            self._answer(400, b"{}")


def test_drain_probes_each_model_and_renews_an_expired_key(tmp_path: Path) -> None:
    workdir, store = tmp_path / "ts", tmp_path / "store"
    (store / "co_detr_v2" / "MAR-INF").mkdir(parents=True)
    (store / "co_detr_v2" / "MAR-INF" / "MANIFEST.json").write_bytes(MANIFEST)
    (store / "not-a-model").mkdir()
    workdir.mkdir()
    FakeTorchServe.key_file = workdir / "key_file.json"
    FakeTorchServe.key_file.write_text(json.dumps({"inference": {"key": "old", "expired": True},
                                                   "management": {"key": "m"}, "API": {"key": "api"}}))
    FakeTorchServe.calls = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeTorchServe)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    env = {"PATH": os.environ["PATH"], "DRAIN_DELAY_S": "0", "DRAIN_PROBES": "2",
           "CODETR_WORKDIR": str(workdir), "MODEL_STORE": str(store),
           "DRAIN_INFERENCE_URL": url, "DRAIN_MANAGEMENT_URL": url}
    try:
        run = subprocess.run([sys.executable, str(DRAIN)], env=env, capture_output=True, text=True,
                             timeout=60)
    finally:
        httpd.shutdown()
    assert run.returncode == 0, run.stderr
    assert FakeTorchServe.calls == [
        ("/predictions/co_detr", "Bearer old"),          # the model name comes from its MANIFEST
        ("/token?type=inference", "Bearer api"),          # expired: renewed with the API key
        ("/predictions/co_detr", "Bearer fresh"),
        ("/predictions/co_detr", "Bearer fresh"),         # second probe
    ]
    assert "probe 2/2 answered 200" in run.stderr


def test_drain_never_fails_the_hook_when_nothing_answers(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "DRAIN_DELAY_S": "0", "DRAIN_MODELS": "co_detr",
           "CODETR_WORKDIR": str(tmp_path), "DRAIN_INFERENCE_URL": "http://127.0.0.1:9"}
    run = subprocess.run([sys.executable, str(DRAIN)], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "nothing left to drain" in run.stderr


def test_drain_probe_is_a_valid_png() -> None:
    from PIL import Image

    spec = importlib.util.spec_from_file_location("codetr_k8s_drain", DRAIN)
    drain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(drain)
    image = Image.open(io.BytesIO(drain.probe_png(64)))
    image.load()
    assert image.size == (64, 64)


# ---- the guide -------------------------------------------------------------------------------------------

def test_every_path_and_anchor_the_k8s_readme_names_exists() -> None:
    text = (K8S / "README.md").read_text()
    roots = ("k8s", "config", "docs", "docker", "requirements", "tests", "codetr_serve")
    named = set(re.findall(rf"`((?:{'|'.join(roots)})/[^`\s]*)", text))
    named |= set(re.findall(r"\./(\w+\.sh)", text))
    assert len(named) >= 20
    for path in named:
        assert (REPO / path.rstrip("/")).exists(), path
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    slugs = {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}
    anchors = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert anchors and anchors <= slugs, anchors - slugs
