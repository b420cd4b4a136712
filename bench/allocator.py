"""Does glibc's allocator slow a CPU worker down? Two copies of one model, same core, call by call.

    python -m bench.allocator --model tiny            # ~2 min; r50_small: ~10 min
    python -m bench.allocator --model r50_small --blocks 4 --calls 4

glibc hands large blocks back to the kernel (mmap/munmap, heap trimming) and adapts its thresholds to the
sizes a process has freed before, so a worker that only ever ran one image at a time can fault its
activations in afresh on every forward, while one that ran batches has raised its thresholds. Copy A runs
with the handler setting `keep_freed_memory: false` (glibc's defaults), copy B with `true` (both thresholds
raised, runtime/allocator.py); both are pinned to the same core and called alternately (A B B A ...),
so the machine's drift lands on both. Prints a table per block and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

import psutil
import yaml

from bench.inprocess import CeilingProcess
from bench.loadgen import abba_order
from bench.pinning import pin_process, pinned, split_cores
from bench.plan import all_plans
from bench.run import test_image
from bench.server import REPO
from bench.variants import run_archive


def alternate(copies: list[CeilingProcess], calls: int) -> list[list[float]]:
    """`calls` single-batch calls spread over the copies in A B B A order: ms per call, per copy."""
    times: list[list[float]] = [[] for _ in copies]
    for index in abba_order(calls, len(copies)):
        times[index].append(1000.0 * copies[index].measure(1)["seconds"])
    return times


def measure(model_dir: Path, handler: dict, image: Path, args: argparse.Namespace, log_dir: Path) -> dict:
    """Both copies loaded and warmed, then `args.blocks` blocks of alternating calls."""
    split = split_cores()
    off, on = ({**handler, "keep_freed_memory": keep} for keep in (False, True))
    with CeilingProcess(model_dir, off, args.batch, 1, image, log=log_dir / "default.log") as default, \
            CeilingProcess(model_dir, on, args.batch, 1, image, log=log_dir / "raised.log") as raised:
        for copy in (default, raised):
            if split:
                pin_process(copy.process.pid, split.model)
        with pinned(split, [], []):
            blocks = [alternate([default, raised], args.calls) for _ in range(args.blocks)]
        rss = [psutil.Process(c.process.pid).memory_info().rss / 2**20 for c in (default, raised)]
    rows = [{"block": i + 1, "default_ms": statistics.median(a), "raised_ms": statistics.median(b)}
            for i, (a, b) in enumerate(blocks)]
    return {"batch": args.batch, "rows": rows, "rss_mb": {"default": rss[0], "raised": rss[1]},
            "ratio": statistics.median([r["raised_ms"] / r["default_ms"] for r in rows]),
            "model_core": sorted(split.model) if split else None}


def table(result: dict) -> str:
    """Markdown: one line per block, then the median ratio and the resident memory of both copies."""
    lines = ["| block | keep_freed_memory: false, ms | true, ms | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['block']} | {r['default_ms']:.1f} | {r['raised_ms']:.1f} | "
              f"{r['raised_ms'] / r['default_ms']:.3f} |" for r in result["rows"]]
    rss = result["rss_mb"]
    lines += ["", f"median ratio (true / false): {result['ratio']:.3f}; RSS after the run: "
                  f"{rss['default']:.0f} MB with false, {rss['raised']:.0f} MB with true"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Build the model folder, run the comparison, print the table and keep the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", choices=("tiny", "r50_small"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--calls", type=int, default=16, help="calls per block, both copies together")
    args = parser.parse_args(argv)
    plan = all_plans()[args.model]
    out = REPO / "bench" / "results" / f"allocator-{args.model}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="codetr-allocator-"))
    try:
        config = work / "model-config.yaml"
        config.write_text(yaml.safe_dump({"minWorkers": 1, "handler": plan.handler}))
        run_archive(plan.config, "base", work / "base", config)
        result = measure(work / "base" / "base", plan.handler, test_image(work / "frame.jpg"), args, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "allocator.json").write_text(json.dumps(result, indent=1))
    print(table(result) + f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
