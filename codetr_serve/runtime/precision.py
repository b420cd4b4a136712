"""Mixed precision for CUDA workers.

Multi-scale deformable attention samples features at fractional locations and sums many small products;
in FP16 that loses detections, so those modules run in FP32 inside an otherwise FP16 forward. So does box
decoding: FP16 has an 11-bit mantissa, so a sigmoid box coordinate scaled to a 2048-pixel image would be
off by up to a pixel; the head's last regression step (`layer_outputs`) and its post-processing
(`predict_by_feat`: top-k, cxcywh -> xyxy, rescale, NMS) run in FP32 as well.
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
    """Floating tensors to FP32, also inside lists and tuples (per-layer outputs); anything else as is."""
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    if isinstance(value, list | tuple) and any(isinstance(item, torch.Tensor) for item in value):
        return type(value)(_to_fp32(item) for item in value)
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


# Methods of a detection head that turn its outputs into boxes: the last regression step and the
# post-processing. A module that has none of them is left alone.
DECODING_METHODS = ("layer_outputs", "predict_by_feat")


def keep_decoding_in_fp32(model: nn.Module) -> int:
    """Make every head's box-decoding methods in `model` run in FP32 under autocast; returns the count."""
    count = 0
    for module in model.modules():
        for name in DECODING_METHODS:
            marker = f"_codetr_fp32_{name}"
            if callable(getattr(type(module), name, None)) and not getattr(module, marker, False):
                setattr(module, name, _fp32_forward(getattr(module, name), module))
                setattr(module, marker, True)
                count += 1
    return count


def deformable_attention_types() -> tuple[type, ...]:
    """The module classes that must stay FP32 (mmcv's, and any subclass our model registers)."""
    from mmcv.ops import MultiScaleDeformableAttention

    return (MultiScaleDeformableAttention,)


# Device types a `fp16: true` setting turns FP16 autocast on for. Only CUDA: on CPUs FP16 matmuls are
# slower than FP32. (A test widens it to "cpu" to run the CUDA precision path without a GPU.)
FP16_DEVICE_TYPES: tuple[str, ...] = ("cuda",)


@contextlib.contextmanager
def inference_precision(device: str, fp16: bool) -> Iterator[None]:
    """inference_mode, plus FP16 autocast on CUDA when asked for."""
    device_type = torch.device(device).type
    with torch.inference_mode():
        if fp16 and device_type in FP16_DEVICE_TYPES:
            with torch.autocast(device_type=device_type, dtype=torch.float16):
                yield
        else:
            yield


def configure_cuda(cudnn_benchmark: bool, tf32: bool) -> None:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
