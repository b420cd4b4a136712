"""The transformer's linear layers on CPU through oneDNN instead of the default BLAS call.

On CPU, `F.linear` goes to MKL's sgemm, which on the AMD EPYC of our machines ran the encoder's FFN shape
(89,023 x 256 -> 2048) about 1.45x slower than oneDNN's matmul (`python -m bench.cpu` measures it; both are
FP32, results differ by summation order only). The linear layers are about half of a Co-DINO CPU forward.
oneDNN's primitive also applies the FFN's ReLU in the same pass over the hidden activations.

`install()` swaps mmcv's FFN.forward for a dispatcher (CPU float32 inference of a two-layer ReLU FFN in eval
mode -> oneDNN, anything else -> mmcv's own forward) and makes `linear()` use oneDNN; `uninstall()` restores
both. `configure_cpu_msda` in `msda.py` drives it together with the deformable-attention op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ORIGINAL_ATTR = "_codetr_original"
_enabled = False


def supported() -> bool:
    """oneDNN is built into this torch and exposes the fused linear primitive."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def linear(x: torch.Tensor, layer: nn.Linear, relu: bool = False) -> torch.Tensor:
    """`layer(x)` (then ReLU when `relu`), through oneDNN while installed and the inputs allow it."""
    if _enabled and _plain_cpu_float(x, layer):
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "relu" if relu else "none",
                                                  [], "")
    out = F.linear(x, layer.weight, layer.bias)
    return out.relu_() if relu else out


def exporting() -> bool:
    """Tracing, ONNX export or torch.compile: exporters and compilers must see mmcv's plain graph."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _plain_cpu_float(x: torch.Tensor, layer: nn.Module) -> bool:
    if exporting():
        return False
    tensors = (x, *layer.parameters())
    if any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _ffn_layers(ffn) -> tuple[nn.Linear, nn.Linear] | None:
    """(first, second) linear of mmcv's FFN when it is Linear-ReLU-Dropout, Linear, Dropout; else None."""
    layers = ffn.layers
    if ffn.training or getattr(ffn, "num_fcs", 0) != 2 or len(layers) != 3:
        return None
    first = layers[0]
    if not (isinstance(first, nn.Sequential) and len(first) == 3 and isinstance(first[0], nn.Linear)
            and isinstance(first[1], nn.ReLU) and isinstance(layers[1], nn.Linear)):
        return None
    return first[0], layers[1]


def _ffn_class():
    from mmcv.cnn.bricks.transformer import FFN

    return FFN


def _make_forward(original):
    def forward(self, x, identity=None):
        pair = _ffn_layers(self)
        if pair is None or not _plain_cpu_float(x, self):
            return original(self, x, identity)
        # Dropouts are identities in eval mode (checked by _ffn_layers through self.training).
        out = linear(linear(x, pair[0], relu=True), pair[1])
        if not self.add_identity:
            return self.dropout_layer(out)
        return (x if identity is None else identity) + self.dropout_layer(out)

    forward.__doc__ = ("codetr_serve dispatcher: CPU float32 inference -> oneDNN linears, "
                       "else mmcv's FFN.forward.")
    setattr(forward, _ORIGINAL_ATTR, original)
    return forward


def installed() -> bool:
    return _enabled


def install() -> bool:
    """Use oneDNN for the FFNs and `linear()` (idempotent); False when this torch cannot."""
    global _enabled
    if not supported():
        uninstall()
        return False
    ffn = _ffn_class()
    if not hasattr(ffn.forward, _ORIGINAL_ATTR):
        ffn.forward = _make_forward(ffn.forward)
    _enabled = True
    return True


def uninstall() -> None:
    global _enabled
    ffn = _ffn_class()
    ffn.forward = getattr(ffn.forward, _ORIGINAL_ATTR, ffn.forward)
    _enabled = False
