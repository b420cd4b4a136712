"""mmcv's MultiScaleDeformableAttention.forward on CPU with everything between its linear layers in one op.

mmcv's forward builds, between `sampling_offsets`/`attention_weights` and `output_proj`, a softmax and
(bs, queries, heads, levels, points, 2) location tensors in several broadcast passes (add, div, view), copies
the projected value to zero padded keys even when nothing is padded, and permutes between its sequence-first
layers and a batch-first kernel. `codetr_ops::msda_fused_forward` reads the linear layers' outputs in the
layout they have and does the softmax, the location arithmetic (in mmcv's operation order) and the sampling
per query in one parallel pass, writing the output in the layer's own layout. Its four linear layers go
through `onednn_linear.linear` (oneDNN while that is installed).

`install()` swaps the class's forward for a dispatcher: CPU float32 inference in eval mode takes the fused
path, anything else (CUDA, fp16, training, autograd, tracing/ONNX export/torch.compile) runs mmcv's own
forward. `uninstall()` restores it.
`configure_cpu_msda` in `msda.py` does both together with the function-level dispatch.
"""

from __future__ import annotations

import torch

from codetr_serve.ops.onednn_linear import exporting, linear

_ORIGINAL_ATTR = "_codetr_original"


def _attention_class():
    from mmcv.ops import MultiScaleDeformableAttention

    return MultiScaleDeformableAttention


def _original_forward():
    current = _attention_class().forward
    return getattr(current, _ORIGINAL_ATTR, current)


def installed() -> bool:
    return hasattr(_attention_class().forward, _ORIGINAL_ATTR)


def _fusable(module, query: torch.Tensor, value: torch.Tensor | None, reference_points) -> bool:
    if module.training or exporting() or reference_points is None or reference_points.dim() != 4:
        return False
    if reference_points.shape[2] != module.num_levels or reference_points.shape[3] not in (2, 4):
        return False
    tensors = [t for t in (query, value, reference_points) if t is not None]
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*tensors, *module.parameters())):
        return False
    return True


def fused_forward(module, query, value, identity, query_pos, key_padding_mask, reference_points,
                  spatial_shapes, level_start_index) -> torch.Tensor:
    """mmcv's forward (same arguments, same result up to float rounding of the softmax and the sums)."""
    from codetr_serve.ops.msda import level_start_index as starts_of

    value = query if value is None else value
    identity = query if identity is None else identity
    if query_pos is not None:
        query = query + query_pos
    value = linear(value, module.value_proj)
    if key_padding_mask is not None and bool(key_padding_mask.any()):
        # In place: the projection is our own fresh tensor, and an image without padding skips this pass.
        mask = key_padding_mask if module.batch_first else key_padding_mask.transpose(0, 1)
        value.masked_fill_(mask[..., None], 0.0)
    offsets = linear(query, module.sampling_offsets)
    logits = linear(query, module.attention_weights)
    if not module.batch_first:  # (num, bs, C) -> batch-major views of the same memory, no copies
        value, offsets, logits = value.transpose(0, 1), offsets.transpose(0, 1), logits.transpose(0, 1)
    spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long)
    if level_start_index is None:
        level_start_index = starts_of(spatial_shapes)
    output = torch.ops.codetr_ops.msda_fused_forward(
        value.unflatten(-1, (module.num_heads, -1)), spatial_shapes, level_start_index, reference_points,
        offsets, logits, module.num_points, not module.batch_first, "auto")
    return module.dropout(linear(output, module.output_proj)) + identity


def _make_forward(original):
    def forward(self, query, key=None, value=None, identity=None, query_pos=None, key_padding_mask=None,
                reference_points=None, spatial_shapes=None, level_start_index=None, **kwargs):
        if _fusable(self, query, value, reference_points):
            return fused_forward(self, query, value, identity, query_pos, key_padding_mask, reference_points,
                                 spatial_shapes, level_start_index)
        return original(self, query, key, value, identity, query_pos, key_padding_mask, reference_points,
                        spatial_shapes, level_start_index, **kwargs)

    forward.__doc__ = ("codetr_serve dispatcher: CPU float32 inference -> codetr_ops::msda_fused_forward, "
                       "else mmcv's MultiScaleDeformableAttention.forward.")
    setattr(forward, _ORIGINAL_ATTR, original)
    return forward


def install() -> None:
    """Route CPU float32 inference of every MultiScaleDeformableAttention to the fused op (idempotent)."""
    if not installed():
        _attention_class().forward = _make_forward(_original_forward())


def uninstall() -> None:
    """Restore mmcv's own forward."""
    _attention_class().forward = _original_forward()
