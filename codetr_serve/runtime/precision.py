"""Mixed precision for CUDA workers.

Multi-scale deformable attention samples features at fractional locations and sums many small products;
in FP16 that loses detections, so those modules run in FP32 inside an otherwise FP16 forward.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn


def _fp32_forward(forward, module: nn.Module):
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        # Autocast is per device type: switch off the one the inputs run on (a CPU model on a CUDA host
        # runs under CPU autocast, which a "cuda" switch would leave on).
        device_type = _device_type(args, kwargs, module)
        with torch.autocast(device_type=device_type, enabled=False):
            args = tuple(_to_fp32(a) for a in args)
            kwargs = {k: _to_fp32(v) for k, v in kwargs.items()}
            return forward(*args, **kwargs)
    return wrapped


def _device_type(args: tuple, kwargs: dict, module: nn.Module) -> str:
    """The device type of the first tensor argument, else of the module's parameters, else "cpu"."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device.type
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device.type
    return "cpu"


def _to_fp32(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    return value


def keep_in_fp32(model: nn.Module, module_types: tuple[type, ...]) -> int:
    """Make every module of `module_types` inside `model` run in FP32 under autocast; returns the count."""
    count = 0
    for module in model.modules():
        if isinstance(module, module_types) and not getattr(module, "_codetr_fp32", False):
            module.forward = _fp32_forward(module.forward, module)
            module._codetr_fp32 = True
            count += 1
    return count


def deformable_attention_types() -> tuple[type, ...]:
    """The module classes that must stay FP32 (mmcv's, and any subclass our model registers)."""
    from mmcv.ops import MultiScaleDeformableAttention

    return (MultiScaleDeformableAttention,)


@contextlib.contextmanager
def inference_precision(device: str, fp16: bool) -> Iterator[None]:
    """inference_mode, plus FP16 autocast on CUDA when asked for."""
    with torch.inference_mode():
        if fp16 and device.startswith("cuda"):
            with torch.autocast(device_type="cuda", dtype=torch.float16):
                yield
        else:
            yield


def configure_cuda(cudnn_benchmark: bool, tf32: bool) -> None:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
