"""Cold start of the full-size Swin-L Co-DINO (random weights, ~900 MB): archive build, zip vs no-archive.

Measured: archive.sh time per format; `torchserve --start` -> first successful prediction per format; and
the bare in-process load (build the model + read the safetensors) for comparison. The cold-start
model-config sets warmup_runs: 0 AND test_scale [320, 192]: a CPU forward at the config's 2048x1280 takes
minutes (BRIEF: 254 s/image), which would swamp the start-up figure we are after; the first prediction is
then one small forward (its latency is reported on its own line).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import requests
import yaml

from bench.runner import run_module
from bench.server import REPO, Sampler
from bench.variants import run_archive
from codetr_serve.tools.local_torchserve import LocalTorchServe

SWIN_L = REPO / "config" / "serve_co_dino_swin_l_o365tococo.py"
HANDLER = {"test_scale": [320, 192], "warmup_runs": 0}
MODEL_CONFIG = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1, "maxBatchDelay": 0, "responseTimeout": 900,
                "startupTimeout": 900, "handler": HANDLER}


def first_prediction(server: LocalTorchServe, name: str, image: bytes, deadline_s: float) -> dict:
    """Seconds from `torchserve --start` to a READY worker, and to the first successful prediction."""
    ready_s = server.wait_ready(deadline_s)
    sent = time.perf_counter()
    headers = {"Authorization": f"Bearer {server.key()}", "Content-Type": "image/jpeg"}
    response = requests.post(server.url("inference", f"predictions/{name}"), data=image, timeout=900,
                             headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"first prediction failed: {response.status_code} {response.text[:500]}")
    done = time.perf_counter()
    return {"ready_s": ready_s, "first_request_s": done - sent,
            "first_prediction_s": done - server.started_at}


def serve_once(store: Path, entry: str, work: Path, image: bytes, threads: int) -> dict:
    """Start TorchServe on `entry`, time the first successful prediction, stop."""
    root = work / f"ts-cold-{entry.replace('.', '-')}"
    with LocalTorchServe(root, store, {"swin_l": entry}, threads=threads) as server:
        with Sampler(server.process.pid, interval_s=0.5) as sampler:
            result = first_prediction(server, "swin_l", image, deadline_s=900)
        return {**result, "peak_worker_rss_mb": sampler.sample.peak_worker_rss_mb}


def bare_load(model_dir: Path, out: Path, threads: int) -> dict:
    """bench.coldstart_load in its own process: import, build, read weights, load, each timed."""
    run_module(["bench.coldstart_load", "--model-dir", str(model_dir), "--threads", str(threads),
                "--out", str(out)], timeout_s=900)
    return json.loads(out.read_text())


def run(work: Path, image: Path, threads: int = 2) -> dict:
    """Every cold-start figure, as one dict for the report."""
    store = work / "cold-store"
    store.mkdir(parents=True, exist_ok=True)
    model_config = work / "cold-model-config.yaml"
    model_config.write_text(yaml.safe_dump(MODEL_CONFIG, sort_keys=False))
    result: dict = {"model_config": MODEL_CONFIG}
    for fmt, entry in (("no-archive", "swin_l_folder"), ("zip", "swin_l_zip.mar")):
        name = entry.removesuffix(".mar")
        print(f"  cold start: building {fmt} archive of Swin-L", flush=True)
        result[f"archive_{fmt}_s"] = run_archive(SWIN_L, name, store, model_config, fmt)
        path = store / entry
        result[f"archive_{fmt}_mb"] = _size_mb(path)
        print(f"  cold start: serving {fmt}", flush=True)
        result[f"serve_{fmt}"] = serve_once(store, entry, work, image.read_bytes(), threads)
        print(f"  cold start {fmt}: {result[f'serve_{fmt}']}", flush=True)
    result["bare_load"] = bare_load(store / "swin_l_folder", work / "bare-load.json", threads)
    return result


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20
