"""The fused op (`codetr_ops::msda_fused_forward`: softmax + sampling locations + sampling in one pass) and
the MultiScaleDeformableAttention forward that uses it: equal to mmcv's module and to float64 references."""

from __future__ import annotations

import pytest
import torch

from codetr_serve.ops import fused_attention, msda
from tests.unit.test_msda_op import (  # noqa: F401 - built_op and restore_dispatch are fixtures
    ISAS,
    LEVEL_SHAPES,
    assert_close,
    built_op,
    mmcv_fallback,
    naive_float64,
    needs_isa,
    restore_dispatch,
)

pytestmark = pytest.mark.usefixtures("built_op", "restore_dispatch")
HEADS, DIM, POINTS = 8, 32, 4


def raw_problem(shapes, ref_dim, bs=2, queries=120, seed=0):
    """value, offsets (bs, Q, H*L*P*2) and logits (bs, Q, H*L*P) as the linear layers give them."""
    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    value = torch.randn(bs, sum(h * w for h, w in shapes), HEADS, DIM, generator=g)
    centre = torch.rand(bs, queries, levels, 2, generator=g) * 1.2 - 0.1
    ref = centre if ref_dim == 2 else torch.cat([centre, torch.rand(bs, queries, levels, 2, generator=g)], -1)
    offsets = torch.randn(bs, queries, HEADS * levels * POINTS * 2, generator=g) * 3
    logits = torch.randn(bs, queries, HEADS * levels * POINTS, generator=g) * 2
    return value, torch.tensor(shapes), ref, offsets, logits


def mmcv_locations(shapes, ref, offsets, logits):
    """mmcv's forward between its linear layers, in whatever dtype it gets."""
    bs, queries, levels, ref_dim = ref.shape
    offsets = offsets.view(bs, queries, HEADS, levels, POINTS, 2)
    weights = logits.view(bs, queries, HEADS, levels * POINTS).softmax(-1)
    weights = weights.view(bs, queries, HEADS, levels, POINTS)
    if ref_dim == 2:
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        locations = ref[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    else:
        locations = ref[:, :, None, :, None, :2] + offsets / POINTS * ref[:, :, None, :, None, 2:] * 0.5
    return locations, weights


def fused(value, shapes, ref, offsets, logits, sequence_first=False, isa="auto"):
    with torch.inference_mode():
        return torch.ops.codetr_ops.msda_fused_forward(value, shapes, msda.level_start_index(shapes), ref,
                                                       offsets, logits, POINTS, sequence_first, isa)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("ref_dim", [2, 4])
@pytest.mark.parametrize("name", ["tiny_320x192", "odd_4_levels", "degenerate_4_levels"])
def test_fused_op_equals_mmcv_and_float64(isa, ref_dim, name):
    needs_isa(isa)
    shapes = LEVEL_SHAPES[name]
    value, spatial, ref, offsets, logits = raw_problem(shapes, ref_dim, seed=ref_dim + len(name))
    ours = fused(value, spatial, ref, offsets, logits, isa=isa)
    locations, weights = mmcv_locations(spatial, ref, offsets, logits)
    with torch.inference_mode():
        assert_close(ours, mmcv_fallback()(value, spatial, locations, weights), f"{name}/{isa} vs mmcv")
    loc64, w64 = mmcv_locations(spatial, ref.double(), offsets.double(), logits.double())
    assert_close(ours, naive_float64(value, shapes, loc64, w64), f"{name}/{isa} vs float64")
    # The locations are mmcv's to the bit: the plain op on mmcv's float32 locations differs only by the
    # softmax's rounding.
    with torch.inference_mode():
        plain = msda.msda_forward(value, spatial, None, locations, weights, isa=isa)
    torch.testing.assert_close(ours, plain, atol=2e-6, rtol=1e-5)


def test_fused_op_reads_strided_views_and_writes_sequence_first():
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, ref, offsets, logits = raw_problem(shapes, 2, queries=30)
    expected = fused(value, spatial, ref, offsets, logits)
    # The layouts mmcv's sequence-first layers hand over: (num, bs, C) tensors seen batch-first.
    seq_value = value.flatten(2).transpose(0, 1).contiguous().transpose(0, 1).unflatten(-1, (HEADS, DIM))
    seq_offsets = offsets.transpose(0, 1).contiguous().transpose(0, 1)
    seq_logits = logits.transpose(0, 1).contiguous().transpose(0, 1)
    assert not seq_value.is_contiguous() and not seq_offsets.is_contiguous()
    out = fused(seq_value, spatial, ref, seq_offsets, seq_logits, sequence_first=True)
    assert out.shape == (30, 2, HEADS * DIM) and out.is_contiguous()
    torch.testing.assert_close(out.transpose(0, 1), expected, atol=0, rtol=0)


def test_fused_op_non_finite_logits_or_offsets_give_nan_heads():
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, ref, offsets, logits = raw_problem(shapes, 4, queries=10)
    logits[0, 3, 2 * 16 + 5] = float("nan")  # head 2 of query 3
    offsets[1, 7, 5 * 32 + 1] = float("inf")  # head 5 of query 7
    out = fused(value, spatial, ref, offsets, logits).view(2, 10, HEADS, DIM)
    bad = out.isnan().all(-1)
    assert bad.sum() == 2 and bad[0, 3, 2] and bad[1, 7, 5]
    assert out[~bad].isfinite().all()


def test_fused_op_refuses_mismatched_inputs():
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, ref, offsets, logits = raw_problem(shapes, 2, queries=10)
    op, starts = torch.ops.codetr_ops.msda_fused_forward, msda.level_start_index(spatial)
    with pytest.raises(RuntimeError, match="sampling_offsets must be"):
        op(value, spatial, starts, ref, offsets[..., :-2], logits, POINTS)
    with pytest.raises(RuntimeError, match="attention_logits must be"):
        op(value, spatial, starts, ref, offsets, logits[..., :-1], POINTS)
    with pytest.raises(RuntimeError, match="reference_points must be"):
        op(value, spatial, starts, ref[..., :1], offsets, logits, POINTS)
    with pytest.raises(RuntimeError, match="does not fit"):
        op(value[:, :50], spatial, starts, ref, offsets, logits, POINTS)
    with pytest.raises(RuntimeError, match="float32"):
        op(value.double(), spatial, starts, ref, offsets, logits, POINTS)


# -- the module forward -----------------------------------------------------------------------------------
def module_and_inputs(batch_first: bool, ref_dim: int, padded: bool, seed: int = 0):
    from mmcv.ops import MultiScaleDeformableAttention

    torch.manual_seed(seed)
    module = MultiScaleDeformableAttention(embed_dims=256, num_heads=HEADS, num_levels=4, num_points=POINTS,
                                           batch_first=batch_first, dropout=0.1).eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    shapes = torch.tensor(LEVEL_SHAPES["odd_4_levels"])
    keys, queries = int((shapes[:, 0] * shapes[:, 1]).sum()), 40
    ref = torch.rand(2, queries, 4, ref_dim)
    mask = torch.zeros(2, keys, dtype=torch.bool)
    if padded:
        mask[1, -300:] = True
    layout = (lambda n: (2, n, 256)) if batch_first else (lambda n: (n, 2, 256))
    inputs = dict(query=torch.randn(layout(queries)), value=torch.randn(layout(keys)),
                  query_pos=torch.randn(layout(queries)), key_padding_mask=mask, reference_points=ref,
                  spatial_shapes=shapes, level_start_index=msda.level_start_index(shapes))
    return module, inputs


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("ref_dim", [2, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_module_forward_equals_mmcv_forward_and_float64(batch_first, ref_dim, padded):
    module, inputs = module_and_inputs(batch_first, ref_dim, padded)
    msda.configure_cpu_msda("fallback")
    with torch.inference_mode():
        theirs = module(**inputs)
        doubles = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        expected = module.double()(**doubles)
    module.float()
    assert msda.configure_cpu_msda("auto") == "op" and fused_attention.installed()
    with torch.inference_mode(), torch.profiler.profile() as prof:
        ours = module(**inputs)
    names = {e.key for e in prof.key_averages()}
    assert "codetr_ops::msda_fused_forward" in names and "aten::grid_sampler_2d" not in names
    assert "aten::masked_fill_" in names if padded else "aten::masked_fill_" not in names
    assert ours.shape == theirs.shape
    assert_close(ours, theirs, "fused module vs mmcv's module")
    assert_close(ours, expected, "fused module vs float64")


def test_training_and_autograd_keep_mmcv_forward():
    module, inputs = module_and_inputs(False, 2, True)
    msda.configure_cpu_msda("auto")
    module.train()  # dropout active: mmcv's forward
    with torch.no_grad(), torch.profiler.profile() as prof:
        module(**inputs)
    assert "codetr_ops::msda_fused_forward" not in {e.key for e in prof.key_averages()}
    module.eval()
    out = module(**inputs)  # grad enabled, parameters require grad: mmcv's differentiable path
    out.sum().backward()
    assert module.value_proj.weight.grad is not None
    msda.configure_cpu_msda("auto", fused=False)
    assert not fused_attention.installed() and msda.active_path() == "op"
    msda.configure_cpu_msda("fallback")
    assert not fused_attention.installed()


def test_tracing_for_export_sees_mmcv_graph_not_our_ops():
    """ONNX export and torch.jit tracing must not capture codetr_ops or oneDNN-only calls."""
    module, inputs = module_and_inputs(False, 2, False)
    msda.configure_cpu_msda("auto")
    kwargs = {k: v for k, v in inputs.items() if k != "query"}

    class Call(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = module

        def forward(self, query):
            return self.attention(query, **kwargs)

    with torch.no_grad():
        traced = torch.jit.trace(Call(), (inputs["query"],), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "codetr_ops" not in graph and "mkldnn::_linear_pointwise" not in graph
    assert "grid_sampler" in graph  # mmcv's own path was traced
