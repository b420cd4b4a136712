"""bench/gpu_check.py's report: tables of what was measured and a line for every step that was not."""

from __future__ import annotations

import argparse

ANCHOR = ("public anchor, RTX 4090 at 1152x768 (anenbergb/Co-DETR-TensorRT): PyTorch FP32 123 ms, FP16 "
          "50.8 ms, TensorRT FP16 30.2 ms")


def _model_table(rows: list[dict]) -> list[str]:
    lines = ["| scale | precision | batch | input | ms / batch (min-max) | img/s | peak GiB |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['scale']} | {row['precision']} | {row['batch']} | - | {row['error']} | - "
                         "| - |")
            continue
        low, high = row["ms_range"]
        peak = "-" if row["peak_gib"] is None else f"{row['peak_gib']:.2f}"
        lines.append(f"| {row['scale']} | {row['precision']} | {row['batch']} | {row['input']} | "
                     f"{row['ms_per_batch']:.1f} ({low:.1f}-{high:.1f}) | {row['img_per_s']:.2f} | {peak} |")
    return lines


def _step_lines(name: str, result: dict) -> list[str]:
    if "error" in result:
        stop = [f"**{name}**: {result['error']} ({result['seconds']} s)", ""]
        return stop + (_step_lines(name, {k: v for k, v in result.items() if k != "error"})
                       if result.get("rows") else [])
    if "skipped" in result:
        return [f"**{name}**: {result['skipped']} ({result['seconds']} s)", ""]
    if name == "preflight":
        return [f"**preflight**: Python {result['python']}, torch {result['torch']} (CUDA {result['cuda']}), "
                f"GPU {result['gpu']} (compute capability {result['capability']}), nvcc {result['nvcc']}, "
                f"java {result['java']}; present: "
                + ", ".join(name for name, ok in result["present"].items() if ok), ""]
    if name == "kernels":
        stand_in = f"; stand-in: {result['stand_ins']}" if result.get("stand_ins") else ""
        return [f"**kernels**: mmcv 2.1.0 ms_deform_attn, nms and soft-NMS compiled for {result['archs']} in "
                f"{result['compile_s']} s{stand_in}", ""]
    if name == "msda":
        lines = ["| deformable attention, 1333x800 encoder shape | ms |", "|---|---|"]
        lines += [f"| {row['path']} | {row['ms']:.3f} |" for row in result["rows"]]
        if result.get("max_abs_diff") is not None:
            lines.append(f"\nmax |kernel - pytorch path| = {result['max_abs_diff']:.2e}")
        return [*lines, ""]
    table = _model_table(result["rows"])
    return ([ANCHOR, ""] if name == "latency" else []) + table + [""]


def render(results: dict, args: argparse.Namespace, seconds: float) -> str:
    title = "GPU check (DRY RUN on the CPU, tiny model: not GPU figures)" if args.dry_run else "GPU check"
    lines = [f"# {title}", "", f"config {args.config.name}, {args.reps} reps (median), total {seconds:.0f} s "
             f"of a {args.total_budget:.0f} s budget", ""]
    for name, result in results.items():
        lines += [f"## {name}", "", *_step_lines(name, result)]
    return "\n".join(lines)
