"""The ceiling: the same model, same batch size, in-process through DetectorCore.handle (no TorchServe).

    python -m bench.inprocess --model-dir DIR --batch 4 --batches 5 --threads 2 --image x.jpg --out r.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def measure(model_dir: Path, handler: dict, batch: int, batches: int, max_seconds: float,
            image: bytes) -> dict:
    """Images/s over up to `batches` timed batches (after two warm batches), bounded by `max_seconds`."""
    from codetr_serve.core import DetectorCore
    from codetr_serve.settings import build_settings

    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    core = DetectorCore(build_settings(handler, model_dir=model_dir, device=device))
    core.setup()
    requests = [{"body": bytearray(image)} for _ in range(batch)]
    headers = [{"Content-Type": "image/jpeg"}] * batch
    for _ in range(2):  # warm: allocator and kernels settle, as they have in a server that took traffic
        core.handle(requests, headers)
    times, start = [], time.perf_counter()
    while len(times) < batches and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        replies = core.handle(requests, headers)
        times.append(time.perf_counter() - t0)
        if any(reply.status != 200 for reply in replies):
            raise RuntimeError(f"in-process batch failed: {[r.body for r in replies if r.status != 200]}")
    total = sum(times)
    return {"batch": batch, "batches": len(times), "seconds": total, "device": device,
            "threads": torch.get_num_threads(), "images_per_s": batch * len(times) / total,
            "ms_per_batch": 1000.0 * total / len(times)}


def main(argv: list[str] | None = None) -> int:
    """Parse options, pin the thread count, measure, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--handler", default="{}", help="JSON: the model-config handler section")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = measure(args.model_dir, json.loads(args.handler), args.batch, args.batches, args.max_seconds,
                     args.image.read_bytes())
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
