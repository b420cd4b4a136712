"""`make bench`: sweeps, comparisons and cold start; writes bench/results/<timestamp>/.

    python -m bench.run [--models tiny,r50_small] [--scale 1.0] [--skip-coldstart] [--keep-work]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from bench import coldstart, paired, plots, render, report
from bench.plan import ModelPlan, all_plans
from bench.runner import ceiling, rows_as_dicts, run_config, serve_all
from bench.server import REPO
from bench.variants import run_archive


def test_image(path: Path, width: int = 640, height: int = 360) -> Path:
    """A deterministic synthetic JPEG (gradients + rectangles), roughly a real frame's size on the wire."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    rng = np.random.default_rng(0)
    for _ in range(12):
        x0, y0 = rng.integers(0, width - 60), rng.integers(0, height - 60)
        image[y0:y0 + rng.integers(20, 60), x0:x0 + rng.integers(20, 60)] = rng.integers(0, 255, 3)
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def run_model(plan: ModelPlan, work: Path, image: Path, out: Path) -> str:
    """Base archive, batch-1 ceiling, one server for every config: sweep, then the paired rounds."""
    print(f"== {plan.name}", flush=True)
    mw = work / plan.name
    mw.mkdir(parents=True)
    tuned = next((c for c in plan.configs if c.name == plan.tuned), plan.configs[0])
    model_config = mw / "model-config.yaml"
    model_config.write_text(yaml.safe_dump(tuned.model_config(plan.handler), sort_keys=False))
    seconds = run_archive(plan.config, f"{plan.name}_base", mw / "base", model_config)
    print(f"  archive.sh (no-archive) {seconds:.1f} s", flush=True)
    base = mw / "base" / f"{plan.name}_base"
    ceilings = {1: ceiling(plan, base, 1, tuned.threads, image, mw / "ceiling-1.json")}
    capacity = ceilings[1]["images_per_s"]
    print(f"  in-process batch 1: {capacity:.2f} img/s", flush=True)
    rows, failures, rounds = [], [], []
    with serve_all(plan, base, mw, image) as server:
        print(f"  {len(plan.configs)} configs READY in {server.ready_s:.1f} s", flush=True)
        for cfg in plan.configs:
            try:
                rows += run_config(server, plan, cfg, mw, image, capacity)
            except Exception as error:  # noqa: BLE001 - one failed config must not lose the whole run
                print(f"  {plan.name}/{cfg.name} FAILED: {error}", flush=True)
                failures.append(f"{cfg.name}: {str(error).splitlines()[0][:300]}")
        if {plan.tuned, plan.bs1, plan.baseline} <= {c.name for c in plan.configs}:
            rounds = paired.run_rounds(server, plan, base, image, mw)
    return write_model(plan, rows, rounds, ceilings, failures, out)


def write_model(plan: ModelPlan, sweep: list, rounds: list[dict], ceilings: dict, failures: list[str],
                out: Path) -> str:
    """CSV, JSON and plots of one model; returns its report section."""
    if rounds:
        batch = next(c.batch_size for c in plan.configs if c.name == plan.tuned)
        ceilings[batch] = {**paired.ceiling_summary(rounds), "source": f"paired x{len(rounds)}"}
        if paired.errors(rounds):
            failures.append(f"{paired.errors(rounds)} request(s) failed in the paired rounds: ratios invalid")
    rows = rows_as_dicts(sweep + (paired.rows(plan, rounds) if rounds else []))
    verdicts = paired.headline(rounds) if rounds else []
    ratios = [paired.round_ratios(r) for r in rounds]
    split = paired.decomposition(rounds) if rounds else None
    pngs = plots.plot_model(plan.name, plot_rows(rows), ceilings, out)
    report.write_csv(rows, out / f"{plan.name}.csv")
    (out / f"{plan.name}.json").write_text(json.dumps(
        {"rows": rows, "ceilings": ceilings, "rounds": rounds, "round_ratios": ratios, "decomposition": split,
         "verdicts": [v.__dict__ for v in verdicts]}, indent=1))
    names = [png.name for png in pngs]
    section = render.model_section(plan.name, rows, ceilings, verdicts, names, rounds, ratios, split)
    return section + "".join(f"\n**failed**: {failure}\n" for failure in failures)


def plot_rows(rows: list[dict]) -> list[dict]:
    """Sweep rows, plus paired rows for the loads the sweep did not measure (no duplicate points)."""
    def key(row: dict) -> tuple:
        return row["config"], row["mode"], row["concurrency"]

    swept = {key(r) for r in rows if r["source"] == "sweep"}
    return [r for r in rows if r["source"] == "sweep" or key(r) not in swept]


def machine() -> str:
    """One line about this machine for the report header."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (CPU only)"
    return f"{platform.node()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> int:
    """Every model's plan, then the cold start; the report is written even when a config failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,r50_small")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every phase's time bound")
    parser.add_argument("--skip-coldstart", action="store_true")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated config names to keep (quick checks)")
    args = parser.parse_args(argv)
    started, t0, load_before = datetime.now(), time.perf_counter(), os.getloadavg()
    out = args.out or REPO / "bench" / "results" / started.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="codetr-bench-"))
    try:
        image = test_image(work / "frame.jpg")
        plans = all_plans(args.scale, [name for name in args.only.split(",") if name])
        sections = [run_model(plans[name], work, image, out) for name in args.models.split(",") if name]
        cold = {} if args.skip_coldstart else coldstart.run(work, image)
        (out / "coldstart.json").write_text(json.dumps(cold, indent=1))
    finally:
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    header = {"started": started.isoformat(timespec="seconds"), "elapsed_s": time.perf_counter() - t0,
              "machine": machine(), "load_before": " ".join(f"{v:.2f}" for v in load_before),
              "load_after": " ".join(f"{v:.2f}" for v in os.getloadavg()),
              "command": " ".join(["python -m bench.run", *(argv if argv is not None else sys.argv[1:])])}
    (out / "report.md").write_text(render.document(header, sections, cold))
    print(f"report: {out / 'report.md'} ({header['elapsed_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
