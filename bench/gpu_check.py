"""GPU figures for docs/tuning.md in one unattended run, each step inside its own time budget.

    python -m bench.gpu_check [--out DIR] [--total-budget 420] [--dry-run]

Steps (bench/README.md "GPU check" has the budgets and the device-time estimate):
  preflight   GPU, torch, nvcc, which of the stack's modules the machine already has
  kernels     mmcv 2.1.0's MSDA and NMS CUDA kernels compiled with nvcc (bench/gpu_check_mmcv.py)
  msda        deformable attention at the 1333x800 encoder shape: mmcv's CUDA kernel (what a CUDA worker
              runs) vs mmcv's pure-PyTorch path (what runs without compiled ops), and their max difference
  latency     Co-DINO Swin-L (random weights), batch 1 at 1152x768, FP32 and FP16
  sweep       batch 1/2/4/8 throughput and peak memory at 1333x800 and 2048x1152 (the official scale),
              FP32 and FP16
  torchserve  1 and 2 GPU workers behind TorchServe: only where TorchServe and Java 17 are installed
A step that would overrun its budget stops with a line saying so; nothing is extrapolated. `--dry-run`
runs the same control flow on the CPU with the tiny model (no figure from it is a GPU figure).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWIN_L = REPO / "config" / "serve_co_dino_swin_l_o365tococo.py"
TINY = REPO / "config" / "co_dino_tiny.py"
FRAME = (720, 1280)  # height, width of the camera frame fed to the pipeline
# Seconds per step, summing to the default total (a device command may run 600 s; start-up comes on top).
BUDGETS = {"preflight": 15, "kernels": 120, "msda": 30, "latency": 75, "sweep": 150, "torchserve": 30}
SCALES = {"1152x768": [1152, 768], "1333x800": [1333, 800], "2048x1152": [2048, 1152]}
STACK_MODULES = ("cv2", "PIL", "mmengine", "mmdet", "mmcv", "scipy", "shapely", "pycocotools", "ts")


class OutOfBudget(Exception):
    """The next unit of work would not finish inside its step's budget."""


class Clock:
    """A step's deadline: `check(estimate)` raises OutOfBudget when `estimate` seconds no longer fit."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, estimate: float, what: str) -> None:
        if estimate > self.left():
            left = max(self.left(), 0)
            raise OutOfBudget(f"{what}: ~{estimate:.0f} s needed, {left:.0f} s left in the step")


def _out_of_time(_signum, _frame) -> None:
    raise OutOfBudget("the step's hard deadline passed mid-call (a call longer than any estimate)")


def run_with_deadline(step: Callable, seconds: float, *args):
    """`step(*args)` with SIGALRM as the hard stop: a GPU call that hangs or one slow warm-up cannot carry
    the check past its budget (the shell's `timeout` is only the last resort)."""
    previous = signal.signal(signal.SIGALRM, _out_of_time)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        return step(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def build_core(config: Path, device: str, fp16: bool, test_scale: list[int] | None, root: Path):
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.model_loader import load_config
    from codetr_serve.runtime.settings import build_settings

    model_dir = root / f"model-{config.stem}"
    if not model_dir.exists():
        model_dir.mkdir(parents=True)
        load_config(config).dump(str(model_dir / "model_config.py"))
    overrides = {"weights_dir": "", "fp16": fp16, "test_scale": test_scale, "warmup_runs": 1}
    core = DetectorCore(build_settings(overrides, model_dir=model_dir, device=device))
    core.setup()
    return core


def time_forwards(core, device: str, batch: int, reps: int) -> dict:
    import numpy as np
    import torch

    frame = np.random.default_rng(0).integers(0, 255, (*FRAME, 3), dtype=np.uint8)
    prepared = [core._prepare(frame) for _ in range(batch)]
    core._forward(prepared)  # warm-up at this batch size (cudnn picks its algorithms here)
    sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        core._forward(prepared)
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None
    ms = 1000 * float(np.median(times))
    height, width = prepared[0].inputs.shape[-2:]
    return {"batch": batch, "ms_per_batch": round(ms, 2), "img_per_s": round(1000 * batch / ms, 2),
            "peak_gib": peak and round(peak, 2), "input": f"{width}x{height}",
            "ms_range": [round(1000 * min(times), 2), round(1000 * max(times), 2)]}


def model_rows(args, clock: Clock, scales: list[str], batches: list[int], root: Path, rows: list) -> list:
    """Forwards per scale x precision x batch into `rows` until the step's clock runs out."""
    import torch

    last = 0.0
    precisions = (False, True) if args.device.startswith("cuda") else (False,)
    for scale in scales:
        for fp16 in precisions:
            clock.check(max(2 * last, 5.0), f"{scale} {'fp16' if fp16 else 'fp32'} model build")
            core = build_core(args.config, args.device, fp16, SCALES[scale], root)
            for batch in batches:
                clock.check(2 * last * batch, f"{scale} batch {batch}")
                started = time.monotonic()
                try:
                    row = time_forwards(core, args.device, batch, args.reps)
                except torch.cuda.OutOfMemoryError:
                    row = {"batch": batch, "error": "out of memory"}
                last = (time.monotonic() - started) / batch
                rows.append({"scale": scale, "precision": "fp16" if fp16 else "fp32", **row})
                print(json.dumps(rows[-1]), flush=True)
            del core
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def step_preflight(args, clock: Clock, state: dict, out: dict) -> dict:
    import torch

    gpu = torch.cuda.is_available()
    default_nvcc = Path("/usr/local/cuda/bin/nvcc")
    nvcc = shutil.which("nvcc") or (str(default_nvcc) if default_nvcc.is_file() else None)
    facts = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
             "gpu": torch.cuda.get_device_name(0) if gpu else None,
             "capability": ".".join(map(str, torch.cuda.get_device_capability(0))) if gpu else None,
             "nvcc": nvcc,
             "java": shutil.which("java"),
             "present": {name: importlib.util.find_spec(name) is not None for name in STACK_MODULES}}
    if not args.dry_run and not facts["gpu"]:
        raise RuntimeError("no CUDA GPU visible to torch: nothing here would be a GPU figure")
    return facts


def step_kernels(args, clock: Clock, state: dict, out: dict) -> dict:
    import torch

    from bench.gpu_check_mmcv import compile_kernels, install_ext_shim, install_scipy_stub, unpack_mmcv

    stubs = install_scipy_stub(args.work / "stubs")
    if stubs:
        sys.path.append(str(stubs))  # after everything real
        out["stand_ins"] = "scipy (import only: mmdet's Hungarian assigner and CrowdHuman metric)"
    if state.get("mmcv_has_ext"):
        return {**out, "skipped": "mmcv with compiled ops is installed here; its kernels are used as is"}
    if not (torch.version.cuda and state["preflight"]["nvcc"]):
        raise RuntimeError("needs a CUDA build of torch and nvcc")
    root = unpack_mmcv(args.mmcv_sdist, args.work / "mmcv-src")
    module, seconds = compile_kernels(root, args.work / "kernels", args.kernel_archs)
    sys.path[:0] = [str(root), str(Path(module.__file__).parent)]
    install_ext_shim(root)
    return {**out, "archs": args.kernel_archs, "compile_s": round(seconds, 1), "module": module.__file__}


def step_msda(args, clock: Clock, state: dict, out: dict) -> dict:
    import torch
    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttnFunction,
        multi_scale_deformable_attn_pytorch,
    )

    from bench.gpu_check_mmcv import msda_inputs

    levels = ((50, 84), (25, 42), (13, 21)) if args.dry_run else None  # the CPU rehearsal: a smaller shape
    value, shapes, starts, locations, weights = msda_inputs(args.device, *([levels] if levels else []))
    paths = {"pytorch path": lambda: multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)}
    if args.device.startswith("cuda"):
        paths["mmcv CUDA kernel"] = lambda: MultiScaleDeformableAttnFunction.apply(
            value, shapes, starts, locations, weights, 64)
    rows, outputs = out.setdefault("rows", []), {}
    with torch.inference_mode():
        for name, call in paths.items():
            outputs[name] = call()
            sync(args.device)
            times = []
            for _ in range(args.reps):
                clock.check(2 * (times[-1] if times else 1.0), f"msda {name}")
                start = time.perf_counter()
                call()
                sync(args.device)
                times.append(time.perf_counter() - start)
            rows.append({"path": name, "ms": round(1000 * sorted(times)[len(times) // 2], 3)})
    diff = None
    if len(outputs) == 2:
        diff = (outputs["pytorch path"] - outputs["mmcv CUDA kernel"]).abs().max().item()
    return {"rows": rows, "max_abs_diff": diff}


def step_latency(args, clock: Clock, state: dict, out: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return {"rows": model_rows(args, clock, ["1152x768"], [1], Path(tmp), out.setdefault("rows", []))}


def step_sweep(args, clock: Clock, state: dict, out: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rows = out.setdefault("rows", [])
        return {"rows": model_rows(args, clock, ["1333x800", "2048x1152"], args.batches, Path(tmp), rows)}


def step_torchserve(args, clock: Clock, state: dict, out: dict) -> dict:
    present = state["preflight"]["present"]
    missing = [what for what, ok in (("the torchserve package", present["ts"]),
                                     ("Java 17", state["preflight"]["java"])) if not ok]
    if missing:
        return {"skipped": f"not measured: {' and '.join(missing)} not on this machine, and the carried "
                           "64 MiB cannot bring them (the model's Python stack takes 49 MiB of it, "
                           "xz-packed; a JRE and torchserve 0.12 are ~100 MB more)"}
    return {"skipped": "not measured: TorchServe is installed, but a GPU TorchServe run needs the Swin-L "
                       "model packed into a store first (make archive), which this check does not carry"}


STEPS: dict[str, Callable] = {"preflight": step_preflight, "kernels": step_kernels, "msda": step_msda,
                              "latency": step_latency, "sweep": step_sweep, "torchserve": step_torchserve}


def error_line(exc: BaseException) -> str:
    """The line of a (compiler's) multi-line error that says what went wrong, else its first line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()] or [""]
    telling = [line for line in lines[1:] if "error" in line.lower() or "fatal" in line.lower()]
    return (telling[0] if telling else lines[0])[:300]


def run_steps(args) -> dict:
    """Every step under its budget, scaled to --total-budget; a failed step does not stop the later ones
    unless they depend on it (the model and msda steps need mmcv's ops)."""
    scale = args.total_budget / sum(BUDGETS.values())
    state: dict = {"mmcv_has_ext": importlib.util.find_spec("mmcv") is not None
                   and importlib.util.find_spec("mmcv._ext") is not None}
    results: dict = {}
    for name, step in STEPS.items():
        if "error" in results.get("preflight", {}):
            results[name] = {"error": "skipped: the preflight failed", "seconds": 0.0}
            continue
        if name in ("msda", "latency", "sweep") and "error" in results.get("kernels", {}):
            results[name] = {"error": "skipped: mmcv's kernels did not compile", "seconds": 0.0}
            continue
        budget = BUDGETS[name] * scale
        started, partial = time.monotonic(), {}
        try:
            results[name] = run_with_deadline(step, budget, args, Clock(budget), state, partial) or {}
        except OutOfBudget as exc:  # what was measured before the stop is kept
            results[name] = {**partial, "error": f"stopped at its {budget:.0f} s budget: {exc}"}
        except Exception as exc:  # a step's failure is a finding of the check, reported with the rest
            results[name] = {**partial, "error": f"{type(exc).__name__}: {error_line(exc)}"}
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        state[name] = results[name]
        print(f"== {name}: {json.dumps(results[name])[:400]}", flush=True)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--config", type=Path, default=SWIN_L)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--total-budget", type=float, default=float(sum(BUDGETS.values())))
    parser.add_argument("--kernel-archs", default="9.0", help="TORCH_CUDA_ARCH_LIST for the kernels")
    parser.add_argument("--mmcv-sdist", type=Path, default=REPO / ".gpu-wheels" / "mmcv-2.1.0.tar.gz")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gpu-check")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu-check")
    parser.add_argument("--dry-run", action="store_true",
                        help="the control flow on the CPU with the tiny model, 1 rep, batches 1 2")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.config, args.reps, args.batches = "cpu", TINY, 1, [1, 2]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.gpu_check_report import render

    started = time.monotonic()
    results = run_steps(args)
    report = render(results, args, time.monotonic() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.md").write_text(report)
    (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    print(report)
    return 0 if all("error" not in results[name] for name in ("preflight", "kernels")) else 1


if __name__ == "__main__":
    raise SystemExit(main())
