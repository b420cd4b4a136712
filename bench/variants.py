"""Servable model folders for the sweep: one archive built by archive.sh, then cheap variants of it.

A variant is the same no-archive folder (weights hard-linked, not copied) with its own model-config.yaml
and, for the baseline, another handler file. TorchServe reads batchSize/maxBatchDelay/workers from the
model-config.yaml inside the archive, so this is exactly what rebuilding with another --model-config gives.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BASELINE_HANDLER = Path(__file__).resolve().with_name("baseline_handler.py")


@dataclass(frozen=True)
class ServeConfig:
    """One point of the sweep: TorchServe batching/workers, torch threads per worker, handler.

    Threads go into the handler section (`torch_threads`), so configs with different thread counts can
    share one TorchServe.
    """

    name: str
    batch_size: int = 1
    max_batch_delay: int = 0
    workers: int = 1
    threads: int = 2
    baseline: bool = False

    def model_config(self, handler: dict, response_timeout: int = 600) -> dict:
        """The model-config.yaml content of this sweep point, with `handler` as its handler section."""
        return {"minWorkers": self.workers, "maxWorkers": self.workers, "batchSize": self.batch_size,
                "maxBatchDelay": self.max_batch_delay, "responseTimeout": response_timeout,
                "startupTimeout": 900, "jobQueueSize": 1000,
                "handler": {**handler, "torch_threads": self.threads}}


def run_archive(config: Path, name: str, out: Path, model_config: Path, fmt: str = "no-archive") -> float:
    """./archive.sh with random weights; returns seconds taken."""
    start = time.perf_counter()
    command = [str(REPO / "archive.sh"), "--config", str(config), "--name", name, "--format", fmt,
               "--out", str(out), "--model-config", str(model_config)]
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "PYTHON_BIN": sys.executable})
    if done.returncode != 0:
        raise RuntimeError(f"archive.sh failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def make_variant(base: Path, target: Path, model_config: dict, baseline: bool = False) -> Path:
    """Copy `base` (a no-archive folder) to `target` with a new model-config (and handler)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(base, target, copy_function=_link_or_copy)
    manifest_path = target / "MAR-INF" / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text())
    (target / manifest["model"]["configFile"]).unlink()
    manifest["model"]["configFile"] = "model-config.yaml"
    manifest["model"]["modelName"] = target.name
    (target / "model-config.yaml").write_text(yaml.safe_dump(model_config, sort_keys=False))
    if baseline:
        (target / manifest["model"]["handler"]).unlink()
        shutil.copy2(BASELINE_HANDLER, target / BASELINE_HANDLER.name)
        manifest["model"]["handler"] = BASELINE_HANDLER.name
    manifest_path.unlink()  # a hard link to the base's manifest: write a new file, never through the link
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return target
