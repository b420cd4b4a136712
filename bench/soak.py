"""Soak: a real TorchServe under a steady mix of good and bad requests; fails on a leak or a lost request.

    .venv/bin/python -m bench.soak --minutes 30        # `make soak` (SOAK_MINUTES=30)

Serves the tiny random-weight model (archive.sh -> .mar -> codetr_serve.tools.local_torchserve) and keeps
`--clients` connections busy with a fixed mix: good JPEG/PNG/base64 requests and bad ones (corrupt, empty,
unsupported, deep JSON, float TIFF, too thin). Every `--sample-s` it records the worker's RSS, the Java
frontend's RSS and heap (jstat, when the JDK has it), open file descriptors of both, and latency
percentiles. At the end it fits a line to the worker RSS after the warm-up (the first fifth, at least one
minute) and fails when the slope exceeds `--max-slope` MB/min, when a request is lost (transport error,
timeout, or a status outside what its kind should get), or when the worker was restarted.

Writes bench/results/soak-<timestamp>/{samples.csv,summary.json}. Not part of CI: it is long, and its
figures depend on the machine (run it alone; a shared machine makes the latencies noisy, not the slope).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil
import requests
from PIL import Image

from codetr_serve.tools.local_torchserve import LocalTorchServe

REPO = Path(__file__).resolve().parents[1]
MODEL = "co_detr"
MODEL_CONFIG = """\
minWorkers: 1
maxWorkers: 1
batchSize: 4
maxBatchDelay: 20
responseTimeout: 60
startupTimeout: 300
handler:
  score_threshold: 0.3
  warmup_runs: 1
"""


def _encode(width: int, height: int, fmt: str, seed: int, **options) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def request_mix() -> list[tuple[str, str, bytes, str]]:
    """(name, expected "ok"/"4xx", body, content type); picked round-robin so the mix is exact."""
    jpeg = _encode(640, 480, "JPEG", 1)
    float_tiff = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).random((48, 64), np.float32)).save(float_tiff, "TIFF")
    good = [
        ("jpeg_640x480", "ok", jpeg, "image/jpeg"),
        ("png_320x240", "ok", _encode(320, 240, "PNG", 4), "image/png"),
        ("json_base64", "ok", json.dumps({"image": base64.b64encode(jpeg).decode(),
                                          "max_detections": 20}).encode(), "application/json"),
        ("jpeg_1280x720", "ok", _encode(1280, 720, "JPEG", 5), "image/jpeg"),
    ]
    bad = [
        ("truncated_jpeg", "4xx", jpeg[: len(jpeg) // 2], "image/jpeg"),
        ("empty", "4xx", b"", "image/jpeg"),
        ("gif", "4xx", _encode(64, 48, "GIF", 6), "image/gif"),
        ("deep_json", "4xx", b'{"image": ' * 3000 + b'"x"' + b"}" * 3000, "application/json"),
        ("float_tiff", "4xx", float_tiff.getvalue(), "image/tiff"),
        ("too_thin", "4xx", _encode(2000, 8, "PNG", 7), "image/png"),
    ]
    return good + bad + good  # 8 good for 6 bad: 4:3


@dataclass
class Sample:
    t_min: float
    worker_rss_mb: float
    frontend_rss_mb: float
    frontend_heap_mb: float | None
    worker_fds: int
    frontend_fds: int
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


class Soak:
    def __init__(self, server: LocalTorchServe, clients: int) -> None:
        self.server, self.clients = server, clients
        self.mix = request_mix()
        self.results: list[tuple[float, str, bool, float]] = []  # (time, name, as expected, latency s)
        self.lost: Counter = Counter()
        self._lock = threading.Lock()
        self._next = 0
        self.stop = threading.Event()

    def client(self) -> None:
        session = requests.Session()
        url = self.server.url("inference", f"predictions/{MODEL}")
        while not self.stop.is_set():
            with self._lock:
                name, expected, body, ctype = self.mix[self._next % len(self.mix)]
                self._next += 1
            start = time.monotonic()
            try:
                response = session.post(url, data=body, timeout=120, headers={
                    "Content-Type": ctype, "Authorization": f"Bearer {self.server.key()}"})
                good = response.status_code == 200 if expected == "ok" else 400 <= response.status_code < 500
            except requests.RequestException as error:
                good, response = False, type(error).__name__
            with self._lock:
                self.results.append((time.monotonic(), name, good, time.monotonic() - start))
                if not good:
                    status = getattr(response, "status_code", response)
                    self.lost[f"{name}: {status}"] += 1


def frontend_process(server: LocalTorchServe) -> psutil.Process | None:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "java" in child.name():
            return child
    return None


def jstat_heap_mb(pid: int) -> float | None:
    """Used Java heap (survivors + eden + old) from `jstat -gc`; None without a JDK's jstat."""
    try:
        out = subprocess.run(["jstat", "-gc", str(pid)], capture_output=True, text=True, timeout=20).stdout
        header, values = out.split("\n")[:2]
        row = dict(zip(header.split(), map(float, values.split()), strict=False))
        return (row["S0U"] + row["S1U"] + row["EU"] + row["OU"]) / 1024
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
        return None


def take_sample(soak: Soak, started: float, worker: psutil.Process, java: psutil.Process,
                window: float) -> Sample:
    now = time.monotonic()
    with soak._lock:
        recent = [lat * 1000 for t, _, ok, lat in soak.results if ok and t > now - window]
        count = len(soak.results)
    p50, p95, p99 = np.percentile(recent, [50, 95, 99]) if recent else (float("nan"),) * 3
    return Sample(round((now - started) / 60, 3), worker.memory_info().rss / 2**20,
                  java.memory_info().rss / 2**20, jstat_heap_mb(java.pid), worker.num_fds(),
                  java.num_fds(), count, float(p50), float(p95), float(p99))


def slope_mb_per_min(samples: list[Sample], field: str, after_min: float) -> float:
    points = [(s.t_min, getattr(s, field)) for s in samples if s.t_min >= after_min
              and getattr(s, field) is not None]
    if len(points) < 3:
        return float("nan")
    t, v = np.array(points).T
    return float(np.polyfit(t, v, 1)[0])


def build_server(root: Path, handler: list[str]) -> LocalTorchServe:
    store = root / "model_store"
    pairs = (setting.split("=", 1) for setting in handler)
    extra = "".join(f"  {key.strip()}: {value.strip()}\n" for key, value in pairs)
    (root / "model-config.yaml").write_text(MODEL_CONFIG + extra)
    subprocess.run([str(REPO / "archive.sh"), "--config", str(REPO / "config" / "co_dino_tiny.py"),
                    "--out", str(store), "--name", MODEL, "--model-config", str(root / "model-config.yaml")],
                   check=True, env={**os.environ, "PYTHON_BIN": sys.executable}, stdout=subprocess.DEVNULL)
    return LocalTorchServe(root, store, {MODEL: f"{MODEL}.mar"}, threads=1)


def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp, build_server(Path(tmp), args.handler) as server:
        server.wait_ready(300)
        [worker_pid] = server.worker_pids(MODEL)
        worker, java = psutil.Process(worker_pid), frontend_process(server)
        if java is None:
            raise RuntimeError("no java process under torchserve: is the frontend running?")
        soak = Soak(server, args.clients)
        threads = [threading.Thread(target=soak.client, daemon=True) for _ in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[Sample] = []
        try:
            while time.monotonic() - started < args.minutes * 60:
                time.sleep(args.sample_s)
                samples.append(take_sample(soak, started, worker, java, window=60))
                s = samples[-1]
                heap = float("nan") if s.frontend_heap_mb is None else s.frontend_heap_mb
                print(f"{s.t_min:6.1f} min  worker {s.worker_rss_mb:7.1f} MB  java {s.frontend_rss_mb:7.1f} "
                      f"MB (heap {heap:6.1f})  fds {s.worker_fds}/{s.frontend_fds}  {s.requests} requests  "
                      f"p50/p99 {s.p50_ms:.0f}/{s.p99_ms:.0f} ms", flush=True)
        finally:
            soak.stop.set()
            for thread in threads:
                thread.join(timeout=150)
        restarted = server.worker_pids(MODEL) != {worker_pid}
    warmup = max(1.0, args.minutes / 5)
    latencies = [lat * 1000 for _, _, ok, lat in soak.results if ok]
    summary = {
        "minutes": args.minutes, "clients": args.clients, "handler": args.handler,
        "requests": len(soak.results),
        "by_kind": dict(Counter(name for _, name, _, _ in soak.results)), "lost": dict(soak.lost),
        "worker_restarted": restarted, "warmup_min": warmup,
        "worker_rss_slope_mb_per_min": slope_mb_per_min(samples, "worker_rss_mb", warmup),
        "frontend_rss_slope_mb_per_min": slope_mb_per_min(samples, "frontend_rss_mb", warmup),
        "frontend_heap_slope_mb_per_min": slope_mb_per_min(samples, "frontend_heap_mb", warmup),
        "worker_fds": [samples[0].worker_fds, samples[-1].worker_fds] if samples else [],
        "frontend_fds": [samples[0].frontend_fds, samples[-1].frontend_fds] if samples else [],
        "worker_rss_mb": [samples[0].worker_rss_mb, samples[-1].worker_rss_mb] if samples else [],
        "latency_ms": dict(zip(("p50", "p95", "p99"), map(float, np.percentile(latencies, [50, 95, 99])),
                               strict=True)) if latencies else {},
    }
    write_results(args.out, samples, summary)
    return summary


def write_results(out: Path, samples: list[Sample], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(Sample.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(s) for s in samples)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", 30)))
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--max-slope", type=float, default=1.0, help="worker RSS MB/min after warm-up")
    parser.add_argument("--handler", action="append", default=[], metavar="KEY=VALUE",
                        help="a handler setting for the soaked model, e.g. keep_freed_memory=false")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / time.strftime("soak-%Y%m%d-%H%M%S"))
    args = parser.parse_args(argv)
    summary = run(args)
    print(json.dumps(summary, indent=2))
    failures = []
    if not summary["worker_rss_slope_mb_per_min"] <= args.max_slope:  # NaN fails too: too few samples
        failures.append(f"worker RSS grows {summary['worker_rss_slope_mb_per_min']:.2f} MB/min after "
                        f"warm-up (limit {args.max_slope})")
    if summary["lost"]:
        failures.append(f"{sum(summary['lost'].values())} requests lost: {summary['lost']}")
    if summary["worker_restarted"]:
        failures.append("the worker was restarted during the soak")
    print("\n".join(["SOAK FAILED:", *failures]) if failures else f"soak passed; results in {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
