"""Whole-model CPU forwards: our paths, mmcv's and the published code's side by side (`make bench-cpu`).

    python -m bench.cpu [--models r50 swin_l] [--reps 2] [--threads 2] [--size WxH] [--no-profile]
    python -m bench.cpu --models r50 --paths reference fallback fast --reference-src DIR

Per model, one fresh process builds the model (random weights) once and runs one untimed warm-up forward per
path; then the paths take turns forward by forward in A B B A order, so machine load drifts hit every path
alike:
  fallback   mmcv's own code (pure-PyTorch deformable attention, mmcv's forwards, MKL linears)
  op         the compiled op under mmcv's forwards (the state before CPU round 2)
  fast       what cpu_msda: auto serves now: fused deformable attention + oneDNN linear layers
  reference  the published Co-DETR code (mmdetection's projects/CO-DETR/codetr) in a second, long-lived
             process, on our weights and our prepared image (bench/cpu_reference.py says how and what it
             times: the same preprocessor + predict as ours, decode and resize excluded on both sides)
Our three paths are switched in place with `configure_cpu_msda`, so they run the same weights on the same
image. Reported per path: each forward, mean with its 95 % t-interval, peak RSS of its warm-up forward in its
process (VmHWM, reset before each; our warm-ups run smallest path first, so a larger path's kept heap never
counts), the speedup vs fallback and vs reference (sum over sum, and the range of the A B B A pairs); with
the reference, whether each path's last detections equal the reference's (order-free, max differences);
then the top ops of one profiled fast forward.

The reference comparison (issue 23's ">= 5x the published reference code, side by side"): the code is not
in the mmdet wheel and we never ship it; `git clone --depth 1 https://github.com/open-mmlab/mmdetection DIR`
(or any folder holding its projects/CO-DETR/codetr/) and pass `--reference-src DIR`. It does not build the
tiny config (its decoder layer fixes the FFN input width at 256): use `--models r50 --size 320x192` for a
quick run.
Results go to bench/results/cpu-<timestamp>/ (cpu.json, cpu.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from bench import cpu_reference
from bench.cpu_reference import peak_rss_mb
from bench.msda import REPO, _cpu_name, forward, jpeg
from bench.stats import mean_interval

# model -> (config, forward size: test_scale [long, short] of the serving core)
MODELS = {"r50": ("serve_co_dino_r50.py", (1333, 800)),
          "swin_l": ("serve_co_dino_swin_l_o365tococo.py", (1280, 720)),
          "tiny": ("co_dino_tiny.py", (320, 192))}  # seconds: a smoke test of this script
PATHS = {"fallback": dict(mode="fallback"), "op": dict(mode="auto", fused=False, onednn=False),
         "fast": dict(mode="auto", fused=True, onednn=True)}
REFERENCE = "reference"  # the published code in its own process: bench/cpu_reference.py


def _core(model: str, threads: int, size: tuple[int, int] | None):
    """Our serving core on `model`'s config (random weights), and the JPEG its forwards run on."""
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.settings import build_settings

    config, default_size = MODELS[model]
    width, height = size or default_size
    values = {"config_file": config, "weights_dir": "", "warmup_runs": 0, "torch_threads": threads,
              "score_threshold": 0.0, "test_scale": [width, height]}
    core = DetectorCore(build_settings(values, model_dir=REPO / "config", device="cpu"))
    core.setup()
    return core, {"body": jpeg(width, height)}, (width, height)


@contextlib.contextmanager
def _reference(core, body: dict, src: str | None, threads: int):
    """The reference's process (bench.cpu_reference) on our weights and prepared image; None: not asked."""
    if src is None:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="codetr-reference-") as tmp:
        prepared = core.decode([body])[0].images[0].prepared
        weights, image = cpu_reference.save_inputs(core.detector.model, prepared, Path(tmp))
        with cpu_reference.ReferenceProcess(Path(src), core.settings.config_path, weights, image, threads,
                                            Path(tmp) / "reference.log") as process:
            yield process


def _warm_ups(core, body: dict, paths: list[str]) -> tuple[dict, dict]:
    """One untimed forward per path of ours (oneDNN primitives, the allocator's heap), smallest memory
    first: each one's peak is then its own (keep_freed_memory keeps a larger path's heap resident)."""
    from codetr_serve.ops import msda

    seconds, rss = {}, {}
    for path in sorted(paths, key=list(PATHS)[::-1].index):
        msda.configure_cpu_msda(**PATHS[path])
        peak_rss_mb(reset=True)
        start = time.perf_counter()
        forward(core, body)
        seconds[path], rss[path] = time.perf_counter() - start, peak_rss_mb()
    return seconds, rss


def _one_run(core, body: dict, reference, path: str) -> tuple[dict, dict | None]:
    """One timed forward on `path`: its record, and its detections (plain lists) for the parity check."""
    if path == REFERENCE:
        answer = reference.forward()
        run = {"path": path, "forward_s": answer["forward_s"], "peak_rss_mb": answer["peak_rss_mb"],
               "detections": len(answer["detections"]["scores"]), "errors": []}
        return run, answer["detections"]
    from codetr_serve.ops import msda

    msda.configure_cpu_msda(**PATHS[path])
    peak_rss_mb(reset=True)
    outputs = forward(core, body)
    good = [o for o in outputs if not isinstance(o, Exception)]
    found = cpu_reference.detections_of(good[0]) if good else None
    run = {"path": path, "forward_s": core.last_stats.inference_ms / 1000, "peak_rss_mb": peak_rss_mb(),
           "detections": len(found["scores"]) if found else 0,
           "errors": [repr(o) for o in outputs if isinstance(o, Exception)]}
    return run, found


def child(model: str, paths: list[str], reps: int, threads: int, profile: bool,
          size: tuple[int, int] | None = None, reference_src: str | None = None) -> dict:
    from codetr_serve.ops import msda

    core, body, (width, height) = _core(model, threads, size)
    with _reference(core, body, reference_src if REFERENCE in paths else None, threads) as reference:
        warmup_s, warmup_rss_mb = _warm_ups(core, body, [p for p in paths if p in PATHS])
        if reference is not None:
            warmup_s[REFERENCE], warmup_rss_mb[REFERENCE] = (reference.ready["warmup_s"],
                                                             reference.ready["peak_rss_mb"])
        result: dict = {"model": model, "threads": threads, "warmup_s": warmup_s,
                        "peak_rss_mb": warmup_rss_mb, "forward_size": [width, height],
                        "op": msda.load_op().describe(), "runs": []}
        if reference is not None:
            result["reference_types"] = reference.ready["types"]
        last: dict = {}
        # A B B A (or A B C C B A): every path once early and once late per round.
        for path in [*paths, *reversed(paths)] * max(1, reps // 2):
            run, last[path] = _one_run(core, body, reference, path)
            result["runs"].append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    if last.get(REFERENCE) is not None:
        result["parity"] = {p: cpu_reference.compare(d, last[REFERENCE]) for p, d in last.items()
                            if p != REFERENCE and d is not None}
    if profile:
        result.update(_profile(core, body))
    return result


def _profile(core, body: dict) -> dict:
    import torch

    from codetr_serve.ops import msda

    msda.configure_cpu_msda(**PATHS["fast"])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward(core, body)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return {"profile_total_s": total / 1e6,
            "profile": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count,
                         "share": e.self_cpu_time_total / total} for e in events[:14]]}


def _speedup(base: list[float], times: list[float]) -> str:
    """sum(base) / sum(times), with the range of the per-pair ratios (pairs in A B B A position)."""
    ratios = [b / t for b, t in zip(base, times, strict=False)]
    if not ratios:
        return "-"
    return f"{sum(base) / sum(times):.2f}x (pairs {min(ratios):.2f}-{max(ratios):.2f}x)"


def model_table(result: dict) -> str:
    width, height = result["forward_size"]
    runs = result["runs"]
    by_path = {p: [r["forward_s"] for r in runs if r["path"] == p] for p in [*PATHS, REFERENCE]}
    bases = [b for b in ("fallback", REFERENCE) if by_path[b]]
    lines = [f"{result['model']} at {width}x{height}, {result['threads']} threads, random weights, one "
             f"process (the reference: a second one); order {' '.join(r['path'] for r in runs)}", "",
             "| path | forward s (each) | mean s (95 % interval) | peak RSS MB (warm-up, its process) | "
             + " | ".join(f"speedup vs {b}" for b in bases) + " |",
             "|---|---|---|---|" + "---|" * len(bases)]
    for path, times in by_path.items():
        if not times:
            continue
        low, high = mean_interval(times)
        speeds = [_speedup(by_path[b], times) if b != path else "-" for b in bases]
        lines.append(f"| {path} | {', '.join(f'{t:.1f}' for t in times)} | {sum(times) / len(times):.1f} "
                     f"({low:.1f}-{high:.1f}) | {result['peak_rss_mb'][path]:.0f} | "
                     + " | ".join(speeds) + " |")
    return "\n".join(lines + parity_lines(result))


def parity_lines(result: dict) -> list[str]:
    """One line per path of ours: do its last detections equal the reference's (order-free)?"""
    lines = []
    for path, p in result.get("parity", {}).items():
        verdict = "equal" if p["equal"] else "NOT equal"
        lines.append(f"- {path} vs reference, last forward: {verdict} within {cpu_reference.BOX_TOL:g} px / "
                     f"score {cpu_reference.SCORE_TOL:g}: {p['ours']} (ours) / {p['reference']} (reference) "
                     f"detections, {p['matched']} matched, {p['within_tol']} of them within tolerance; max "
                     f"|box diff| {p['max_box_diff_px']:.3g} px, max |score diff| {p['max_score_diff']:.3g}")
    return ["", *lines] if lines else []


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


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    if not (width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x192; got {text!r}")
    return int(width), int(height)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["r50", "swin_l"])
    parser.add_argument("--paths", nargs="+", choices=sorted([*PATHS, REFERENCE]),
                        default=["fallback", "op", "fast"],
                        help="paths to compare (Swin-L skips 'op': its forwards take minutes); 'reference' "
                             "needs --reference-src")
    parser.add_argument("--reps", type=int, default=2, help="forwards per path (even: A B B A rounds)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=_size, help="forward size WIDTHxHEIGHT instead of the model's "
                        "(the JPEG's size and the test_scale), e.g. r50 at 320x192 for a quick run")
    parser.add_argument("--reference-src", type=Path, help="an mmdetection checkout (its "
                        "projects/CO-DETR/codetr/ package): the published code the 'reference' path runs")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if REFERENCE in args.paths:
        if args.reference_src is None:
            parser.error("the 'reference' path needs --reference-src DIR (git clone --depth 1 "
                         "https://github.com/open-mmlab/mmdetection DIR)")
        try:
            cpu_reference.package_dir(args.reference_src)
        except ValueError as error:
            parser.error(str(error))
        args.reference_src = args.reference_src.resolve()
    return args


def run_model(model: str, args: argparse.Namespace) -> dict | None:
    """`model`'s side-by-side run in a fresh process (bench.cpu --child); None when that failed."""
    paths = [p for p in args.paths if not (model == "swin_l" and p == "op")]
    command = [sys.executable, "-m", "bench.cpu", "--child", model, "--reps", str(args.reps),
               "--threads", str(args.threads), "--paths", *paths]
    if args.no_profile or model == "swin_l":
        command.append("--no-profile")
    if args.size:
        command += ["--size", "x".join(map(str, args.size))]
    if args.reference_src:
        command += ["--reference-src", str(args.reference_src)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if completed.returncode != 0:
        print(f"{model}: the child failed (exit {completed.returncode})", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.paths, args.reps, args.threads, not args.no_profile,
                               args.size, args.reference_src and str(args.reference_src))))
        return 0
    out = REPO / "bench" / "results" / f"cpu-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"cpu": _cpu_name(), "threads": args.threads, "load_before": load_line(), "models": []}
    text = [f"CPU: {report['cpu']}; {report['load_before']} at start"]
    print(text[0], flush=True)
    for model in args.models:
        result = run_model(model, args)
        if result is None:
            return 1
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
