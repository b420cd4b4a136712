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
