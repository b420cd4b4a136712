"""Mixed precision: deformable attention stays FP32 inside autocast (checked with CPU bf16 autocast)."""

from __future__ import annotations

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from torch import nn

from codetr_serve.runtime.precision import deformable_attention_types, inference_precision, keep_in_fp32


class Recorder(nn.Module):
    """Records the dtype its matmul runs in, like any autocast-eligible op would."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        self.seen.append(out.dtype)
        return out


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 4)
        self.attention = Recorder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.head(x))


def test_wrapped_modules_run_fp32_under_autocast_and_others_do_not():
    model = Outer()
    x = torch.randn(2, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert model.attention.seen == [torch.bfloat16]  # without the wrapper autocast applies

    assert keep_in_fp32(model, (Recorder,)) == 1
    assert keep_in_fp32(model, (Recorder,)) == 0  # idempotent
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.head(x)
        out = model.attention(hidden)
    assert hidden.dtype == torch.bfloat16
    assert model.attention.seen[-1] == torch.float32
    assert out.dtype == torch.float32


def test_mmcv_deformable_attention_is_the_kept_type():
    assert MultiScaleDeformableAttention in deformable_attention_types()


def test_inference_precision_is_inference_mode_and_fp32_on_cpu():
    layer = nn.Linear(3, 3)
    with inference_precision("cpu", fp16=True):  # fp16 is a CUDA-only switch
        out = layer(torch.randn(1, 3))
        assert torch.is_inference_mode_enabled()
    assert out.dtype == torch.float32


def test_the_switch_follows_the_tensors_device_not_the_host(monkeypatch):
    # On a CUDA host a CPU model still runs under CPU autocast: the wrapper must switch that one off.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model = Outer()
    keep_in_fp32(model, (Recorder,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.attention(model.head(torch.randn(2, 4)))
    assert model.attention.seen == [torch.float32]
    assert out.dtype == torch.float32


class KeywordOnly(nn.Module):
    """Called without positional tensors: the device comes from a keyword tensor or the parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, query: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(torch.ones(1, 4) if query is None else query)


def test_keyword_and_parameter_only_calls_are_kept_fp32_too(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    module = KeywordOnly()
    keep_in_fp32(module, (KeywordOnly,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert module(query=torch.randn(2, 4).bfloat16()).dtype == torch.float32
        assert module().dtype == torch.float32


# ---- the CUDA FP16 path, run on the CPU -------------------------------------------------------------------
# CPU autocast does FP16 too; widening FP16_DEVICE_TYPES to "cpu" (the CUDA-free fake) runs exactly what a
# CUDA worker with `fp16: true` runs: inference_precision's autocast around the tiny Co-DINO, with the
# modules and methods DetectorCore.setup keeps in FP32.

@pytest.fixture
def mmcv_forwards():
    """mmcv's own deformable-attention forward for one test: a core set up by an earlier test leaves ours
    (the fused CPU path) installed, which never calls the function the FP16 test records."""
    from codetr_serve.ops import msda

    before = msda._requested_mode
    msda.configure_cpu_msda("fallback")
    yield
    msda.configure_cpu_msda(before)


@pytest.mark.usefixtures("mmcv_forwards")
def test_fp16_forward_keeps_deformable_attention_and_box_decoding_in_fp32(monkeypatch):
    import mmcv.ops.multi_scale_deform_attn as msda_module
    from mmengine.config import Config

    from codetr_serve.models import co_dino_head
    from codetr_serve.runtime import precision
    from codetr_serve.runtime.precision import keep_decoding_in_fp32
    from tests.unit.test_tiny_model import TINY, build, make_inputs, make_samples

    seen: dict[str, list] = {"msda": [], "decode": [], "linear": []}
    original_msda = msda_module.multi_scale_deformable_attn_pytorch
    original_decode = co_dino_head.to_image_boxes

    def recording_msda(value, shapes, locations, weights):
        seen["msda"].append((value.dtype, locations.dtype, torch.is_autocast_enabled("cpu")))
        return original_msda(value, shapes, locations, weights)

    def recording_decode(boxes, *args, **kwargs):
        seen["decode"].append((boxes.dtype, torch.is_autocast_enabled("cpu")))
        return original_decode(boxes, *args, **kwargs)

    monkeypatch.setattr(msda_module, "multi_scale_deformable_attn_pytorch", recording_msda)
    monkeypatch.setattr(co_dino_head, "to_image_boxes", recording_decode)
    monkeypatch.setattr(precision, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    model = build(Config.fromfile(str(TINY)))
    model.backbone.register_forward_hook(lambda _m, _i, out: seen["linear"].append(out[0].dtype))
    assert keep_in_fp32(model, deformable_attention_types()) > 0
    assert keep_decoding_in_fp32(model) >= 2  # the aux heads (built, unused at test time) have decoders too
    assert model.query_head._codetr_fp32_layer_outputs and model.query_head._codetr_fp32_predict_by_feat
    assert keep_decoding_in_fp32(model) == 0  # idempotent
    with inference_precision("cpu", fp16=True):
        [result] = model.predict(make_inputs([0]), make_samples([0]), rescale=True)
    assert seen["linear"] == [torch.float16]  # autocast really was on around the rest of the model
    assert seen["msda"] and set(seen["msda"]) == {(torch.float32, torch.float32, False)}
    assert seen["decode"] == [(torch.float32, False)]
    assert result.pred_instances.bboxes.dtype == torch.float32
    assert result.pred_instances.scores.dtype == torch.float32


def test_fp16_is_not_switched_on_for_cpu_workers():
    with inference_precision("cpu", fp16=True):
        assert not torch.is_autocast_enabled("cpu")
    with inference_precision("cuda:0", fp16=False):  # no CUDA needed: autocast is not entered
        assert not torch.is_autocast_enabled("cuda")
