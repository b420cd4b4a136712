"""Export a Co-DINO config (+ checkpoint) to ONNX: image tensor in, boxes/scores/labels out.

    python -m codetr_serve.tools.export_onnx --config config/serve_co_dino_r50.py \\
        --checkpoint co_dino_r50.pth --out co_dino_r50.onnx [--msda trt] [--verify]

Without ``--checkpoint`` the model keeps seeded random weights (for trying the tool). Inputs, outputs and
what is verified are in docs/onnx.md. ``--verify`` runs the file in ONNX Runtime on CPU against the PyTorch
model on two images (GridSample form only: nothing but TensorRT runs the plugin node).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from codetr_serve.convert.onnx.export import DEFAULT_OPSET, ExportOptions, export_onnx
from codetr_serve.convert.onnx.msda import KERNELS, TRT_PLUGIN_VERSIONS

log = logging.getLogger("export_onnx")


def load_detector(config: Path, checkpoint: Path | None, seed: int = 0) -> torch.nn.Module:
    """The CoDETR the config builds, with the checkpoint's weights (read safely) or seeded random ones."""
    from mmdet.registry import MODELS

    from codetr_serve.runtime.model_loader import load_config

    cfg = load_config(config)
    torch.manual_seed(seed)  # the same random weights as build_detector(cfg, None, ..., seed) serves
    detector = MODELS.build(cfg.model)
    if checkpoint is None:
        log.warning("no --checkpoint: exporting seeded RANDOM weights (seed %d)", seed)
    else:
        from codetr_serve.convert.checkpoint import read_checkpoint
        from codetr_serve.runtime.weights import apply_state_dict

        report = apply_state_dict(detector, read_checkpoint(checkpoint).state_dict)
        log.info("weights from %s: %s", checkpoint, report)
    return detector.eval()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="mmdet config of a Co-DINO model")
    parser.add_argument("--checkpoint", type=Path, help="a .pth checkpoint (read without unpickling code)")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument("--msda", choices=KERNELS, default="gridsample",
                        help="deformable attention as standard ops (gridsample, runs anywhere) or as one "
                             "TensorRT MultiscaleDeformableAttnPlugin_TRT node (trt)")
    parser.add_argument("--trt-plugin-version", choices=TRT_PLUGIN_VERSIONS, default="1",
                        help="plugin_version of the TensorRT node: 1 (TensorRT 8-10), 2 (IPluginV3, 10.11+)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights without --checkpoint")
    parser.add_argument("--verify", action="store_true",
                        help="run the file in ONNX Runtime against PyTorch (gridsample only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.verify and args.msda != "gridsample":
        print("--verify needs --msda gridsample: ONNX Runtime has no kernel for the TensorRT plugin node",
              file=sys.stderr)
        return 2
    detector = load_detector(args.config, args.checkpoint, args.seed)
    start = time.perf_counter()
    out = export_onnx(detector, args.out, ExportOptions(args.msda, args.trt_plugin_version, args.opset))
    log.info("wrote %s (%.1f MB) in %.0f s", out, out.stat().st_size / 2**20, time.perf_counter() - start)
    if args.verify:
        from codetr_serve.convert.onnx.parity import verify_against_pytorch

        report = verify_against_pytorch(detector, out)
        print(report.describe())
        return 0 if report.ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
