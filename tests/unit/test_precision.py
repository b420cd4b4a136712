"""Mixed precision: deformable attention stays FP32 inside autocast (checked with CPU bf16 autocast)."""

from __future__ import annotations

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
