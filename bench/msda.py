"""CPU multi-scale deformable attention: our compiled op vs mmcv's pure-PyTorch fallback, side by side.

    python -m bench.msda                   # op level + R50 forward (A B B A) + profile: ~8 min on 2 cores
    python -m bench.msda --skip-model      # op level only: ~1 min
    python -m bench.msda --swin-l          # adds one Swin-L 1280x720 forward per side: +~5 min

1. Op level, in this process, with --threads intra-op threads: the encoder shape of a 1333x800 image
   (the R50 config's five levels: strides 4-64 of the 1333x800 batch, which the config does not pad;
   queries = keys = every location of every level: 89,023), the same shape with uniformly random
   locations (worst-case memory access), and the decoder shape (900 queries over the same keys); 8 heads,
   head size 32, 4 points. Each repetition times both sides, in A B B A order, so the machine's drift
   lands on both.
2. One whole Co-DINO R50 forward at 1333x800 (config/serve_co_dino_r50.py, random weights, one image)
   through the serving core (`cpu_msda: auto` vs `fallback`), each side in its own fresh process (clean
   peak RSS from getrusage), A B B A; then the op side once more under torch.profiler: top ops by self
   CPU time, to say what costs the most after the op.
3. --swin-l: the Swin-L o365tococo config on a 1280x720 frame with its official pipeline (2048x1152).

Prints markdown tables; JSON goes to bench/results/msda-<timestamp>/.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "r50": ("serve_co_dino_r50.py", (1333, 800)),
    "swin_l": ("serve_co_dino_swin_l_o365tococo.py", (1280, 720)),
}


def abba(count: int) -> list[int]:
    """0 1 1 0 0 1 1 0 ..."""
    return [(index + 1) // 2 % 2 for index in range(count)]


# -- 1. op level ------------------------------------------------------------------------------------------
def level_shapes(width: int, height: int, strides=(4, 8, 16, 32, 64),
                 divisor: int = 1) -> list[tuple[int, int]]:
    """(h, w) per level of a batch padded to `divisor` (the R50 config: 1, no padding); stride-2 convs
    round up. The model run in part 2 prints the shapes it really used."""
    padded_h, padded_w = math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor
    return [(math.ceil(padded_h / s), math.ceil(padded_w / s)) for s in strides]


def encoder_problem(shapes, heads=8, dim=32, points=4, uniform=False, seed=0):
    """Every location of every level queries the map near its own position (as the encoder does)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(1, keys, heads, dim, generator=g)
    if uniform:
        locations = torch.rand(1, keys, heads, levels, points, 2, generator=g)
    else:
        centres = []
        for h, w in shapes:
            ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
            centres.append(torch.stack([xs.flatten(), ys.flatten()], -1))
        reference = torch.cat(centres)[None, :, None, None, None, :]  # (1, keys, 1, 1, 1, 2)
        size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float32)[None, None, None, :, None, :]
        # mmcv's initial offsets are 1..points pixels in 8 directions; trained ones spread a bit more.
        pixels = torch.randn(1, keys, heads, levels, points, 2, generator=g) * 2.0
        locations = reference + pixels / size
    weights = torch.rand(1, locations.shape[1], heads, levels * points, generator=g).softmax(-1)
    return value, torch.tensor(shapes), locations.contiguous(), weights.view(*locations.shape[:-1])


def decoder_problem(shapes, queries=900, heads=8, dim=32, points=4, seed=1):
    """900 boxes anywhere in the image, sampling inside their box (4-d reference points)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(1, keys, heads, dim, generator=g)
    centre = torch.rand(1, queries, 1, 1, 1, 2, generator=g)
    size = torch.rand(1, queries, 1, 1, 1, 2, generator=g) * 0.5 + 0.02
    offsets = torch.randn(1, queries, heads, levels, points, 2, generator=g)
    locations = centre + offsets / points * size * 0.5
    weights = torch.rand(1, queries, heads, levels * points, generator=g).softmax(-1)
    return value, torch.tensor(shapes), locations.contiguous(), weights.view(*locations.shape[:-1])


def time_op_level(name: str, problem, reps: int) -> dict:
    import torch

    from codetr_serve.ops import msda

    value, shapes, locations, weights = problem
    starts = msda.level_start_index(shapes)
    fallback = msda._original_fallback()
    sides = [
        lambda: torch.ops.codetr_ops.msda_forward(value, shapes, starts, locations, weights, "auto"),
        lambda: fallback(value, shapes, locations, weights),
    ]
    times: list[list[float]] = [[], []]
    with torch.inference_mode():
        ours, theirs = sides[0](), sides[1]()  # warm-up, and the accuracy check
        error = (ours - theirs).abs().max().item()
        for side in abba(2 * reps):
            start = time.perf_counter()
            sides[side]()
            times[side].append(1000 * (time.perf_counter() - start))
    ratios = [b / a for a, b in zip(times[0], times[1], strict=True)]
    return {"name": name, "queries": int(locations.shape[1]), "keys": int(value.shape[1]),
            "op_ms": times[0], "mmcv_ms": times[1], "speedup": ratios, "max_abs_diff": error}


def op_table(rows: list[dict], threads: int, isa: str) -> str:
    def span(values: list[float], fmt: str = ".1f") -> str:
        return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"

    lines = [f"Op level, {threads} threads, kernel {isa}; median (min-max) over {len(rows[0]['op_ms'])} "
             "A B B A repetitions; speedup = mmcv / op per repetition",
             "", "| shape | queries x keys | op ms | mmcv fallback ms | speedup | max abs diff |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['queries']} x {r['keys']} | {span(r['op_ms'])} | "
              f"{span(r['mmcv_ms'], '.0f')} | {span(r['speedup'])}x | {r['max_abs_diff']:.1e} |"
              for r in rows]
    return "\n".join(lines)


# -- 2./3. whole model, one process per side --------------------------------------------------------------
def jpeg(width: int, height: int) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def child(model: str, mode: str, threads: int, profile: bool) -> dict:
    """One forward of `model` through the serving core with `cpu_msda: mode` (run in a fresh process)."""
    import torch

    from codetr_serve.ops import msda
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.settings import build_settings

    config, (width, height) = MODELS[model]
    settings = build_settings({"config_file": config, "weights_dir": "", "warmup_runs": 0,
                               "torch_threads": threads, "cpu_msda": mode, "score_threshold": 0.0},
                              model_dir=REPO / "config", device="cpu")
    core = DetectorCore(settings)
    start = time.perf_counter()
    core.setup()
    setup_s = time.perf_counter() - start
    seen: list[list[int]] = []  # (keys, queries, h0, w0, h1, w1, ...) of each distinct call

    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    current = mmcv_msda.multi_scale_deformable_attn_pytorch

    def recording(value, shapes, locations, weights):
        call = [int(value.shape[1]), int(locations.shape[1]), *map(int, torch.as_tensor(shapes).flatten())]
        if call not in seen:
            seen.append(call)
        return current(value, shapes, locations, weights)

    mmcv_msda.multi_scale_deformable_attn_pytorch = recording
    body = {"body": jpeg(width, height)}
    result: dict = {"model": model, "mode": mode, "path": core.cpu_msda_path, "threads": threads,
                    "setup_s": setup_s}
    if profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            outputs = forward(core, body)
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        result["profile"] = [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "calls": e.count,
                              "share": e.self_cpu_time_total / total} for e in events[:15]]
        result["profile_total_ms"] = total / 1000
    else:
        outputs = forward(core, body)
    errors = [repr(o) for o in outputs if isinstance(o, Exception)]
    result.update(status=200 if outputs and not errors else 500, errors=errors,
                  forward_s=core.last_stats.inference_ms / 1000,
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  msda_calls_seen=seen, op=msda.load_op().describe())
    return result


def forward(core, body: dict) -> list:
    """The core's decode and predict stages (the forward is timed in last_stats), outputs flattened."""
    def flat(values) -> list:
        return [x for v in values for x in (flat(v) if isinstance(v, list | tuple) else [v])]

    return flat(core.predict(core.decode([body])))


def run_child(model: str, mode: str, threads: int, profile: bool = False) -> dict:
    command = [sys.executable, "-m", "bench.msda", "--child", model, "--mode", mode,
               "--threads", str(threads)]
    if profile:
        command.append("--profile")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{completed.stderr[-4000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    if result["status"] != 200 or result["forward_s"] <= 0:
        raise RuntimeError(f"{' '.join(command)}: the forward did not run: {result}\n"
                           f"{completed.stderr[-4000:]}")
    return result


def model_table(runs: list[dict], model: str) -> str:
    config, (width, height) = MODELS[model]
    by_mode = {m: [r for r in runs if r["mode"] == m] for m in ("auto", "fallback")}
    forward = {m: [r["forward_s"] for r in rs] for m, rs in by_mode.items()}
    rss = {m: [r["peak_rss_mb"] for r in rs] for m, rs in by_mode.items()}
    lines = [f"{model} ({config}, random weights, one {width}x{height} JPEG; fresh process per run, "
             f"order {' '.join(r['mode'] for r in runs)})", "",
             "| cpu_msda | path | forward s (each run) | peak RSS MB (each run) |", "|---|---|---|---|"]
    for mode, rs in by_mode.items():
        if rs:
            lines.append(f"| {mode} | {rs[0]['path']} | {', '.join(f'{x:.1f}' for x in forward[mode])} | "
                         f"{', '.join(f'{x:.0f}' for x in rss[mode])} |")
    if forward["auto"] and forward["fallback"]:
        speedup = statistics.median(forward["fallback"]) / statistics.median(forward["auto"])
        lines += ["", f"end-to-end speedup (median fallback / median op): {speedup:.2f}x "
                      f"(range {min(forward['fallback']) / max(forward['auto']):.2f}-"
                      f"{max(forward['fallback']) / min(forward['auto']):.2f}x)"]
    seen = runs[0].get("msda_calls_seen") or []
    if seen:
        keys, queries, *flat = seen[0]
        shapes = [tuple(flat[i:i + 2]) for i in range(0, len(flat), 2)]
        lines.append(f"deformable attention in this forward: levels {shapes}, {keys} keys, "
                     f"encoder {queries} queries" + (f", decoder {seen[1][1]}" if len(seen) > 1 else ""))
    return "\n".join(lines)


def profile_table(run: dict) -> str:
    lines = [f"Profile of one op-enabled {run['model']} forward ({run['threads']} threads; self CPU time as "
             f"torch.profiler counts it on the calling thread, intra-op threads included in each op's time; "
             f"total {run['profile_total_ms'] / 1000:.1f} s)", "",
             "| op | self CPU s | share | calls |", "|---|---|---|---|"]
    lines += [f"| {p['op']} | {p['self_ms'] / 1000:.2f} | {100 * p['share']:.1f} % | {p['calls']} |"
              for p in run["profile"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=6, help="op-level repetitions per side")
    parser.add_argument("--model-runs", type=int, default=4, help="R50 processes, both sides together (ABBA)")
    parser.add_argument("--skip-model", action="store_true", help="op level only")
    parser.add_argument("--skip-op", action="store_true", help="whole models only")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--swin-l", action="store_true", help="also one Swin-L 1280x720 forward per side")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("auto", "fallback"), help=argparse.SUPPRESS)
    parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(child(args.child, args.mode, args.threads, args.profile)))
        return 0

    import torch

    from codetr_serve.ops import msda

    torch.set_num_threads(args.threads)
    status = msda.load_op()
    if not status.available:
        print(f"the compiled op is {status.describe()}", file=sys.stderr)
        return 1
    out = REPO / "bench" / "results" / f"msda-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads, "op": status.describe(), "cpu": _cpu_name()}
    text: list[str] = []
    if not args.skip_op:
        shapes = level_shapes(1333, 800)
        print(f"encoder levels at 1333x800 (strides 4-64, no padding): {shapes}", flush=True)
        rows = [time_op_level("encoder 1333x800", encoder_problem(shapes), args.reps),
                time_op_level("encoder, uniform random locations", encoder_problem(shapes, uniform=True),
                              max(2, args.reps // 2)),
                time_op_level("decoder 1333x800", decoder_problem(shapes), args.reps)]
        report["op_level"] = rows
        text.append(op_table(rows, args.threads, status.isa))
        print(text[-1] + "\n", flush=True)

    models = [] if args.skip_model else ["r50"] + (["swin_l"] if args.swin_l else [])
    for model in models:
        count = args.model_runs if model == "r50" else 2
        runs = []
        for side in abba(count):
            runs.append(run_child(model, ("auto", "fallback")[side], args.threads))
            print(f"  {model} {runs[-1]['mode']}: {runs[-1]['forward_s']:.1f} s, "
                  f"peak RSS {runs[-1]['peak_rss_mb']:.0f} MB", flush=True)
        report[model] = runs
        text.append(model_table(runs, model))
        print(text[-1] + "\n", flush=True)
    if "r50" in models and not args.no_profile:
        run = run_child("r50", "auto", args.threads, profile=True)
        report["r50_profile"] = run
        text.append(profile_table(run))
        print(text[-1] + "\n", flush=True)
    (out / "msda.json").write_text(json.dumps(report, indent=1))
    (out / "msda.md").write_text("\n\n".join(text) + "\n")
    print(f"written to {out}")
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


if __name__ == "__main__":
    raise SystemExit(main())
