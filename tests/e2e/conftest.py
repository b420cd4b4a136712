"""A real TorchServe on loopback, serving .mar files built by archive.sh (session scoped: ~1 min to start)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from codetr_serve.tools.local_torchserve import LocalTorchServe
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
    """The session's TorchServe, with the helpers tests use."""

    local: LocalTorchServe
    client: TorchServeClient

    @property
    def root(self) -> Path:
        return self.local.root

    @property
    def store(self) -> Path:
        return self.local.store

    @property
    def process(self) -> subprocess.Popen:
        return self.local.process

    @property
    def metrics_url(self) -> str:
        return self.local.url("metrics", "metrics")

    @property
    def keys(self) -> dict[str, str]:
        return read_keys(self.root / "key_file.json")

    def predict_url(self, model: str = "co_detr") -> str:
        return f"{self.client.inference_url}/predictions/{model}"

    def auth(self, api: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[api]}"}

    def log_text(self) -> str:
        return self.local.log_text("*.log")


def client_for(local: LocalTorchServe) -> TorchServeClient:
    base = "http://127.0.0.1"
    return TorchServeClient(f"{base}:{local.ports['inference']}", f"{base}:{local.ports['management']}",
                            local.root / "key_file.json", timeout_s=120)


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
    local = LocalTorchServe(root, store, {"co_detr": "co_detr.mar", "co_detr_folder": "co_detr_folder"},
                            flags=("--enable-model-api",))
    try:
        local.start()
        local.wait_ready(300)
        yield Server(local, client_for(local))
    finally:
        local.stop()
        shutil.rmtree(root / "models", ignore_errors=True)
