"""What the pods run, against a real TorchServe 0.12: docker/entrypoint.sh starting it with the image's
config.properties (addresses and paths moved to this machine), docker/healthcheck.py, k8s/hooks/drain.py.

- /ping needs the inference key; renewing it through the management API with the API key makes the new
  key work and the old one refused; the health check follows both, and a key that really expired;
- the console-only log4j2 config (docker/log4j2.xml): requests are served and nothing is written to disk;
- 0.0.0.0 in config.properties is a dual-stack socket: the server answers on IPv6 (::1) too;
- preStop drain + SIGTERM with requests in flight and queued: every request is answered 200.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import requests

from codetr_serve.tools.local_torchserve import free_ports
from tests.conftest import REPO, TINY_CONFIG, encode_image
from tests.e2e.conftest import VENV_BIN, run_archive

pytestmark = pytest.mark.e2e

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
HEALTHCHECK = REPO / "docker" / "healthcheck.py"
DRAIN = REPO / "k8s" / "hooks" / "drain.py"
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 2
maxBatchDelay: 20
responseTimeout: 120
startupTimeout: 300
handler:
  score_threshold: 0.0
  warmup_runs: 1
"""


@dataclass
class Pod:
    """TorchServe as the container runs it: docker/entrypoint.sh in its own session."""

    root: Path
    ports: dict[str, int]
    env: dict[str, str]
    process: subprocess.Popen

    def url(self, api: str, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.ports[api]}{path}"

    def keys(self) -> dict[str, str]:
        data = json.loads((self.root / "work" / "key_file.json").read_text())
        return {api: entry["key"] for api, entry in data.items()}

    def expiry(self) -> datetime:
        data = json.loads((self.root / "work" / "key_file.json").read_text())
        return datetime.fromisoformat(data["inference"]["expiration time"].replace("Z", "+00:00"))

    def script(self, path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(path), *args], env={**self.env, **env},
                              capture_output=True, text=True, timeout=400)

    def console(self) -> str:
        return (self.root / "console.log").read_text(errors="replace")


def pod_config(root: Path, ports: dict[str, int], store: Path, extra: str) -> Path:
    """docker/config.properties with this machine's ports and paths; everything else as in the image."""
    lines = []
    for line in (REPO / "docker" / "config.properties").read_text().splitlines():
        key = line.split("=", 1)[0]
        host = "127.0.0.1" if key == "management_address" else "0.0.0.0"
        api = key.removesuffix("_address")
        if api in ("inference", "management", "metrics"):
            line = f"{key}=http://{host}:{ports[api]}"
        elif key == "model_store":
            line = f"model_store={store}"
        elif key == "metrics_config":
            line = f"metrics_config={REPO / 'config' / 'metrics.yaml'}"
        elif key == "vmargs":
            assert "log4j2.xml" in line
            line = f"vmargs=-Dlog4j.configurationFile=file://{REPO / 'docker' / 'log4j2.xml'}"
        lines.append(line)
    lines += [f"grpc_inference_port={ports['grpc_inference']}",
              f"grpc_management_port={ports['grpc_management']}", extra]
    path = root / "config.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_pod(root: Path, extra_config: str = "") -> Pod:
    store = root / "store"
    (root / "model-config.yaml").write_text(MODEL_CONFIG)
    built = run_archive("--config", str(TINY_CONFIG), "--out", str(store), "--name", "co_detr",
                        "--format", "no-archive", "--model-config", str(root / "model-config.yaml"))
    assert built.returncode == 0, built.stderr
    ports = free_ports()
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "MODEL_STORE": str(store),
           "TS_CONFIG_FILE": str(pod_config(root, ports, store, extra_config)),
           "CODETR_WORKDIR": str(root / "work"), "TEMP": str(root / "tmp"), "TMPDIR": str(root / "tmp"),
           "LOG_LOCATION": str(root / "logs"), "METRICS_LOCATION": str(root / "logs"),
           "DRAIN_INFERENCE_URL": f"http://127.0.0.1:{ports['inference']}",
           "DRAIN_MANAGEMENT_URL": f"http://127.0.0.1:{ports['management']}"}
    env.pop("CODETR_DISABLE_TOKEN_AUTH", None)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    with (root / "console.log").open("wb") as console:
        process = subprocess.Popen(["bash", str(ENTRYPOINT)], env=env, stdout=console,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    pod = Pod(root, ports, env, process)
    deadline = time.monotonic() + 300
    while pod.script(HEALTHCHECK).returncode != 0:  # the probe the pod's startupProbe runs
        assert process.poll() is None, f"entrypoint exited {process.returncode}: {pod.console()[-3000:]}"
        assert time.monotonic() < deadline, f"not healthy after 300 s: {pod.console()[-3000:]}"
        time.sleep(1)
    return pod


def stop_pod(pod: Pod) -> None:
    if pod.process.poll() is None:
        pod.process.send_signal(signal.SIGTERM)
        try:
            pod.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(pod.process.pid, signal.SIGKILL)
            pod.process.wait()


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory):
    started = start_pod(tmp_path_factory.mktemp("pod"))
    yield started
    stop_pod(started)


def ping(pod: Pod, key: str | None, host: str = "127.0.0.1") -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.get(pod.url("inference", "/ping", host), headers=headers, timeout=10)


def predict(pod: Pod, image: bytes, key: str) -> requests.Response:
    return requests.post(pod.url("inference", "/predictions/co_detr"), data=image, timeout=120,
                         headers={"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"})


def test_ping_needs_the_inference_key(pod: Pod) -> None:
    keys = pod.keys()
    for key in (None, keys["management"], "not-a-key"):
        refused = ping(pod, key)
        assert refused.status_code == 400 and "InvalidKeyException" in refused.text, (key, refused.text)
    answer = ping(pod, keys["inference"])
    assert answer.status_code == 200 and answer.json()["status"] == "Healthy"


def test_renewed_key_works_old_key_is_refused_and_the_check_follows(pod: Pod) -> None:
    old = pod.keys()
    renew = pod.url("management", "/token?type=inference")
    assert requests.get(renew, headers={"Authorization": f"Bearer {old['inference']}"},
                        timeout=10).status_code == 400  # only the API key may renew
    assert requests.get(renew, headers={"Authorization": f"Bearer {old['API']}"}, timeout=10).ok
    new = pod.keys()
    assert new["inference"] != old["inference"] and new["API"] == old["API"]
    assert ping(pod, new["inference"]).status_code == 200
    assert ping(pod, old["inference"]).status_code == 400
    check = pod.script(HEALTHCHECK)
    assert check.returncode == 0 and "Healthy" in check.stdout, check.stdout + check.stderr
    printed = pod.script(HEALTHCHECK, "--refresh-token")
    assert printed.returncode == 0 and printed.stdout.strip() == pod.keys()["inference"] != new["inference"]


def test_requests_are_logged_to_stdout_and_nothing_to_disk(pod: Pod) -> None:
    answer = predict(pod, encode_image(320, 240), pod.keys()["inference"])
    assert answer.status_code == 200, answer.text
    time.sleep(1)  # let the access log line out
    written = [p for p in (pod.root / "logs").rglob("*") if p.is_file()]
    written += [p for p in (pod.root / "work").rglob("*.log*")]
    assert written == [], f"TorchServe wrote log files: {written}"
    console = pod.console()
    assert "POST /predictions/co_detr" in console and "[DEBUG]" not in console


def test_metric_lines_reach_metrics_but_not_the_console(pod: Pod) -> None:
    """TorchServe logs its copy of every metric line a worker prints (~65 per batch); the pod's log config
    drops those copies, and /metrics still counts every image."""
    def images_counted() -> float:
        text = requests.get(pod.url("metrics", "/metrics"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("CoDetrImages{"))

    before = images_counted()
    for _ in range(3):
        assert predict(pod, encode_image(160, 120), pod.keys()["inference"]).status_code == 200
    deadline = time.monotonic() + 30  # metric lines are written after the replies
    while images_counted() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert images_counted() == before + 3
    console = pod.console()
    assert "[METRICS]" not in console, [line for line in console.splitlines() if "[METRICS]" in line][:2]


def test_a_zero_address_answers_on_ipv6_too(pod: Pod) -> None:
    try:
        socket.create_connection(("::1", pod.ports["metrics"]), timeout=5).close()
    except OSError as error:
        pytest.skip(f"this host has no IPv6 loopback: {error}")
    assert ping(pod, pod.keys()["inference"], host="[::1]").status_code == 200
    assert requests.get(pod.url("metrics", "/metrics", "[::1]"), timeout=10).status_code == 200


def test_drain_then_sigterm_answers_every_request_in_flight_and_queued(pod: Pod) -> None:
    """Last in this module: it stops the server the way Kubernetes stops a pod."""
    key, image, count = pod.keys()["inference"], encode_image(1280, 720), 32
    done: list[float] = []

    def client(_: int) -> int:
        status = predict(pod, image, key).status_code
        done.append(time.monotonic())
        return status

    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(client, i) for i in range(count)]
        while not done:  # the worker is busy with the first batch, the rest is queued
            time.sleep(0.01)
        drain_start = time.monotonic()
        drained = pod.script(DRAIN, DRAIN_DELAY_S="0", DRAIN_PROBES="2")
        drain_s = time.monotonic() - drain_start
        pod.process.send_signal(signal.SIGTERM)  # what the kubelet does once preStop returns
        statuses = [f.result() for f in futures]
    pending = sum(t > drain_start for t in done)
    exit_status = pod.process.wait(timeout=60)
    print(f"\ndrain: {pending}/{count} in flight or queued when it began, drain took {drain_s:.1f} s,"
          f" statuses {sorted(set(statuses))}, entrypoint exit {exit_status}")
    assert drained.returncode == 0 and "probe 2/2 answered 200" in drained.stderr, drained.stderr
    assert pending >= count // 2, "too few requests were waiting: the test would prove nothing"
    assert statuses == [200] * count
    assert exit_status == 0 and "TorchServe stopped" in pod.console()


def test_check_and_drain_renew_a_key_that_really_expired(tmp_path: Path) -> None:
    pod = start_pod(tmp_path, "token_expiration_min=0.25")  # 15 s
    try:
        for attempt in ("healthcheck", "drain"):
            old = pod.keys()["inference"]
            wait = (pod.expiry() - datetime.now(pod.expiry().tzinfo)).total_seconds()
            time.sleep(max(0.0, wait) + 1)
            expired = ping(pod, old)
            assert expired.status_code == 400 and "InvalidKeyException" in expired.text, expired.text
            if attempt == "healthcheck":
                run = pod.script(HEALTHCHECK)
                assert run.returncode == 0 and "Healthy" in run.stdout, run.stdout + run.stderr
            else:
                run = pod.script(DRAIN, DRAIN_DELAY_S="0", DRAIN_PROBES="1")
                assert run.returncode == 0 and "probe 1/1 answered 200" in run.stderr, run.stderr
            assert pod.keys()["inference"] != old
            assert ping(pod, pod.keys()["inference"]).status_code == 200
    finally:
        stop_pod(pod)
