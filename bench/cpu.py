"""Whole-model CPU forwards: our fast path and mmcv's path side by side in one process (`make bench-cpu`).

    python -m bench.cpu [--models r50 swin_l] [--reps 2] [--threads 2] [--no-profile]

Per model, one fresh process builds the model (random weights) once and runs one untimed warm-up forward per
path; then the paths take turns forward by forward in A B B A order, so machine load drifts hit every path
alike:
  fallback  mmcv's own code (pure-PyTorch deformable attention, mmcv's forwards, MKL linears): the reference
  op        the compiled op under mmcv's forwards (the state before CPU round 2)
  fast      what cpu_msda: auto serves now: fused deformable attention + oneDNN linear layers
The paths are switched in place with `configure_cpu_msda`, so they run the same weights on the same image.
Reported per path: each forward, mean with its 95 % t-interval, peak RSS of its warm-up forward (VmHWM,
reset before each; warm-ups run smallest path first, so a larger path's kept heap never counts), and per
A B B A pair the speedup; then the top ops of one profiled fast forward.
Results go to bench/results/cpu-<timestamp>/ (cpu.json, cpu.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from bench.msda import REPO, _cpu_name, forward, jpeg
from bench.stats import mean_interval

# model -> (config, forward size: test_scale [long, short] of the serving core)
MODELS = {"r50": ("serve_co_dino_r50.py", (1333, 800)),
          "swin_l": ("serve_co_dino_swin_l_o365tococo.py", (1280, 720)),
          "tiny": ("co_dino_tiny.py", (320, 192))}  # seconds: a smoke test of this script
PATHS = {"fallback": dict(mode="fallback"), "op": dict(mode="auto", fused=False, onednn=False),
         "fast": dict(mode="auto", fused=True, onednn=True)}


def _peak_rss_mb(reset: bool = False) -> float:
    """VmHWM of this process in MB; `reset` starts a new peak (Linux clear_refs 5)."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(model: str, paths: list[str], reps: int, threads: int, profile: bool) -> dict:
    import torch

    from codetr_serve.ops import msda
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.settings import build_settings

    config, (width, height) = MODELS[model]
    values = {"config_file": config, "weights_dir": "", "warmup_runs": 0, "torch_threads": threads,
              "score_threshold": 0.0, "test_scale": [width, height]}
    settings = build_settings(values, model_dir=REPO / "config", device="cpu")
    core = DetectorCore(settings)
    core.setup()
    body = {"body": jpeg(width, height)}
    warmup_s, warmup_rss_mb = {}, {}
    # One untimed forward each (oneDNN primitives, the allocator's heap), smallest memory first: each one's
    # peak is then its own (keep_freed_memory keeps a larger path's heap resident afterwards).
    for path in sorted(paths, key=list(PATHS)[::-1].index):
        msda.configure_cpu_msda(**PATHS[path])
        _peak_rss_mb(reset=True)
        start = time.perf_counter()
        forward(core, body)
        warmup_s[path], warmup_rss_mb[path] = time.perf_counter() - start, _peak_rss_mb()
    result: dict = {"model": model, "threads": threads, "warmup_s": warmup_s, "peak_rss_mb": warmup_rss_mb,
                    "forward_size": [width, height], "op": msda.load_op().describe(), "runs": []}
    # A B B A (or A B C C B A): every path once early and once late per round.
    for path in [*paths, *reversed(paths)] * max(1, reps // 2):
        msda.configure_cpu_msda(**PATHS[path])
        _peak_rss_mb(reset=True)
        outputs = forward(core, body)
        errors = [repr(o) for o in outputs if isinstance(o, Exception)]
        run = {"path": path, "forward_s": core.last_stats.inference_ms / 1000, "peak_rss_mb": _peak_rss_mb(),
               "detections": sum(1 for o in outputs if not isinstance(o, Exception)), "errors": errors}
        result["runs"].append(run)
        print(json.dumps(run), file=sys.stderr, flush=True)
    if profile:
        msda.configure_cpu_msda(**PATHS["fast"])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            forward(core, body)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        result["profile_total_s"] = total / 1e6
        result["profile"] = [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count,
                              "share": e.self_cpu_time_total / total} for e in events[:14]]
    return result


def model_table(result: dict) -> str:
    width, height = result["forward_size"]
    runs = result["runs"]
    lines = [f"{result['model']} at {width}x{height}, {result['threads']} threads, random weights, one "
             f"process; order {' '.join(r['path'] for r in runs)}", "",
             "| path | forward s (each) | mean s (95 % interval) | peak RSS MB (warm-up) "
             "| speedup vs fallback |",
             "|---|---|---|---|---|"]
    by_path = {p: [r for r in runs if r["path"] == p] for p in PATHS}
    base = [r["forward_s"] for r in by_path["fallback"]]
    for path, rs in by_path.items():
        if not rs:
            continue
        times = [r["forward_s"] for r in rs]
        low, high = mean_interval(times)
        mean = sum(times) / len(times)
        ratios = [b / t for b, t in zip(base, times, strict=False)] if base and path != "fallback" else []
        speed = "-" if not ratios else \
            f"{sum(base) / sum(times):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}x)"
        each = ", ".join(f"{t:.1f}" for t in times)
        lines.append(f"| {path} | {each} | {mean:.1f} ({low:.1f}-{high:.1f}) | "
                     f"{result['peak_rss_mb'][path]:.0f} | {speed} |")
    return "\n".join(lines)


def profile_table(result: dict) -> str:
    lines = [f"Profile of one fast {result['model']} forward (self CPU time, intra-op threads included; "
             f"total {result['profile_total_s']:.1f} s)", "", "| op | self s | share | calls |",
             "|---|---|---|---|"]
    lines += [f"| {p['op']} | {p['self_s']:.2f} | {100 * p['share']:.1f} % | {p['calls']} |"
              for p in result["profile"]]
    return "\n".join(lines)


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} CPUs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r50", "swin_l"])
    parser.add_argument("--paths", nargs="+", choices=sorted(PATHS), default=["fallback", "op", "fast"],
                        help="paths to compare (Swin-L skips 'op': its forwards take minutes)")
    parser.add_argument("--reps", type=int, default=2, help="forwards per path (even: A B B A rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.paths, args.reps, args.threads, not args.no_profile)))
        return 0
    out = REPO / "bench" / "results" / f"cpu-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu": _cpu_name(), "threads": args.threads, "load_before": load_line(), "models": []}
    text = [f"CPU: {report['cpu']}; {report['load_before']} at start"]
    print(text[0], flush=True)
    for model in args.models:
        paths = [p for p in args.paths if not (model == "swin_l" and p == "op")]
        command = [sys.executable, "-m", "bench.cpu", "--child", model, "--reps", str(args.reps),
                   "--threads", str(args.threads), "--paths", *paths]
        if args.no_profile or model == "swin_l":
            command.append("--no-profile")
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env, check=False)
        if completed.returncode != 0:
            print(f"{model}: the child failed (exit {completed.returncode})", file=sys.stderr)
            return 1
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        result["load_after"] = load_line()
        report["models"].append(result)
        text.append(model_table(result) + f"\n\n({result['load_after']} when it ended)")
        if "profile" in result:
            text.append(profile_table(result))
        print("\n\n".join(text[-2 if "profile" in result else -1:]) + "\n", flush=True)
    (out / "cpu.json").write_text(json.dumps(report, indent=1))
    (out / "cpu.md").write_text("\n\n".join(text) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
