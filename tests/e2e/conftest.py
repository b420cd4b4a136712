"""A real TorchServe on loopback, serving .mar files built by archive.sh (session scoped: ~1 min to start)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from codetr_serve.tools.local_torchserve import free_ports, write_ts_config
from codetr_serve.tools.torchserve_api import TorchServeClient, read_keys
from tests.conftest import REPO, TINY_CONFIG

VENV_BIN = Path(sys.executable).parent
# Batching must be observable: a generous delay so concurrent test requests share a forward.
TEST_MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 4
maxBatchDelay: 300
responseTimeout: 120
startupTimeout: 300
handler:
  score_threshold: 0.0
  warmup_runs: 1
"""


def run_archive(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / "archive.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON_BIN": sys.executable}, timeout=600)


@dataclass
class Server:
    root: Path
    store: Path
    client: TorchServeClient
    metrics_url: str
    process: subprocess.Popen

    @property
    def keys(self) -> dict[str, str]:
        return read_keys(self.root / "key_file.json")

    def predict_url(self, model: str = "co_detr") -> str:
        return f"{self.client.inference_url}/predictions/{model}"

    def auth(self, api: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[api]}"}

    def log_text(self) -> str:
        logs = self.root / "logs"
        return "".join(p.read_text(errors="replace") for p in logs.glob("*.log")) if logs.exists() else ""


def wait_until_ready(server: Server, models: list[str], deadline_s: float = 300) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.process.poll() is not None:
            raise RuntimeError(f"torchserve exited early:\n{server.log_text()[-4000:]}")
        try:
            if server.keys and all(_workers_ready(server, m) for m in models):
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise TimeoutError(f"torchserve not ready after {deadline_s}s:\n{server.log_text()[-4000:]}")


def _workers_ready(server: Server, model: str) -> bool:
    response = server.client.manage("GET", f"models/{model}")
    return any(w["status"] == "READY" for entry in response.json() for w in entry["workers"])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("torchserve")
    store = root / "model_store"
    model_config = root / "model-config.yaml"
    model_config.write_text(TEST_MODEL_CONFIG)
    for fmt, name in (("zip", "co_detr"), ("no-archive", "co_detr_folder")):
        built = run_archive("--config", str(TINY_CONFIG), "--out", str(store), "--name", name,
                            "--format", fmt, "--model-config", str(model_config))
        assert built.returncode == 0, built.stderr
    ports = free_ports()
    config = write_ts_config(root, ports)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "TEMP": str(root), "TMPDIR": str(root)}
    command = [str(VENV_BIN / "torchserve"), "--start", "--ncs", "--foreground", "--enable-model-api",
               "--ts-config", str(config), "--model-store", str(store),
               "--models", "co_detr=co_detr.mar", "co_detr_folder=co_detr_folder"]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    client = TorchServeClient(f"http://127.0.0.1:{ports['inference']}",
                              f"http://127.0.0.1:{ports['management']}", root / "key_file.json",
                              timeout_s=120)
    srv = Server(root, store, client, f"http://127.0.0.1:{ports['metrics']}/metrics", process)
    try:
        wait_until_ready(srv, ["co_detr", "co_detr_folder"])
        yield srv
    finally:
        subprocess.run([str(VENV_BIN / "torchserve"), "--stop", "--foreground"], cwd=root, env=env,
                       capture_output=True, timeout=120)
        if process.poll() is None:
            process.kill()
        shutil.rmtree(root / "models", ignore_errors=True)
