"""Decode + prepare a batch serially vs on the core's decode threads: does decoding keep up with a GPU?

    python -m bench.decode                       # 8 x 1920x1080 JPEGs, R50 pipeline, ~1 min
    python -m bench.decode --threads 1 2 4 --reps 10

Runs the serving core's own `decode` stage (parse, JPEG decode with OpenCV, the config's test pipeline:
resize to 1333x750 and pack) on one batch, with `decode_threads` 1 (serial) and each value given, in
alternating order so the machine's drift lands on every setting. No model is built. Prints a markdown
table of wall times per batch.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def frames(count: int, width: int, height: int) -> list[bytes]:
    """Camera-like JPEGs: smooth gradients plus noise (pure noise decodes slower than photos do)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for index in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([(x * 255 // width + 40 * index) % 256, y * 255 // height,
                         (x + y) * 255 // (width + height)], -1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def make_core(threads: int, config: Path):
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.model_loader import load_config
    from codetr_serve.runtime.pipeline import ImagePreparer
    from codetr_serve.runtime.settings import build_settings

    core = DetectorCore(build_settings({"decode_threads": threads}, model_dir=config.parent, device="cpu"))
    core.preparer = ImagePreparer(load_config(config))
    return core


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=(1920, 1080), metavar=("W", "H"))
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="decode_threads values compared with 1 (0 = the default, min(4, CPUs))")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "serve_co_dino_r50.py")
    args = parser.parse_args(argv)

    from codetr_serve.runtime.core import decode_cpu_count

    requests = [{"body": data} for data in frames(args.batch, *args.size)]
    settings = [1, *[t for t in args.threads if t != 1]]
    cores = {t: make_core(t, args.config) for t in settings}
    for core in cores.values():  # warm-up: pool threads, OpenCV and the pipeline's first call
        core.decode(requests)
    times: dict[int, list[float]] = {t: [] for t in settings}
    for rep in range(args.reps):
        order = settings if rep % 2 == 0 else settings[::-1]
        for t in order:
            start = time.perf_counter()
            items = cores[t].decode(requests)
            times[t].append(1000 * (time.perf_counter() - start))
            assert not any(isinstance(i, Exception) for i in items), items
    serial = statistics.median(times[1])
    mb = sum(len(r["body"]) for r in requests) / 2**20
    print(f"decode + prepare, batch of {args.batch} {args.size[0]}x{args.size[1]} JPEGs ({mb:.1f} MB), "
          f"{args.config.name} pipeline, {decode_cpu_count()} CPUs; median (min-max) of {args.reps} "
          "alternating repetitions\n")
    print("| decode_threads | threads used | ms per batch | ms per image | speedup |")
    print("|---|---|---|---|---|")
    for t in settings:
        used = cores[t]._decode_threads
        ms = times[t]
        median = statistics.median(ms)
        label = f"{t} (default)" if t == 0 else str(t)
        print(f"| {label} | {used} | {median:.0f} ({min(ms):.0f}-{max(ms):.0f}) | "
              f"{median / args.batch:.1f} | {serial / median:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
