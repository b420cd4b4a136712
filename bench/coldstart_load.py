"""The bare in-process load of a packed model dir, for the cold-start comparison (run as its own process)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Time import + config, the safetensors read, and build + load; write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    import torch

    from codetr_serve.runtime.model_loader import build_detector, load_config
    from codetr_serve.runtime.weights import load_serving_weights

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.model_dir / "model_config.py")
    t1 = time.perf_counter()
    state_dict, _ = load_serving_weights(args.model_dir / "weights")
    t2 = time.perf_counter()
    del state_dict
    build_detector(cfg, args.model_dir / "weights", "cpu")  # build + read + apply, as a worker does
    t3 = time.perf_counter()
    args.out.write_text(json.dumps({"import_and_config_s": t1 - t0, "read_safetensors_s": t2 - t1,
                                    "build_and_load_s": t3 - t2, "total_s": t3 - t0}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
