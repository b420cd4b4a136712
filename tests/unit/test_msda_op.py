"""Our compiled CPU multi-scale deformable attention op: equal to mmcv's fallback and to a float64 reference,
routed to by the mmcv dispatcher on CPU, forced off by `cpu_msda: fallback`, and the tiny model's detections
unchanged with it.

The op must be built (`python -m codetr_serve.tools.build_ops`, part of `make setup`); the session fixture
builds it when it is missing or older than its source, and FAILS (not skips) when that does not work.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from codetr_serve.ops import msda

REPO = Path(__file__).resolve().parents[2]
ATOL = RTOL = 1e-4

# (h, w) of every level, as Co-DINO builds them: strides 4, 8, 16, 32, 64 of the batch (the serving
# configs do not pad to a multiple), every stride-2 step rounding up. The R50 rows are what a 1333x800
# forward really used (printed by `python -m bench.msda`).
LEVEL_SHAPES = {
    "r50_1333x800": [(200, 334), (100, 167), (50, 84), (25, 42), (13, 21)],
    "r50_800x1333_portrait": [(334, 200), (167, 100), (84, 50), (42, 25), (21, 13)],
    "r50_1280x720_frame_at_1333x750": [(188, 334), (94, 167), (47, 84), (24, 42), (12, 21)],
    "tiny_320x192": [(48, 80), (24, 40), (12, 20), (6, 10), (3, 5)],
    "tiny_192x320_portrait": [(80, 48), (40, 24), (20, 12), (10, 6), (5, 3)],
    "odd_4_levels": [(36, 24), (18, 12), (9, 6), (5, 3)],
    "degenerate_4_levels": [(7, 1), (1, 7), (2, 2), (1, 1)],
}


# -- fixtures and references -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def built_op() -> msda.OpStatus:
    """The op, built here when `make setup` has not built it (about a minute), and loaded."""
    completed = subprocess.run([sys.executable, "-m", "codetr_serve.tools.build_ops"], cwd=REPO,
                               capture_output=True, text=True, timeout=900, check=False)
    assert completed.returncode == 0, f"build_ops failed:\n{completed.stdout}\n{completed.stderr}"
    status = msda.load_op(retry=True)
    assert status.available, status.describe()
    assert not status.stale, status.describe()
    return status


@pytest.fixture
def restore_dispatch():
    """Leave mmcv's function as the test found it."""
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    before = mmcv_msda.multi_scale_deformable_attn_pytorch
    yield
    mmcv_msda.multi_scale_deformable_attn_pytorch = before


def mmcv_fallback():
    """mmcv's own pure-PyTorch function, even while our dispatcher wraps it."""
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    current = mmcv_msda.multi_scale_deformable_attn_pytorch
    return getattr(current, "_codetr_original", current)


def naive_float64(value, shapes, locations, weights) -> np.ndarray:
    """The CUDA kernel's definition written out in numpy float64, independent of grid_sample.

    pixel = location * size - 0.5; each of the 4 bilinear corners contributes only when it lies on the map.
    """
    value = value.double().numpy()
    locations = locations.double().numpy()
    weights = weights.double().numpy()
    bs, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = np.zeros((bs, queries, heads, dim))
    batch = np.arange(bs)[:, None, None, None]
    head = np.arange(heads)[None, None, :, None]
    start = 0
    for level, (height, width) in enumerate(shapes):
        x = locations[:, :, :, level, :, 0] * width - 0.5
        y = locations[:, :, :, level, :, 1] * height - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        for dy in (0, 1):
            for dx in (0, 1):
                xi, yi = x0 + dx, y0 + dy
                inside = (xi >= 0) & (xi < width) & (yi >= 0) & (yi < height)
                corner = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi)) * weights[:, :, :, level]
                key = start + np.where(inside, yi * width + xi, 0).astype(np.int64)
                sampled = value[batch, key, head]  # (bs, queries, heads, points, dim)
                out += (np.where(inside, corner, 0.0)[..., None] * sampled).sum(axis=3)
        start += height * width
    return out.reshape(bs, queries, heads * dim)


def problem(shapes, *, bs=2, queries=300, heads=8, dim=32, points=4, seed=0, spread=0.05):
    """Random value/weights; locations near random reference points (as the model samples), 10 % of them
    uniform over [-0.2, 1.2] so every border and the outside are hit."""
    generator = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(bs, keys, heads, dim, generator=generator)
    reference = torch.rand(bs, queries, 1, 1, 1, 2, generator=generator)
    offsets = torch.randn(bs, queries, heads, levels, points, 2, generator=generator) * spread
    locations = reference + offsets
    wild = torch.rand(bs, queries, heads, levels, points, 1, generator=generator) < 0.1
    uniform = torch.rand(bs, queries, heads, levels, points, 2, generator=generator) * 1.4 - 0.2
    locations = torch.where(wild, uniform, locations)
    weights = torch.rand(bs, queries, heads, levels, points, generator=generator)
    weights = (weights / weights.sum(dim=(-1, -2), keepdim=True)).contiguous()
    return value, torch.tensor(shapes, dtype=torch.long), locations.contiguous(), weights


def border_locations(shapes, bs=2, heads=8, points=4) -> torch.Tensor:
    """Every pair of special x/y coordinates on every level: <0, on the -1 / size pixel edges, exactly 0,
    pixel centres, exactly 1, >1. Queries enumerate the pairs; heads and points repeat them."""
    def specials(size: int) -> list[float]:
        return [-0.5, -1.0 / size, -0.5 / size, -0.25 / size, 0.0, 0.25 / size, 0.5 / size, 0.5,
                1 - 0.5 / size, 1.0, 1 + 0.25 / size, 1 + 0.5 / size, 1 + 1.0 / size, 1.5]

    levels = len(shapes)
    per_level = []
    for height, width in shapes:
        xs, ys = specials(width), specials(height)
        per_level.append(torch.tensor([(x, y) for x in xs for y in ys], dtype=torch.float32))
    queries = len(per_level[0])
    grid = torch.stack(per_level, dim=1)  # (queries, levels, 2)
    return grid[None, :, None, :, None, :].expand(bs, queries, heads, levels, points, 2).contiguous()


def assert_close(actual: torch.Tensor, expected, what: str) -> None:
    expected = torch.as_tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(actual.double(), expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{what}: {m}")


def run_op(value, shapes, locations, weights, isa="auto") -> torch.Tensor:
    with torch.inference_mode():
        return msda.msda_forward(value, shapes, None, locations, weights, isa=isa)


ISAS = ["auto", "baseline", "avx2", "avx512"]  # the kernel's variants; ones this CPU lacks are skipped


def needs_isa(isa: str) -> None:
    if isa != "auto" and isa not in torch.ops.codetr_ops.msda_isas():
        pytest.skip(f"this CPU cannot run the {isa} kernel")


# -- the op against mmcv and float64 ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(LEVEL_SHAPES))
def test_op_equals_mmcv_fallback_and_float64_on_co_dino_level_shapes(built_op, name):
    shapes = LEVEL_SHAPES[name]
    value, spatial, locations, weights = problem(shapes, seed=len(name))
    ours = run_op(value, spatial, locations, weights)
    assert ours.shape == (2, 300, 8 * 32) and ours.dtype == torch.float32
    with torch.inference_mode():
        theirs = mmcv_fallback()(value, spatial, locations, weights)
    assert_close(ours, theirs, f"{name} vs mmcv")
    assert_close(ours, naive_float64(value, shapes, locations, weights), f"{name} vs float64")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", ["odd_4_levels", "tiny_192x320_portrait", "degenerate_4_levels"])
def test_sampling_at_and_beyond_every_border(built_op, isa, name):
    needs_isa(isa)
    shapes = LEVEL_SHAPES[name]
    locations = border_locations(shapes)
    generator = torch.Generator().manual_seed(7)
    value = torch.randn(2, sum(h * w for h, w in shapes), 8, 32, generator=generator)
    weights = torch.rand(*locations.shape[:-1], generator=generator)
    spatial = torch.tensor(shapes)
    ours = run_op(value, spatial, locations, weights, isa=isa)
    expected = naive_float64(value, shapes, locations, weights)
    assert_close(ours, expected, f"{name}/{isa} vs float64")
    with torch.inference_mode():
        assert_close(ours, mmcv_fallback()(value, spatial, locations, weights), f"{name}/{isa} vs mmcv")
    # Not vacuous: the border grid really reaches zero-padding (some queries read nothing at all)...
    assert (np.abs(expected).max(axis=-1) == 0).any()
    # ...and a location outside the map contributes exactly nothing.
    outside = locations.clone()
    outside[..., 0] = 1.5
    assert run_op(value, spatial, outside, weights, isa=isa).abs().max() == 0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [8, 16, 24, 32, 64])
@pytest.mark.parametrize("levels, points", [(4, 4), (5, 4), (5, 2), (1, 1)])
def test_every_head_size_level_count_and_instruction_set(built_op, isa, dim, levels, points):
    needs_isa(isa)
    shapes = LEVEL_SHAPES["tiny_320x192"][:levels]
    value, spatial, locations, weights = problem(shapes, queries=64, heads=4, dim=dim, points=points,
                                                 seed=dim + levels)
    ours = run_op(value, spatial, locations, weights, isa=isa)
    assert_close(ours, naive_float64(value, shapes, locations, weights), f"dim {dim} {isa}")


def test_non_contiguous_inputs_and_explicit_level_start(built_op):
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, locations, weights = problem(shapes, queries=50)
    # The same tensors laid out differently in memory: the op must read them by their strides.
    value_t = value.transpose(0, 1).contiguous().transpose(0, 1)
    locations_t = locations.permute(1, 0, 2, 3, 4, 5).contiguous().permute(1, 0, 2, 3, 4, 5)
    assert not value_t.is_contiguous() and not locations_t.is_contiguous()
    starts = msda.level_start_index(spatial)
    assert starts.tolist() == [0, 36 * 24, 36 * 24 + 18 * 12, 36 * 24 + 18 * 12 + 9 * 6]
    with torch.inference_mode():
        ours = msda.msda_forward(value_t, spatial, starts, locations_t, weights)
    assert_close(ours, naive_float64(value, shapes, locations, weights), "strided inputs")


def test_bad_inputs_are_refused_with_a_reason(built_op):
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, locations, weights = problem(shapes, queries=10)
    op = torch.ops.codetr_ops.msda_forward
    starts = msda.level_start_index(spatial)
    with pytest.raises(RuntimeError, match="float32"):
        op(value.double(), spatial, starts, locations, weights)
    with pytest.raises(RuntimeError, match="does not fit"):
        op(value[:, :100], spatial, starts, locations, weights)
    with pytest.raises(RuntimeError, match="attention_weights"):
        op(value, spatial, starts, locations, weights[:, :, :, :, :2])
    with pytest.raises(RuntimeError, match="not available"):
        op(value, spatial, starts, locations, weights, "sse9")


def test_level_bounds_check_cannot_be_fooled_by_a_wrapping_product(built_op):
    """start + h*w computed in int64 wraps for huge shapes (2**62 x 4 -> 0): the op must still refuse it."""
    value = torch.randn(1, 10, 2, 8)
    locations = torch.full((1, 3, 2, 1, 2, 2), -5.0)  # outside: a wrongly accepted level reads nothing
    weights = torch.rand(1, 3, 2, 1, 2)
    op = torch.ops.codetr_ops.msda_forward
    for shape, start in (((2**62, 4), 0), ((2**32, 2**32), 0), ((3, 3), 2**63 - 5), ((1, 1), 10)):
        with pytest.raises(RuntimeError, match="does not fit"):
            op(value, torch.tensor([shape]), torch.tensor([start]), locations, weights)
    assert op(value, torch.tensor([[3, 3]]), torch.tensor([1]), locations, weights).abs().max() == 0


@pytest.mark.parametrize("isa", ISAS)
def test_non_finite_locations_and_weights_are_not_finite_like_mmcv(built_op, isa):
    """mmcv's CPU path turns a NaN/inf location or weight into NaN for that head (grid_sample's weights
    go NaN); returning 0 there would hide a numeric fault upstream."""
    needs_isa(isa)
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, locations, weights = problem(shapes, queries=12)
    bad = [(0, 0, 0, 0, 0, 0, float("nan")), (0, 3, 7, 3, 3, 1, float("inf")),
           (1, 5, 2, 1, 0, 0, -float("inf")), (1, 6, 4, 2, 2, 1, float("nan"))]
    for b, q, h, level, point, axis, number in bad:
        locations[b, q, h, level, point, axis] = number
    locations[1, 6, 4, 2, 2, 0] = 5.0  # outside on x and NaN on y: still NaN
    weights[0, 9, 1, 0, 0] = float("nan")
    weights[1, 10, 3, 2, 1] = float("inf")
    locations[0, 9, 1, 0, 0] = 3.0  # that NaN weight sits on a point outside the map
    with torch.inference_mode():
        ours = run_op(value, spatial, locations, weights, isa=isa).view(2, 12, 8, 32)
        theirs = mmcv_fallback()(value, spatial, locations, weights).view(2, 12, 8, 32)
    heads_bad = ~theirs.isfinite().all(-1)
    assert heads_bad.sum() == 6  # the six poisoned (batch, query, head) cells, nothing else
    assert torch.equal(~ours.isfinite().all(-1), heads_bad)
    assert torch.equal(ours.isnan().all(-1), heads_bad)  # NaN through the whole head
    assert_close(ours[~heads_bad], theirs[~heads_bad], "finite heads")


def test_load_time_self_check_covers_co_dino_head_size_on_every_kernel(built_op, monkeypatch):
    """A kernel that is wrong only on the unrolled head_dim-32 path (Co-DINO's) must fail the self-check."""
    real = torch.ops.codetr_ops.msda_forward
    calls = []

    def wrong_at_32(value, shapes, starts, locations, weights, isa="auto"):
        calls.append((int(value.shape[-1]), isa))
        out = real(value, shapes, starts, locations, weights, isa)
        return out + 1.0 if value.shape[-1] == 32 else out

    monkeypatch.setattr(torch.ops.codetr_ops, "msda_forward", wrong_at_32)
    with pytest.raises(RuntimeError, match="head_dim 32"):
        msda._self_check()
    monkeypatch.setattr(torch.ops.codetr_ops, "msda_forward", lambda *a: (calls.append(
        (int(a[0].shape[-1]), a[5] if len(a) > 5 else "auto")), real(*a))[1])
    calls.clear()
    msda._self_check()
    assert {(32, isa) for isa in torch.ops.codetr_ops.msda_isas()} <= set(calls)


def test_forward_only_refuses_autograd_and_the_dispatcher_leaves_training_to_mmcv(built_op,
                                                                                  restore_dispatch):
    shapes = LEVEL_SHAPES["odd_4_levels"]
    value, spatial, locations, weights = problem(shapes, queries=10)
    value.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        msda.msda_forward(value, spatial, None, locations, weights)
    assert msda.configure_cpu_msda("auto") == "op"
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    out = mmcv_msda.multi_scale_deformable_attn_pytorch(value, spatial, locations, weights)
    out.sum().backward()  # mmcv's differentiable path ran
    assert value.grad is not None and value.grad.abs().sum() > 0


# -- the dispatcher ---------------------------------------------------------------------------------------
def attention_module_and_inputs(seed=0):
    from mmcv.ops import MultiScaleDeformableAttention

    torch.manual_seed(seed)
    module = MultiScaleDeformableAttention(embed_dims=256, num_heads=8, num_levels=4, num_points=4,
                                           batch_first=True, dropout=0.0).eval()
    with torch.no_grad():  # mmcv's init gives zero attention weights: make them interesting
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    shapes = torch.tensor(LEVEL_SHAPES["odd_4_levels"])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    inputs = dict(query=torch.randn(2, 40, 256), value=torch.randn(2, keys, 256),
                  reference_points=torch.rand(2, 40, 4, 2), spatial_shapes=shapes,
                  level_start_index=msda.level_start_index(shapes))
    return module, inputs


def profiled_ops(module, inputs) -> tuple[torch.Tensor, set[str]]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.inference_mode(), torch.profiler.profile(activities=activities) as prof:
        out = module(**inputs)
    return out, {event.key for event in prof.key_averages()}


def test_dispatcher_picks_our_op_on_cpu_and_fallback_forces_mmcv(built_op, restore_dispatch):
    module, inputs = attention_module_and_inputs()

    assert msda.configure_cpu_msda("fallback") == "fallback" and msda.active_path() == "fallback"
    expected, names = profiled_ops(module, inputs)
    assert "aten::grid_sampler_2d" in names and "codetr_ops::msda_forward" not in names

    # fused=False: mmcv's module forward around the plain op (the fused forward has its own tests)
    assert msda.configure_cpu_msda("auto", fused=False) == "op" and msda.active_path() == "op"
    ours, names = profiled_ops(module, inputs)
    assert "codetr_ops::msda_forward" in names and "aten::grid_sampler_2d" not in names
    torch.testing.assert_close(ours, expected, atol=ATOL, rtol=RTOL)

    # Idempotent: configuring twice wraps mmcv's function once, and "fallback" restores the very original.
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    first = mmcv_msda.multi_scale_deformable_attn_pytorch
    assert msda.configure_cpu_msda("auto") == "op"
    assert mmcv_msda.multi_scale_deformable_attn_pytorch is first
    original = first._codetr_original
    assert not hasattr(original, "_codetr_original") and original.__module__ == mmcv_msda.__name__
    msda.configure_cpu_msda("fallback")
    assert mmcv_msda.multi_scale_deformable_attn_pytorch is original


def test_dispatcher_leaves_non_float32_to_mmcv(built_op, restore_dispatch):
    module, inputs = attention_module_and_inputs()
    module = module.double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    msda.configure_cpu_msda("auto")
    _, names = profiled_ops(module, inputs)
    assert "aten::grid_sampler_2d" in names and "codetr_ops::msda_forward" not in names


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="auto"):
        msda.configure_cpu_msda("fast")


def test_cpu_msda_setting_is_validated():
    from codetr_serve.runtime.settings import SettingsError, build_settings

    assert build_settings(None, model_dir="/m", device="cpu").cpu_msda == "auto"
    assert build_settings({"cpu_msda": "fallback"}, model_dir="/m", device="cpu").cpu_msda == "fallback"
    with pytest.raises(SettingsError, match="cpu_msda must be auto or fallback"):
        build_settings({"cpu_msda": "on"}, model_dir="/m", device="cpu")


_MISSING_LIBRARY_PROBE = textwrap.dedent(
    """
    import json, logging
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))
    logging.getLogger("codetr_serve").addHandler(Keep())
    logging.getLogger("codetr_serve").setLevel(logging.INFO)
    from codetr_serve.ops import msda
    first = msda.configure_cpu_msda("auto")
    import mmcv.ops.multi_scale_deform_attn as m
    print(json.dumps({"path": first, "active": msda.active_path(), "records": records,
                      "wrapped": hasattr(m.multi_scale_deformable_attn_pytorch, "_codetr_original")}))
    """
)


@pytest.mark.parametrize("library", ["missing", "broken"])
def test_missing_or_broken_library_falls_back_with_one_log_line(tmp_path, library):
    if library == "broken":
        (tmp_path / "codetr_ops.so").write_bytes(b"\x7fELF not really a library")
    completed = subprocess.run([sys.executable, "-c", _MISSING_LIBRARY_PROBE], cwd=REPO, capture_output=True,
                               text=True, timeout=300, check=False,
                               env={"CODETR_OPS_DIR": str(tmp_path), "PATH": "/usr/bin"})
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["path"] == report["active"] == "fallback" and not report["wrapped"]
    assert len(report["records"]) == 1, report["records"]
    level, message = report["records"][0]
    assert level == "WARNING" and "mmcv's slower pure-PyTorch path" in message
    assert ("build_ops" in message) if library == "missing" else ("failed to load" in message)


# -- end to end: the tiny model and the serving core ------------------------------------------------------
def tiny_model_predictions(model, indices=(0, 1)):
    from tests.unit.test_tiny_model import make_inputs, make_samples

    with torch.inference_mode():
        return model.predict(make_inputs(list(indices)), make_samples(list(indices)), rescale=True)


def assert_same_detections(ours, theirs) -> None:
    for a, b in zip(ours, theirs, strict=True):
        a, b = a.pred_instances, b.pred_instances
        assert len(a.scores) == len(b.scores) > 0
        np.testing.assert_allclose(a.scores.numpy(), b.scores.numpy(), atol=1e-4)
        np.testing.assert_array_equal(a.labels.numpy(), b.labels.numpy())
        np.testing.assert_allclose(a.bboxes.numpy(), b.bboxes.numpy(), atol=0.01)


def test_tiny_model_detections_unchanged_with_the_op(built_op, restore_dispatch):
    from mmengine.config import Config

    from tests.unit.test_tiny_model import TINY, build

    model = build(Config.fromfile(str(TINY)))
    msda.configure_cpu_msda("fallback")
    reference = tiny_model_predictions(model)
    msda.configure_cpu_msda("auto")
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ours = tiny_model_predictions(model)
    calls = {e.key: e.count for e in prof.key_averages()}
    # encoder and decoder layers used the op (fused with mmcv's forward by default)
    assert calls.get("codetr_ops::msda_fused_forward", 0) + calls.get("codetr_ops::msda_forward", 0) >= 2
    assert "aten::grid_sampler_2d" not in calls
    assert_same_detections(ours, reference)


def test_serving_core_setting_selects_the_path(built_op, restore_dispatch, tiny_model_dir):
    from codetr_serve.runtime.core import DetectorCore
    from codetr_serve.runtime.settings import build_settings
    from tests.conftest import encode_image

    image = {"body": encode_image(320, 240, seed=3)}
    replies = {}
    for mode in ("fallback", "auto"):
        settings = build_settings({"score_threshold": 0.0, "warmup_runs": 0, "max_detections": 300,
                                   "cpu_msda": mode}, model_dir=tiny_model_dir, device="cpu")
        core = DetectorCore(settings)
        core.setup()
        assert core.cpu_msda_path == ("op" if mode == "auto" else "fallback")
        assert msda.active_path() == core.cpu_msda_path
        [reply] = core.handle([image])
        assert reply.status == 200
        replies[mode] = reply.body["detections"]
    ours, theirs = replies["auto"], replies["fallback"]
    assert len(ours) == len(theirs) > 0
    np.testing.assert_allclose([d["score"] for d in ours], [d["score"] for d in theirs], atol=1e-4)
    boxes = [[[d["box"][k] for k in ("x1", "y1", "x2", "y2")] for d in r] for r in (ours, theirs)]
    np.testing.assert_allclose(boxes[0], boxes[1], atol=0.01)


def test_a_working_op_logs_one_info_line(built_op, restore_dispatch, caplog):
    """A working op logs one INFO line, no warning."""
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda

    mmcv_msda.multi_scale_deformable_attn_pytorch = mmcv_fallback()
    with caplog.at_level(logging.INFO, logger="codetr_serve.ops.msda"):
        assert msda.configure_cpu_msda("auto") == "op"
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "compiled op" in caplog.records[0].getMessage()
