"""What a hostile request body costs a worker before it is refused, next to a real image request.

    python -m bench.hostile                # bodies of ~24-64 MB (TorchServe's max_request_size is 64 MiB)
    python -m bench.hostile --mb 4 --reps 5

Runs the serving core's own `decode` stage (no model is built) on one request per body, delivered as
TorchServe 0.12 hands it over: `raw` (octet-stream bytes: our parser reads the JSON) and `parsed`
(application/json: TorchServe's worker already ran json.loads, whose time is not ours and not counted).
Prints a markdown table of the median wall time and the error code each body ends in.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from bench.decode import REPO, frames, make_core


def bodies(mb: float) -> dict[str, Callable[[], dict]]:
    """Name -> a JSON document of about `mb` MB (built lazily, one at a time)."""
    n = int(mb * 1_000_000 / 3)  # "1, " is 3 bytes: values in the widest bodies

    def v2_input() -> dict:
        return {"name": "i", "shape": [1], "datatype": "BYTES", "data": [""]}

    return {
        "a real request: one 1920x1080 JPEG, base64": lambda: {"image": base64.b64encode(
            frames(1, 1920, 1080)[0]).decode()},
        "KServe v1: a list of numbers as instances": lambda: {"instances": [1] * n},
        'KServe v1: {"b64": ""} instances': lambda: {"instances": [{"b64": ""}] * (n // 4)},
        "KServe v2: empty strings in one tensor": lambda: {"inputs": [
            {"name": "image", "shape": [n], "datatype": "BYTES", "data": [""] * n}]},
        "KServe v2: one tensor per input": lambda: {"inputs": [v2_input()] * (n // 20)},
        "predictions: a wide list beside the image": lambda: {"image": "x", "other": [0] * n},
        "predictions: many keys": lambda: {"image": "", **{f"k{i}": i for i in range(n // 4)}},
        "a string JSON document": lambda: "x" * (3 * n),
    }


def outcome(item: object) -> str:
    """The request's error code, or each of its images' (an error code, or "ok" for a prepared image)."""
    if hasattr(item, "code"):
        return item.code
    return ", ".join(getattr(image, "code", "ok") for image in item.images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=24.0, help="approximate size of the hostile bodies")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--config", type=Path, default=REPO / "config" / "serve_co_dino_r50.py")
    args = parser.parse_args(argv)

    core = make_core(1, args.config)
    print(f"decode stage of one request per body, median of {args.reps}; TorchServe's own json.loads for "
          "the parsed delivery not counted\n")
    print("| body | MB | delivery | ms | answer |")
    print("|---|---|---|---|---|")
    for name, build in bodies(args.mb).items():
        document = build()
        text = json.dumps(document).encode()
        for delivery, request in (("raw", {"body": bytearray(text)}), ("parsed", {"body": document})):
            times, answer = [], ""
            for _ in range(args.reps):
                start = time.perf_counter()
                items = core.decode([request])
                times.append(1000 * (time.perf_counter() - start))
                answer = outcome(items[0])
            ms = statistics.median(times)
            print(f"| {name} | {len(text) / 1e6:.1f} | {delivery} | {ms:.0f} | {answer} |", flush=True)
        del document, text
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
