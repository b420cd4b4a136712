"""GPU figures for docs/tuning.md, in one process: Co-DINO Swin-L forwards on CUDA, FP32 vs FP16, by batch.

    python -m bench.gpu_check [--device cuda:0] [--reps 5] [--batches 1 2 4 8] [--out DIR]

For each scale (the official pipeline, which runs a 1280x720 frame at 2048x1152, and 1333x800) and each
precision (FP32; FP16 autocast with deformable attention kept in FP32, as the server does with
`fp16: true`), it times the served forward (`DetectorCore._forward`: data preprocessor + predict) at batch
1/2/4/8 on random weights and reports ms per batch, images/s and peak GPU memory. Then the deformable
attention op alone at the encoder shape: mmcv's CUDA kernel (what our dispatcher leaves CUDA tensors to) vs
mmcv's pure-PyTorch path. Prints markdown tables and writes them to OUT/gpu_check.md (+ JSON).

Run on a GPU machine through bench/gpu_check.sh; `--device cpu --config config/co_dino_tiny.py` runs the
same code path on a CPU in seconds (a smoke test of the script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
SWIN_L = REPO / "config" / "serve_co_dino_swin_l_o365tococo.py"
FRAME = (720, 1280)  # height, width of the camera frame fed to the pipeline


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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def time_forwards(core, device: str, batch: int, reps: int) -> dict:
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (*FRAME, 3), dtype=np.uint8)
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
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else float("nan")
    ms = 1000 * float(np.median(times))
    resized = tuple(prepared[0].inputs.shape[-2:])  # (height, width) after the test pipeline's resize
    return {"batch": batch, "ms_per_batch": ms, "img_per_s": 1000 * batch / ms, "peak_gib": peak,
            "input": resized, "ms_range": [1000 * min(times), 1000 * max(times)]}


def model_rows(args: argparse.Namespace, root: Path) -> list[dict]:
    rows = []
    for scale_name, test_scale in (("official", None), ("1333x800", [1333, 800])):
        for fp16 in (False, True) if args.device.startswith("cuda") else (False,):
            core = build_core(args.config, args.device, fp16, test_scale, root)
            for batch in args.batches:
                try:
                    row = time_forwards(core, args.device, batch, args.reps)
                except torch.cuda.OutOfMemoryError:
                    row = {"batch": batch, "error": "out of memory"}
                rows.append({"scale": scale_name, "precision": "fp16" if fp16 else "fp32", **row})
                print(json.dumps(rows[-1]), flush=True)
            del core
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def msda_rows(device: str, reps: int) -> list[dict]:
    """mmcv's CUDA kernel vs its PyTorch path at the 1333x800 encoder shape (89,023 queries, 5 levels)."""
    from mmcv.ops.multi_scale_deform_attn import (
        MultiScaleDeformableAttnFunction,
        multi_scale_deformable_attn_pytorch,
    )

    shapes = torch.tensor([[200, 334], [100, 167], [50, 84], [25, 42], [13, 21]], device=device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(1, keys, 8, 32, device=device)
    locations = torch.rand(1, keys, 8, 5, 4, 2, device=device)
    weights = torch.rand(1, keys, 8, 5, 4, device=device).softmax(-1)
    paths = {"mmcv kernel": lambda: MultiScaleDeformableAttnFunction.apply(value, shapes, starts, locations,
                                                                           weights, 64),
             "pytorch path": lambda: multi_scale_deformable_attn_pytorch(value, shapes, locations, weights)}
    rows = []
    with torch.inference_mode():
        for name, call in paths.items():
            call()
            sync(device)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                call()
                sync(device)
                times.append(time.perf_counter() - start)
            rows.append({"path": name, "ms": 1000 * float(np.median(times))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def render(rows: list[dict], msda: list[dict], device: str) -> str:
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    lines = [f"# GPU check on {name} (torch {torch.__version__})", "",
             "| scale | precision | batch | input | ms / batch (min-max) | img/s | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['scale']} | {r['precision']} | {r['batch']} | - | {r['error']} | - | - |")
            continue
        low, high = r["ms_range"]
        size = f"{r['input'][1]}x{r['input'][0]}"
        lines.append(f"| {r['scale']} | {r['precision']} | {r['batch']} | {size} | "
                     f"{r['ms_per_batch']:.1f} ({low:.1f}-{high:.1f}) | {r['img_per_s']:.2f} | "
                     f"{r['peak_gib']:.2f} |")
    if msda:
        lines += ["", "| deformable attention, 1333x800 encoder shape | ms |", "|---|---|"]
        lines += [f"| {r['path']} | {r['ms']:.2f} |" for r in msda]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--config", type=Path, default=SWIN_L)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gpu-check")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = model_rows(args, Path(tmp))
    msda = msda_rows(args.device, args.reps) if args.device.startswith("cuda") else []
    report = render(rows, msda, args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.md").write_text(report)
    (args.out / "gpu_check.json").write_text(json.dumps({"models": rows, "msda": msda}, indent=1))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
