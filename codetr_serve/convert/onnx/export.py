"""Export a built CoDETR to ONNX with torch's dynamo-based exporter (``torch.onnx.export(dynamo=True)``).

Why dynamo and not the TorchScript exporter: the graph needs dynamic batch/height/width, and the dynamo
path keeps sizes symbolic end to end (``torch.export`` names every size it had to assume, see
:data:`MIN_SIDE`) and turns soft-NMS's ``scan`` into one ONNX ``Scan``. ``try_torchscript`` records what
the TorchScript exporter does with the same module (docs/onnx.md quotes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .graph import INPUT_NAMES, OUTPUT_NAMES, CoDinoGraph
from .msda import KERNELS, TRT_PLUGIN_VERSIONS, trt_translation

DEFAULT_OPSET = 20  # torch 2.13's default; GridSample (opset 16+) with mode "linear" (opset 20 spelling)
# torch.export proves the graph only for sides above the coarsest neck stride (64): a 64-pixel side would give
# 1x1 maps at the last level, which the traced reshapes do not cover. Every real input is far larger.
MIN_SIDE = 65
EXAMPLE_CANVAS = (2, 320, 480)  # batch >= 2, or torch.export specialises the batch to 1


@dataclass(frozen=True)
class ExportOptions:
    msda: str = "gridsample"
    trt_plugin_version: str = "1"
    opset: int = DEFAULT_OPSET

    def __post_init__(self) -> None:
        if self.msda not in KERNELS:
            raise ValueError(f"msda must be one of {KERNELS}, got {self.msda!r}")
        if self.trt_plugin_version not in TRT_PLUGIN_VERSIONS:
            raise ValueError(f"trt_plugin_version must be one of {TRT_PLUGIN_VERSIONS}")


def example_inputs(canvas: tuple[int, int, int] = EXAMPLE_CANVAS) -> tuple[torch.Tensor, ...]:
    """Tracing inputs: normalised-looking noise; the second image is padded, as in a mixed batch."""
    batch, height, width = canvas
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, height, width, generator=generator)
    img_shapes = torch.tensor([[height, width]] + [[height - 32, width - 64]] * (batch - 1))
    scale_factors = torch.full((batch, 2), 0.5)
    return images, img_shapes, scale_factors


def dynamic_shapes() -> tuple[dict, ...]:
    dim = torch.export.Dim
    batch = dim("batch")
    return ({0: batch, 2: dim("height", min=MIN_SIDE), 3: dim("width", min=MIN_SIDE)}, {0: batch}, {0: batch})


def export_onnx(detector: nn.Module, out: Path, options: ExportOptions | None = None) -> Path:
    """Write ``out`` (weights inside the file; ``out.data`` next to it when over 2 GB) and return it."""
    options = options or ExportOptions()
    graph = CoDinoGraph(detector, options.msda).eval()
    table = trt_translation(options.trt_plugin_version) if options.msda == "trt" else None
    with torch.no_grad():
        program = torch.onnx.export(
            graph, example_inputs(), dynamo=True, input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes(), opset_version=options.opset,
            custom_translation_table=table, verbose=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(out), external_data=_too_big_for_protobuf(graph))
    return out


def _too_big_for_protobuf(module: nn.Module) -> bool:
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    return size > 1.8 * 2**30


def try_torchscript(detector: nn.Module, out: Path) -> str:
    """Run the TorchScript exporter on the same module; returns 'ok' or the first line of its error."""
    graph = CoDinoGraph(detector, "gridsample").eval()
    try:
        with torch.no_grad():
            torch.onnx.export(graph, example_inputs(), str(out), dynamo=False, opset_version=DEFAULT_OPSET,
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"},
                                            "img_shapes": {0: "batch"}, "scale_factors": {0: "batch"}})
    except Exception as error:  # noqa: BLE001 - the message is the result
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return "ok"
