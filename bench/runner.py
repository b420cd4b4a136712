"""Run one model's plan: in-process ceiling, then each serving config under each load phase."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from bench import metrics_parse, stats
from bench.loadgen import TOKEN_ENV
from bench.plan import ModelPlan, Phase
from bench.server import REPO, Sampler
from bench.variants import ServeConfig, make_variant
from codetr_serve.tools.local_torchserve import LocalTorchServe

LOG_CONFIG = Path(__file__).resolve().with_name("log4j2.xml")  # files, no rollover: see its comment


@dataclass
class Row:
    """One (model, config, phase) measurement: a line of the CSV and of the markdown tables."""

    model: str
    config: str
    handler: str
    batch_size: int
    max_batch_delay: int
    workers: int
    threads: int
    mode: str
    concurrency: int
    rate: float
    requests: int
    errors: int
    throughput: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_batch: float
    batch_hist: str
    forward_ms: float  # mean CoDetrForwardSeconds in ms (one batched forward, server side); NaN: baseline
    worker_cpu_pct: float
    frontend_cpu_pct: float
    worker_rss_mb: float
    ready_s: float
    source: str = "sweep"  # "sweep": one phase after another; "paired xN": pooled over N alternating rounds


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def run_module(args: list[str], timeout_s: float, env: dict[str, str] | None = None) -> None:
    """`python -m <args>` from the repository root (extra `env` on top of ours), failing loudly."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout_s, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def ceiling(plan: ModelPlan, model_dir: Path, batch: int, threads: int, image: Path, out: Path) -> dict:
    """In-process images/s at `batch` (bench.inprocess in its own process, same threads as a worker)."""
    batches = max(2, plan.ceiling_images // batch)
    run_module(["bench.inprocess", "--model-dir", str(model_dir), "--handler", json.dumps(plan.handler),
                "--batch", str(batch), "--batches", str(batches), "--max-seconds", str(plan.ceiling_seconds),
                "--threads", str(threads), "--image", str(image), "--out", str(out)],
               timeout_s=plan.ceiling_seconds * 3 + 300,
               env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})  # as a worker gets
    return json.loads(out.read_text())


def loadgen(server: LocalTorchServe, names: list[str], mode_args: list[str], max_requests: int,
            max_seconds: float, image: Path, out: Path) -> dict:
    """Run bench.loadgen (a separate process) against the models `names`; returns its JSON."""
    urls = [arg for name in names for arg in ("--url", server.url("inference", f"predictions/{name}"))]
    run_module(["bench.loadgen", *urls, "--image", str(image), *mode_args, "--max-requests",
                str(max_requests), "--max-seconds", str(max_seconds), "--out", str(out)],
               timeout_s=max_seconds + 700, env={TOKEN_ENV: server.key()})
    return json.loads(out.read_text())


def drive(server: LocalTorchServe, name: str, phase: Phase, capacity: float, image: Path, out: Path) -> dict:
    """One sweep phase (closed or open loop) against model `name`; the load generator's JSON."""
    mode_args = (["--concurrency", str(phase.concurrency)] if phase.mode == "closed"
                 else ["--rate", f"{max(phase.rate_factor * capacity, 0.01):.4f}"])
    return loadgen(server, [name], ["--mode", phase.mode, *mode_args], phase.max_requests,
                   phase.max_seconds, image, out)


def warm(server: LocalTorchServe, name: str, image: Path) -> None:
    """One request before measuring, so lazy first-call costs are not in any phase."""
    headers = {"Authorization": f"Bearer {server.key()}", "Content-Type": "image/jpeg"}
    response = requests.post(server.url("inference", f"predictions/{name}"), data=image.read_bytes(),
                             headers=headers, timeout=600)
    if response.status_code != 200:
        raise RuntimeError(f"warm-up request failed: {response.status_code} {response.text[:500]}")


def metric_log(server: LocalTorchServe) -> str:
    """Where TorchServe logs `[METRICS]` lines: model_metrics.log (log mode) or ts_log.log (Prometheus)."""
    return server.log_text("model_metrics.log") or server.log_text("ts_log.log")


def metric_lines_since(server: LocalTorchServe, start: int) -> list[str]:
    """The metric log's lines after character `start` (a length taken before a phase)."""
    text = metric_log(server)
    if len(text) < start:
        raise RuntimeError(f"TorchServe's log shrank from {start} to {len(text)} characters during a "
                           "phase (rolled over?): its per-batch figures are lost; bench/log4j2.xml must "
                           "not roll it")
    return text[start:].splitlines()


def server_batches(server: LocalTorchServe, before: tuple[str, int],
                   after_text: str) -> tuple[float, str, float]:
    """Mean batch (CoDetrImages/CoDetrBatches deltas), batch sizes and mean forward ms (from the log)."""
    lines = metric_lines_since(server, before[1])
    histogram = metrics_parse.batch_histogram(metrics_parse.log_metric_values(lines, "CoDetrBatchSize_sum"))
    forward_ms = 1000.0 * _mean(metrics_parse.log_metric_values(lines, "CoDetrForwardSeconds_sum"))
    return mean_batch_between(before[0], after_text), metrics_parse.format_histogram(histogram), forward_ms


def mean_batch_between(before_text: str, after_text: str) -> float:
    """Images per batch from the CoDetrImages / CoDetrBatches deltas between two /metrics scrapes."""
    images, batches = (metrics_parse.prometheus_values(after_text, name)
                       - metrics_parse.prometheus_values(before_text, name)
                       for name in ("CoDetrImages", "CoDetrBatches"))
    return metrics_parse.mean_batch(images, batches)


def measure_phase(server: LocalTorchServe, plan: ModelPlan, cfg: ServeConfig, phase: Phase, capacity: float,
                  image: Path, out: Path, ready_s: float) -> Row:
    """One phase against a running server: client latencies, server batches, worker CPU/RSS."""
    before = (server.metrics_text(), len(metric_log(server)))
    with Sampler(server.process.pid, worker_pids=server.worker_pids(cfg.name)) as sampler:
        result = drive(server, cfg.name, phase, capacity, image, out)
    latencies = [r["latency_ms"] for r in result["records"] if r["status"] == 200]
    errors = sum(1 for r in result["records"] if r["status"] != 200)
    summary = stats.summarize(latencies, errors, result["duration_s"])
    mean_batch, hist, forward_ms = server_batches(server, before, server.metrics_text())
    s = sampler.sample
    return Row(plan.name, cfg.name, "baseline" if cfg.baseline else "ours", cfg.batch_size,
               cfg.max_batch_delay, cfg.workers, cfg.threads, phase.mode, phase.concurrency,
               round(result["rate"], 3), summary.requests, errors, summary.throughput, summary.p50_ms,
               summary.p95_ms, summary.p99_ms, mean_batch, hist, forward_ms, _mean(s.cpu_percent),
               _mean(s.frontend_cpu_percent), max(s.rss_mb, default=math.nan), ready_s)


@contextmanager
def serve_all(plan: ModelPlan, base: Path, work: Path, image: Path) -> Iterator[LocalTorchServe]:
    """One TorchServe hosting every config of `plan` as its own model, all workers READY and warmed.

    One server per model (not per config) lets the paired rounds alternate configs on the same machine
    state; an idle worker costs memory, not CPU.
    """
    store = work / "store"
    for cfg in plan.configs:
        make_variant(base, store / cfg.name, cfg.model_config(plan.handler), baseline=cfg.baseline)
    with LocalTorchServe(work / "ts", store, {cfg.name: cfg.name for cfg in plan.configs},
                         flags=("--log-config", str(LOG_CONFIG))) as server:
        server.ready_s = server.wait_ready(deadline_s=900)
        for cfg in plan.configs:
            warm(server, cfg.name, image)
        yield server


def run_config(server: LocalTorchServe, plan: ModelPlan, cfg: ServeConfig, work: Path, image: Path,
               capacity: float) -> list[Row]:
    """Every sweep phase of `plan` against config `cfg` on the shared server."""
    rows = []
    for index, phase in enumerate(plan.phases):
        out = work / f"load-{cfg.name}-{index}.json"
        row = measure_phase(server, plan, cfg, phase, capacity, image, out, server.ready_s)
        print(f"  {plan.name}/{cfg.name} {phase.mode} c={row.concurrency} rate={row.rate}: "
              f"{row.throughput:.2f}/s p50 {row.p50_ms:.0f} ms batch {row.mean_batch:.2f} "
              f"errors {row.errors}", flush=True)
        rows.append(row)
    return rows


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    """Rows as plain dicts (CSV, JSON, report)."""
    return [asdict(row) for row in rows]
