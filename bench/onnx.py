"""ONNX Runtime (CPU) vs our PyTorch path (compiled deformable-attention op): one Co-DINO forward each.

    python -m bench.onnx                  # R50 at 1333x800, 2 threads, A B B A: export + 4 forwards
    python -m bench.onnx --onnx r50.onnx  # reuse an export of the same config and seed 0

Each forward runs in its own fresh process (the two sides' memory peaks must not add up: the GridSample
form at 1333x800 needs GBs), on the same random weights (seed 0) and the same prepared image: the serving
pipeline's resize of a 1333x800 frame, normalised and padded by the model's data preprocessor. PyTorch:
``CoDETR.predict`` with ``configure_cpu_msda("auto")`` (what a worker runs). ONNX Runtime: the GridSample
export (codetr_serve/convert/onnx), ``intra_op_num_threads`` = --threads, default graph optimisations.
Each process times its first forward (both sides equally cold). Order A B B A ..., so drift lands on both
sides; prints a markdown table (mean, 95 % interval, ratio, peak RSS, load average) and whether the two
sides gave the same detections (order-free match).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from bench import stats

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "serve_co_dino_r50.py"


def abba(count: int) -> list[int]:
    """0 1 1 0 0 1 1 0 ..."""
    return [(index + 1) // 2 % 2 for index in range(count)]


def prepared_batch(cfg, detector, width: int, height: int):
    """One random frame through the serving pipeline and the model's data preprocessor."""
    import torch

    from codetr_serve.runtime.pipeline import ImagePreparer

    frame = np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    prepared = ImagePreparer(cfg)(frame)
    batch = detector.data_preprocessor({"inputs": [prepared.inputs], "data_samples": [prepared.data_sample]},
                                       False)
    meta = batch["data_samples"][0].metainfo
    img_shapes = torch.tensor([meta["img_shape"][:2]], dtype=torch.int64)
    scale_factors = torch.tensor([meta["scale_factor"]], dtype=torch.float32)
    return batch["inputs"], batch["data_samples"], img_shapes, scale_factors


def load_loads() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def child(side: str, onnx_path: str, threads: int, width: int, height: int) -> dict:
    """One timed forward of one side in this (fresh) process; detections and peak RSS come back as JSON."""
    import torch

    from codetr_serve.ops.msda import configure_cpu_msda
    from codetr_serve.runtime.model_loader import build_detector, load_config

    torch.set_num_threads(threads)
    cfg = load_config(CONFIG)
    detector = build_detector(cfg, None, "cpu", seed=0).model
    images, samples, img_shapes, scale_factors = prepared_batch(cfg, detector, width, height)
    result: dict = {"side": side, "canvas": list(images.shape[-2:])}
    if side == "pytorch":
        result["msda_path"] = configure_cpu_msda("auto")
        start = time.perf_counter()
        with torch.no_grad():
            found = detector.predict(images, samples, rescale=True)[0].pred_instances
        result["forward_s"] = time.perf_counter() - start
        boxes, scores, labels = found.bboxes.numpy(), found.scores.numpy(), found.labels.numpy()
    else:
        import onnxruntime as ort

        del detector
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        feeds = {"images": images.numpy(), "img_shapes": img_shapes.numpy(),
                 "scale_factors": scale_factors.numpy()}
        start = time.perf_counter()
        all_boxes, all_scores, all_labels, counts = session.run(None, feeds)
        result["forward_s"] = time.perf_counter() - start
        count = int(counts[0])
        boxes, scores, labels = all_boxes[0, :count], all_scores[0, :count], all_labels[0, :count]
    result.update(boxes=boxes.tolist(), scores=scores.tolist(), labels=labels.tolist(),
                  peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return result


def run_child(side: str, args: argparse.Namespace, onnx_path: Path) -> dict:
    command = [sys.executable, "-m", "bench.onnx", "--child", side, "--onnx", str(onnx_path),
               "--threads", str(args.threads), "--width", str(args.width), "--height", str(args.height)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    completed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({completed.returncode}):\n"
                           f"{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    from codetr_serve.convert.onnx.parity import match

    onnx_path = Path(args.onnx) if args.onnx else Path(tempfile.mkdtemp()) / "co_dino_r50.onnx"
    export_s = None
    if not onnx_path.exists():
        from codetr_serve.convert.onnx.export import export_onnx
        from codetr_serve.runtime.model_loader import build_detector, load_config

        detector = build_detector(load_config(CONFIG), None, "cpu", seed=0).model
        start = time.perf_counter()
        export_onnx(detector, onnx_path)
        export_s = time.perf_counter() - start
        del detector
    names = ["pytorch", "onnxruntime"]
    runs: dict[str, list[dict]] = {name: [] for name in names}
    load_before = load_loads()
    for index in abba(args.runs * 2):
        runs[names[index]].append(run_child(names[index], args, onnx_path))
        print(f"{names[index]}: {runs[names[index]][-1]['forward_s']:.1f} s", file=sys.stderr)
    keys = ("boxes", "scores", "labels")
    first = {name: tuple(np.array(runs[name][0][key]) for key in keys) for name in names}
    unmatched, score_diff, box_diff = match(first["pytorch"], first["onnxruntime"], 1e-3, 0.5)
    return {"canvas": runs["pytorch"][0]["canvas"], "threads": args.threads,
            "msda_path": runs["pytorch"][0]["msda_path"], "export_s": export_s, "onnx": str(onnx_path),
            "times_s": {name: [r["forward_s"] for r in runs[name]] for name in names},
            "peak_rss_mb": {name: max(r["peak_rss_mb"] for r in runs[name]) for name in names},
            "detections": {name: len(first[name][1]) for name in names}, "unmatched": unmatched,
            "max_score_diff": score_diff, "max_box_diff": box_diff,
            "load_before": load_before, "load_after": load_loads()}


def table(result: dict) -> str:
    rows = ["| side | runs | mean s | 95 % interval s |", "|---|---|---|---|"]
    means = {}
    for name, values in result["times_s"].items():
        means[name] = sum(values) / len(values)
        low, high = stats.mean_interval(values)
        rows.append(f"| {name} | {len(values)} | {means[name]:.2f} | {low:.2f} - {high:.2f} |")
    per_round = [p / o for p, o in zip(result["times_s"]["pytorch"], result["times_s"]["onnxruntime"],
                                       strict=True)]
    low, high = stats.mean_interval(per_round)
    overall = stats.ratio(means["pytorch"], means["onnxruntime"])
    rows.append(f"\nPyTorch / ONNX Runtime time ratio: {overall:.2f} "
                f"(per pair: {low:.2f} - {high:.2f}; > 1 means ONNX Runtime is faster)")
    rows.append(f"canvas {result['canvas']}, {result['threads']} threads, PyTorch deformable attention: "
                f"{result['msda_path']}; detections {result['detections']}, unmatched {result['unmatched']}, "
                f"max |d score| {result['max_score_diff']:.2e}, max |d box| {result['max_box_diff']:.2e} px")
    rows.append(f"peak RSS MB per process: {result['peak_rss_mb']}")
    rows.append(f"before: {result['load_before']}; after: {result['load_after']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=2, help="timed forwards per side (one process each)")
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--onnx", help="an existing GridSample export of the R50 config (seed 0)")
    parser.add_argument("--child", choices=["pytorch", "onnxruntime"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.onnx, args.threads, args.width, args.height)))
        return 0
    result = run(args)
    out = REPO / "bench" / "results" / f"onnx-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(table(result))
    print(f"\nJSON: {out / 'result.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
