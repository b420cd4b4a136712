"""Multi-scale deformable attention in the two forms an ONNX export can carry.

mmcv's ``MultiScaleDeformableAttention.forward`` cannot be exported as it is: it asserts on the values of
``spatial_shapes`` (a data-dependent check) and, off CUDA, calls a function that splits ``value`` by sizes
read out of that tensor. :class:`ExportMSDA` takes over such a module's parameters (same submodule names,
so the state-dict keys and the ONNX initializer names stay those of the checkpoint) and runs the same
formula with the per-level sizes taken from the feature maps' shapes, which stay symbolic under export.

The sampling core is one of:

* ``gridsample``: bilinear ``grid_sample`` per level (ONNX ``GridSample``), stack, weight, sum: mmcv's own
  CPU formula, standard ops only, runs in ONNX Runtime or anywhere else.
* ``trt``: ONE node ``MultiscaleDeformableAttnPlugin_TRT`` (NVIDIA TensorRT's plugin, read from
  NVIDIA/TensorRT ``plugin/multiscaleDeformableAttnPlugin``: 5 inputs ``value (N, S, M, D)``,
  ``spatial_shapes (L, 2) int32``, ``level_start_index (L,) int32``, ``sampling_locations
  (N, Lq, M, L, P, 2)``, ``attention_weights (N, Lq, M, L, P)``; output ``(N, Lq, M, D)``; no plugin
  fields). TensorRT's ONNX parser maps a node to a registered plugin by its op type and the string
  attributes ``plugin_version`` / ``plugin_namespace``. Nothing but TensorRT can run it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KERNELS = ("gridsample", "trt")
TRT_PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
TRT_PLUGIN_DOMAIN = "trt"
# "1" (IPluginV2DynamicExt) is in every TensorRT 8.x-10.x; "2" (IPluginV3, same I/O) since TensorRT 10.11.
TRT_PLUGIN_VERSIONS = ("1", "2")


@dataclass
class LevelShapes:
    """The (h, w) of every feature level of the batch being traced, shared by all attention modules.

    The export wrapper fills it from the neck's outputs before the transformer runs; under export the
    values are symbolic sizes, so the graph keeps dynamic height and width.
    """

    shapes: list[tuple] = field(default_factory=list)


def msda_gridsample(value: Tensor, level_shapes: list[tuple], locations: Tensor, weights: Tensor) -> Tensor:
    """mmcv's formula (grid_sample, align_corners=False, zero padding) with sizes from ``level_shapes``.

    Args:
        value: (B, S, M, D); locations: (B, Lq, M, L, P, 2) in [0, 1]; weights: (B, Lq, M, L, P).

    Returns:
        (B, Lq, M * D).
    """
    batch, _, heads, dims = value.shape
    queries, levels, points = locations.shape[1], locations.shape[3], locations.shape[4]
    grids = 2 * locations - 1
    sampled, start = [], 0
    for level, (height, width) in enumerate(level_shapes):
        value_l = value[:, start : start + height * width]
        start = start + height * width
        maps = value_l.flatten(2).transpose(1, 2).reshape(batch * heads, dims, height, width)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = weights.transpose(1, 2).reshape(batch * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(batch, heads * dims, queries)
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("codetr_export::trt_msda", mutates_args=())
def trt_msda(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, sampling_locations: Tensor,
             attention_weights: Tensor) -> Tensor:
    """Stand-in for TensorRT's plugin while tracing; eager calls compute it (output (B, Lq, M, D))."""
    from codetr_serve.ops.msda import reference_msda

    batch, _, heads, dims = value.shape
    out = reference_msda(value, spatial_shapes.long(), sampling_locations, attention_weights)
    return out.view(batch, sampling_locations.shape[1], heads, dims)


@trt_msda.register_fake
def _trt_msda_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    batch, _, heads, dims = value.shape
    return value.new_empty(batch, sampling_locations.shape[1], heads, dims)


def trt_translation(plugin_version: str) -> dict:
    """The dynamo exporter's translation of :func:`trt_msda` into the TensorRT plugin node."""
    import onnxscript

    opset = onnxscript.values.Opset(TRT_PLUGIN_DOMAIN, 1)
    plugin = onnxscript.values.Op(opset, TRT_PLUGIN_NAME, _plugin_schema())

    def plugin_node(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return plugin(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                      plugin_version=plugin_version, plugin_namespace="")

    return {torch.ops.codetr_export.trt_msda.default: plugin_node}


def _plugin_schema():
    """An ONNX schema for the plugin node (onnxscript builds nodes from schemas); registered once."""
    from onnx import defs

    if defs.has(TRT_PLUGIN_NAME, TRT_PLUGIN_DOMAIN):
        return defs.get_schema(TRT_PLUGIN_NAME, 1, TRT_PLUGIN_DOMAIN)
    param = defs.OpSchema.FormalParameter
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
    types = ("T", "I", "I", "T", "T")
    schema = defs.OpSchema(
        TRT_PLUGIN_NAME, TRT_PLUGIN_DOMAIN, 1, doc="TensorRT multi-scale deformable attention plugin",
        inputs=[param(name, kind) for name, kind in zip(names, types, strict=True)],
        outputs=[param("output", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("I", ["tensor(int32)"], "")],
        attributes=[defs.OpSchema.Attribute(name, defs.OpSchema.AttrType.STRING, "")
                    for name in ("plugin_version", "plugin_namespace")])
    defs.register_schema(schema)
    return schema


class ExportMSDA(nn.Module):
    """An mmcv ``MultiScaleDeformableAttention`` with an exportable forward (same parameters, same math)."""

    def __init__(self, source: nn.Module, levels: LevelShapes, kernel: str) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        # Same attribute names as mmcv's module: the state-dict keys do not change.
        self.sampling_offsets = source.sampling_offsets
        self.attention_weights = source.attention_weights
        self.value_proj = source.value_proj
        self.output_proj = source.output_proj
        self.dropout = source.dropout
        self.num_heads, self.num_levels = source.num_heads, source.num_levels
        self.num_points = source.num_points
        self.batch_first = source.batch_first
        self.levels = levels
        self.kernel = kernel

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                identity: Tensor | None = None, query_pos: Tensor | None = None,
                key_padding_mask: Tensor | None = None, reference_points: Tensor | None = None,
                spatial_shapes: Tensor | None = None, level_start_index: Tensor | None = None,
                **kwargs) -> Tensor:
        value = query if value is None else value
        identity = query if identity is None else identity
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query, value = query.permute(1, 0, 2), value.permute(1, 0, 2)
        batch, num_query, _ = query.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(batch, value.shape[1], self.num_heads, -1)
        shape = (batch, num_query, self.num_heads, self.num_levels, self.num_points)
        offsets = self.sampling_offsets(query).view(*shape, 2)
        weights = self.attention_weights(query).view(batch, num_query, self.num_heads, -1).softmax(-1)
        weights = weights.view(*shape)
        locations = self._locations(reference_points, offsets, spatial_shapes)
        output = self.output_proj(self._sample(value, spatial_shapes, level_start_index, locations, weights))
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity

    def _locations(self, reference_points: Tensor, offsets: Tensor, spatial_shapes: Tensor) -> Tensor:
        if reference_points.shape[-1] == 2:
            normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            normalizer = normalizer[None, None, None, :, None, :]
            return reference_points[:, :, None, :, None, :] + offsets / normalizer
        return (reference_points[:, :, None, :, None, :2]
                + offsets / self.num_points * reference_points[:, :, None, :, None, 2:] * 0.5)

    def _sample(self, value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor, locations: Tensor,
                weights: Tensor) -> Tensor:
        if self.kernel == "gridsample":
            return msda_gridsample(value, self.levels.shapes, locations, weights)
        out = trt_msda(value, spatial_shapes.to(torch.int32), level_start_index.to(torch.int32), locations,
                       weights)
        return out.flatten(2)


def replace_msda(model: nn.Module, levels: LevelShapes, kernel: str) -> int:
    """Swap every mmcv deformable attention inside ``model`` for :class:`ExportMSDA`; returns the count."""
    from mmcv.ops import MultiScaleDeformableAttention

    targets = [(name, module) for name, module in model.named_modules()
               if isinstance(module, MultiScaleDeformableAttention)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        parent._modules[child] = ExportMSDA(module, levels, kernel)
    return len(targets)
