"""The rendered manifests behave on a real cluster the way KServe v0.20, Kubernetes and TorchServe 0.12 run
them (issue 20, defects 1-9): replicas and drains, threads, logs, GPU families, rollouts on a full GPU pool,
metrics under KServe, liveness, probe timeouts, IPv6. Each test reads what `kubectl kustomize` renders.
"""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.k8s_render import (
    DEPLOYABLE,
    HEALTHCHECK,
    K8S,
    REPO,
    find,
    model_config,
    properties,
    render_all,
    server,
    workloads,
)

KSERVE_CLASS = "serving.kserve.io/autoscalerClass"
ALL_KINDS_OF_GPU = [(major, minor) for major in range(3, 14) for minor in range(10)]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return render_all()


def pod_labels(docs: list[dict], label: str) -> dict[str, str]:
    kind, name = label.split("/")
    if kind == "Deployment":
        return find(docs, kind, name)[0]["spec"]["template"]["metadata"]["labels"]
    isvc = find(docs, kind, name)[0]  # KServe labels predictor pods with their InferenceService
    return {**isvc["spec"]["predictor"].get("labels", {}), "serving.kserve.io/inferenceservice": name}


def replicas(docs: list[dict], label: str) -> int:
    """The pods the workload runs when nothing scales it: an HPA's minimum wins over the spec."""
    kind, name = label.split("/")
    target = name if kind == "Deployment" else f"{name}-predictor"
    hpas = [h for h in find(docs, "HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == target]
    if hpas:
        return hpas[0]["spec"].get("minReplicas", 1)
    if kind == "Deployment":
        return find(docs, kind, name)[0]["spec"].get("replicas", 1)
    isvc = find(docs, kind, name)[0]
    # KServe v0.20 deployment_reconciler.go: minReplicas reaches the Deployment only for class "none";
    # for any other class replicas stay unset (1) and are cleared on every update.
    if isvc["metadata"].get("annotations", {}).get(KSERVE_CLASS) == "none":
        return isvc["spec"]["predictor"].get("minReplicas", 1)
    return 1


def disruptions_allowed(pdb: dict, pods: int) -> int:
    """Evictions the PodDisruptionBudget allows with every pod healthy (integers or percentages)."""
    def count(value: int | str, round_up: bool) -> int:
        if isinstance(value, str) and value.endswith("%"):
            share = pods * int(value[:-1]) / 100
            return math.ceil(share) if round_up else math.floor(share)
        return int(value)
    spec = pdb["spec"]
    if "minAvailable" in spec:
        return max(0, pods - count(spec["minAvailable"], round_up=True))
    return max(0, min(pods, count(spec["maxUnavailable"], round_up=True)))


# ---- 1. replicas and drains ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DEPLOYABLE)
def test_every_workload_runs_two_pods_and_its_pdb_lets_a_drain_through(rendered: dict, name: str) -> None:
    docs = rendered[name]
    for label, _ in workloads(docs):
        pods = replicas(docs, label)
        assert pods >= 2, f"{label} runs {pods} pod(s): a drain or a crash leaves no server"
        labels = pod_labels(docs, label)
        pdbs = [p for p in find(docs, "PodDisruptionBudget")
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(pdbs) == 1, label
        assert disruptions_allowed(pdbs[0], pods) >= 1, f"{label}: its PDB blocks every eviction"
        assert disruptions_allowed(pdbs[0], 1) >= 1, f"{label}: scaled to one pod, the PDB blocks drains"


# ---- 2. threads ------------------------------------------------------------------------------------------

def cpu_cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_worker_threads_come_from_the_container_cpu_limit(rendered: dict, name: str) -> None:
    workers = model_config()["minWorkers"]
    for label, pod in workloads(rendered[name]):
        container = server(pod)
        env = {e["name"]: e for e in container.get("env", [])}
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            assert variable in env, f"{label}: no {variable}: torch takes one thread per core of the node"
            field = env[variable]["valueFrom"]["resourceFieldRef"]
            assert field["resource"] == "limits.cpu", label
            assert field.get("containerName", container["name"]) == container["name"], label
            assert field.get("divisor", "1") in ("1", 1), label
        limit = cpu_cores(container["resources"]["limits"]["cpu"])
        threads = math.ceil(limit)  # the downward API rounds a CPU limit up to whole cores
        assert workers * threads <= math.ceil(limit), f"{label}: {workers} workers x {threads} threads"


# ---- 3. logs ---------------------------------------------------------------------------------------------

FILE_APPENDERS = {"File", "RollingFile", "RandomAccessFile", "RollingRandomAccessFile", "MemoryMappedFile"}
CHATTY = {"debug", "trace", "all"}


def log_config_path(props: dict[str, str]) -> str:
    found = re.search(r"-Dlog4j\.configurationFile=file://(/\S+)", props.get("vmargs", ""))
    assert found, "config.properties does not point TorchServe at a log4j2 file (vmargs)"
    return found.group(1)


def test_log4j2_config_writes_only_to_stdout_at_info() -> None:
    root = ET.parse(REPO / "docker" / "log4j2.xml").getroot()
    appenders = list(root.find("Appenders"))
    assert [a.tag for a in appenders] == ["Console"] and appenders[0].get("target") == "SYSTEM_OUT"
    assert not {el.tag for el in root.iter()} & FILE_APPENDERS
    loggers = list(root.find("Loggers"))
    assert {el.get("level", "").lower() for el in loggers} & CHATTY == set()
    assert root.find("Loggers/Root").get("level").lower() == "info"
    assert root.find("Loggers/Logger[@name='org.pytorch.serve']").get("level").lower() == "info"


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_pods_and_image_use_the_console_log_config(rendered: dict, name: str) -> None:
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    copied = re.search(r"^COPY (.*docker/log4j2\.xml.*) (/\S+/)$", dockerfile, re.M)
    assert copied, "the image does not ship docker/log4j2.xml"
    image_path = copied.group(2) + "log4j2.xml"
    assert log_config_path(properties(REPO / "docker" / "config.properties")) == image_path
    # Plain Deployments mount the ConfigMap's config.properties; KServe reads a copy of the same file.
    config_maps = [c for c in find(rendered[name], "ConfigMap") if "config.properties" in c.get("data", {})]
    texts = [c["data"]["config.properties"] for c in config_maps]
    if find(rendered[name], "InferenceService"):
        texts.append((K8S / "base" / "config.properties").read_text())
    assert texts
    for text in texts:
        props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line[0] != "#")
        assert log_config_path(props) == image_path


# ---- 4. GPU families -------------------------------------------------------------------------------------

def image_runs_on(major: int, minor: int) -> bool:
    """CUDA's rules for docker/cuda_archs.txt: cubin X.y runs on X.z (z >= y); PTX X.y on anything >= X.y."""
    line = next(ln for ln in (REPO / "docker" / "cuda_archs.txt").read_text().splitlines()
                if ln.strip() and not ln.startswith("#"))
    for entry in line.strip().split(";"):
        arch = tuple(int(part) for part in entry.removesuffix("+PTX").split("."))
        if arch[0] == major and arch[1] <= minor or entry.endswith("+PTX") and (major, minor) >= arch:
            return True
    return False


def admits(pod: dict, labels: dict[str, str]) -> bool:
    """Whether the pod's nodeSelector and required node affinity accept a node with these labels."""
    if any(labels.get(k) != v for k, v in pod.get("nodeSelector", {}).items()):
        return False
    required = (pod.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution"))
    if not required:
        return True

    def holds(expression: dict) -> bool:
        value, wanted = labels.get(expression["key"]), expression.get("values", [])
        operator = expression["operator"]
        if operator in ("Gt", "Lt"):
            if value is None:
                return False
            return int(value) > int(wanted[0]) if operator == "Gt" else int(value) < int(wanted[0])
        return {"In": value in wanted, "NotIn": value not in wanted, "Exists": value is not None,
                "DoesNotExist": value is None}[operator]
    return any(all(holds(e) for e in term.get("matchExpressions", []))
               for term in required["nodeSelectorTerms"])


@pytest.mark.parametrize("name", ["overlays/gpu", "overlays/kserve", "examples/gpu-all"])
def test_gpu_pods_land_only_on_gpus_the_image_has_kernels_for(rendered: dict, name: str) -> None:
    for label, pod in workloads(rendered[name]):
        assert server(pod)["resources"]["limits"].get("nvidia.com/gpu"), label
        for major, minor in ALL_KINDS_OF_GPU:
            node = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.sharing-strategy": "time-slicing",
                    "nvidia.com/gpu.compute.major": str(major), "nvidia.com/gpu.compute.minor": str(minor)}
            assert admits(pod, node) == image_runs_on(major, minor), f"{label} on a {major}.{minor} GPU"


def test_gpu_arch_patches_are_generated_from_the_image_list() -> None:
    run = subprocess.run([sys.executable, str(K8S / "gpu_arch.py"), "--check"], capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stderr


# ---- 5. rollouts on a full GPU pool ----------------------------------------------------------------------

def test_gpu_pool_variant_rolls_without_a_spare_gpu(rendered: dict) -> None:
    docs = rendered["examples/gpu-all"]  # the GPU overlay with components/gpu-pool-rollout
    deployment = find(docs, "Deployment", "codetr-serve")[0]
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    pods = replicas(docs, "Deployment/codetr-serve")
    # The rollout takes one pod down; the PDB must then refuse a drain's eviction of a second one.
    pdb = find(docs, "PodDisruptionBudget")[0]
    assert disruptions_allowed(pdb, pods) == 1 and pods - 1 >= 1
    readme = (K8S / "README.md").read_text()
    section = readme[readme.index("## Model updates"):].split("\n## ")[0]
    assert "components/gpu-pool-rollout" in section and "maxSurge: 0" in section


def test_default_rollout_surges_and_kserve_can_take_the_gpu_pool_variant(rendered: dict) -> None:
    for name in ("overlays/gpu", "overlays/kserve"):
        strategies = [d["spec"]["strategy"] for d in find(rendered[name], "Deployment")]
        strategies += [i["spec"]["predictor"]["deploymentStrategy"]
                       for i in find(rendered[name], "InferenceService")]
        assert [s["rollingUpdate"] for s in strategies] == [{"maxSurge": 1, "maxUnavailable": 0}]
    component = (K8S / "components" / "gpu-pool-rollout" / "kustomization.yaml").read_text()
    assert "kind: InferenceService" in component and "/spec/predictor/deploymentStrategy" in component


# ---- 6. KServe and the metrics annotations ---------------------------------------------------------------

def test_kserve_leaves_the_prometheus_annotations_on_torchserves_metrics_port(rendered: dict) -> None:
    docs = rendered["overlays/kserve"]
    isvc, runtime = find(docs, "InferenceService")[0], find(docs, "ServingRuntime")[0]
    annotations = {**isvc["metadata"].get("annotations", {}),
                   **isvc["spec"]["predictor"].get("annotations", {})}
    assert annotations.get("serving.kserve.io/enable-prometheus-scraping") == "false"
    port = int(runtime["spec"]["annotations"]["prometheus.io/port"])
    ports = {p["containerPort"] for p in runtime["spec"]["containers"][0]["ports"] if p["name"] == "metrics"}
    assert ports == {port}


# ---- 7 and 8. liveness on model health, probe timeouts ---------------------------------------------------

MAX_RETRY_TIMEOUT_S = 300  # TorchServe 0.12's default maxRetryTimeoutInSec: /ping turns 500 after it


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_liveness_restarts_a_pod_whose_workers_never_recover(rendered: dict, name: str) -> None:
    for label, pod in workloads(rendered[name]):
        liveness = server(pod)["livenessProbe"]
        command = liveness.get("exec", {}).get("command")
        assert command == [HEALTHCHECK], f"{label}: liveness ignores the model"
        patience = liveness["periodSeconds"] * liveness["failureThreshold"]
        assert 300 <= patience and MAX_RETRY_TIMEOUT_S + patience <= 900, f"{label}: {patience} s"


def black_hole() -> socket.socket:
    """A listening socket that never accepts: connections complete, requests are never answered."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def healthcheck_worst_case_s(tmp_path: Path) -> float:
    """Wall time of the real docker/healthcheck.py when the key expired and nothing answers."""
    hole = black_hole()
    try:
        port = hole.getsockname()[1]
        config = tmp_path / "ts.properties"
        config.write_text("".join(f"{api}_address=http://127.0.0.1:{port}\n"
                                  for api in ("inference", "management", "metrics")))
        stamp = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
        keys = {"inference": {"key": "old", "expiration time": stamp}, "API": {"key": "api"},
                "management": {"key": "m", "expiration time": stamp}}
        (tmp_path / "key_file.json").write_text(json.dumps(keys))
        env = {"PATH": "/usr/bin:/bin", "TS_CONFIG_FILE": str(config), "CODETR_WORKDIR": str(tmp_path)}
        start = time.monotonic()
        run = subprocess.run([sys.executable, str(REPO / "docker" / "healthcheck.py")], env=env,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, run.stdout + run.stderr
        return time.monotonic() - start
    finally:
        hole.close()


def test_probe_timeouts_cover_the_health_checks_worst_case(rendered: dict, tmp_path: Path) -> None:
    worst = healthcheck_worst_case_s(tmp_path)
    for name in DEPLOYABLE:
        for label, pod in workloads(rendered[name]):
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = server(pod)[probe]
                if "exec" in spec:
                    assert spec["timeoutSeconds"] >= worst + 1, f"{label} {probe}: check takes {worst:.1f} s"


# ---- 9. IPv6 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", DEPLOYABLE)
def test_services_take_both_ip_families(rendered: dict, name: str) -> None:
    services = find(rendered[name], "Service")
    for service in services:
        assert service["spec"].get("ipFamilyPolicy") == "PreferDualStack", service["metadata"]["name"]
    # what the pods bind: 0.0.0.0, which TorchServe's JVM opens as a dual-stack socket (tests/e2e prove it)
    props = properties(K8S / "base" / "config.properties")
    assert props["inference_address"].startswith("http://0.0.0.0:")
    assert props["metrics_address"].startswith("http://0.0.0.0:")
    assert "preferIPv4Stack" not in props.get("vmargs", "")


# ---- gateway auth: with token auth off, the network decides who calls ------------------------------------

GATEWAY_PEERS = [{"podSelector": {"matchLabels": {"codetr-serve/client": "true"}}},
                 {"namespaceSelector": {"matchLabels": {"codetr-serve/gateway": "true"}}}]


def selects(policy: dict, labels: dict[str, str]) -> bool:
    wanted = policy["spec"]["podSelector"].get("matchLabels", {})
    return wanted.items() <= labels.items()


@pytest.mark.parametrize("name", DEPLOYABLE)
def test_without_token_auth_only_the_labelled_gateway_reaches_8080(rendered: dict, name: str) -> None:
    docs, auth_off = rendered[name], 0
    for label, pod in workloads(docs):
        env = {e["name"]: e.get("value") for e in server(pod).get("env", [])}
        policies = [p for p in find(docs, "NetworkPolicy") if selects(p, pod_labels(docs, label))]
        assert len(policies) == 1, label
        spec = policies[0]["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        egress_ports = {p["port"] for rule in spec.get("egress", []) for p in rule.get("ports", [])}
        downloads = any(c["name"] == "fetch-model" for c in pod.get("initContainers", []))
        assert egress_ports == ({53, 80, 443} if downloads else set()), f"{label}: egress {egress_ports}"
        if env.get("CODETR_DISABLE_TOKEN_AUTH") != "1":
            continue
        auth_off += 1
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            if 8080 in ports:
                assert ports == {8080} and rule.get("from") == GATEWAY_PEERS, f"{label}: {rule}"
            else:
                assert ports == {8082}, f"{label}: {rule}"
    assert auth_off == (1 if name in ("overlays/kserve", "examples/gpu-all") else 0)
