"""Where a worker's time goes under load: py-spy on the TorchServe worker during a closed-loop phase.

    python -m bench.profile --model tiny --config bs4_d5_w1_t1 --concurrency 8 --seconds 15

py-spy is a profiling tool only (`.venv/bin/pip install py-spy`; not in requirements). Writes a flame
graph (SVG), the raw collapsed stacks and a summary (share of samples per stage) to the results folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import psutil

from bench.loadgen import TOKEN_ENV
from bench.plan import all_plans
from bench.run import test_image
from bench.runner import warm
from bench.server import REPO
from bench.variants import make_variant, run_archive
from codetr_serve.tools.local_torchserve import LocalTorchServe

# First match wins, checked from the innermost frame outwards.
STAGES = (("forward", "_forward_group"), ("decode + resize", "_decode_one"), ("encode JSON", "_encode_one"),
          ("metrics", "_emit ("), ("idle: waiting for a batch", "retrieve_msg"),
          ("idle: waiting for a batch", "_retrieve_buffer"), ("idle: waiting for a batch", "recv"))


def stage_of(stack: str) -> str:
    """The serving stage a collapsed py-spy stack ('outer;...;inner') belongs to."""
    for name, marker in STAGES:
        if marker in stack:
            return name
    return "other"


def summarize_raw(raw: str) -> dict[str, float]:
    """Share of samples per stage from py-spy's raw (collapsed) output: 'frames count' per line."""
    counts: Counter = Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            counts[stage_of(stack)] += int(count)
    total = sum(counts.values()) or 1
    return {name: counts[name] / total for name in sorted(counts, key=counts.get, reverse=True)}


def worker_pid(root_pid: int) -> int:
    """The pid of the (first) model worker under a TorchServe process tree."""
    for proc in psutil.Process(root_pid).children(recursive=True):
        if "model_service_worker" in " ".join(proc.cmdline()):
            return proc.pid
    raise RuntimeError("no TorchServe worker process found")


def record(server: LocalTorchServe, name: str, image: Path, args: argparse.Namespace, out: Path) -> str:
    """Drive load in a separate process while py-spy samples the worker; returns the raw stacks."""
    load = subprocess.Popen([sys.executable, "-m", "bench.loadgen", "--url",
                             server.url("inference", f"predictions/{name}"), "--image", str(image),
                             "--concurrency", str(args.concurrency), "--max-requests", "100000",
                             "--max-seconds", str(args.seconds + 5), "--out", str(out / "profile-load.json")],
                            cwd=REPO, env={**os.environ, TOKEN_ENV: server.key()})
    time.sleep(2)
    pid, spy = worker_pid(server.process.pid), str(Path(sys.executable).with_name("py-spy"))
    for fmt, path in (("raw", out / "profile.raw.txt"), ("flamegraph", out / "profile.svg")):
        subprocess.run([spy, "record", "--pid", str(pid), "--duration", str(args.seconds // 2), "--idle",
                        "--rate", "50", "--format", fmt, "--output", str(path)], check=True,
                       capture_output=True, timeout=args.seconds * 3)
    load.wait(timeout=args.seconds + 600)
    return (out / "profile.raw.txt").read_text()


def main(argv: list[str] | None = None) -> int:
    """Build the model, serve one sweep point, profile its worker under load, print the stage shares."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--config", default="bs4_d5_w1_t1")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = all_plans()[args.model]
    cfg = next(c for c in plan.configs if c.name == args.config)
    out = args.out or REPO / "bench" / "results" / f"profile-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="codetr-profile-"))
    try:
        image, config_file = test_image(work / "frame.jpg"), work / "model-config.yaml"
        config_file.write_text("minWorkers: 1\n")
        run_archive(plan.config, "base", work / "base", config_file)
        make_variant(work / "base" / "base", work / "store" / cfg.name, cfg.model_config(plan.handler))
        with LocalTorchServe(work / "ts", work / "store", {cfg.name: cfg.name},
                             threads=cfg.threads) as server:
            server.wait_ready(600)
            warm(server, cfg.name, image)
            shares = summarize_raw(record(server, cfg.name, image, args, out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"{name}: {share:.1%}" for name, share in shares.items()]
    (out / "profile-summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines) + f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
