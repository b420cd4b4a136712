"""The transformer's linear layers on CPU through oneDNN instead of the default BLAS call.

On CPU, `F.linear` goes to MKL's sgemm, which on the AMD EPYC of our machines ran the encoder's FFN shape
(89,023 x 256 -> 2048) about 1.45x slower than oneDNN's matmul (`python -m bench.cpu` measures it; both are
FP32, results differ by summation order only). The linear layers are about half of a Co-DINO CPU forward.
oneDNN's primitive also applies the FFN's activation (ReLU in the transformer, exact GELU in the Swin
backbone) in the same pass over the hidden activations.

`install()` swaps mmcv's FFN.forward for a dispatcher (CPU float32 inference of a two-layer ReLU or GELU
FFN in eval mode -> oneDNN, anything else -> mmcv's own forward) and makes `linear()` use oneDNN;
`uninstall()` restores both. `configure_cpu_msda` in `msda.py` drives it together with the
deformable-attention op. `adopt(model)` routes a built model's plain `nn.Linear` layers (the Swin
backbone's attention projections, the heads' branches) through `linear()` as well, so the switch covers them.
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


# The activations `linear()` applies after the product, as torch computes them off the oneDNN path.
_ACTIVATIONS = {"none": lambda t: t, "relu": torch.relu_, "gelu": F.gelu}


def linear(x: torch.Tensor, layer: nn.Linear, activation: str = "none") -> torch.Tensor:
    """`layer(x)`, then `activation` ("none", "relu" or "gelu": exact, erf-based), through oneDNN while
    installed and the inputs allow it."""
    apply = _ACTIVATIONS[activation]
    if _enabled and _plain_cpu_float(x, layer):
        # oneDNN's GELU post-op takes its algorithm as the last argument: "none" is the exact (erf) form.
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, activation, [],
                                                  "none" if activation == "gelu" else "")
    return apply(F.linear(x, layer.weight, layer.bias))


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


def _ffn_layers(ffn) -> tuple[nn.Linear, str, nn.Linear] | None:
    """(first linear, its activation, second linear) of mmcv's FFN when it is Linear-ReLU-Dropout or
    Linear-GELU-Dropout (exact GELU), Linear, Dropout; else None."""
    layers = ffn.layers
    if ffn.training or getattr(ffn, "num_fcs", 0) != 2 or len(layers) != 3:
        return None
    first = layers[0]
    if not (isinstance(first, nn.Sequential) and len(first) == 3 and isinstance(first[0], nn.Linear)
            and isinstance(layers[1], nn.Linear)):
        return None
    act = first[1]
    if isinstance(act, nn.ReLU):
        return first[0], "relu", layers[1]
    if type(act) is nn.GELU and act.approximate == "none":
        return first[0], "gelu", layers[1]
    return None


def _ffn_class():
    from mmcv.cnn.bricks.transformer import FFN

    return FFN


def _make_forward(original):
    def forward(self, x, identity=None):
        pair = _ffn_layers(self)
        if pair is None or not _plain_cpu_float(x, self):
            return original(self, x, identity)
        # Dropouts are identities in eval mode (checked by _ffn_layers through self.training).
        first, activation, second = pair
        out = linear(linear(x, first, activation=activation), second)
        if not self.add_identity:
            return self.dropout_layer(out)
        return (x if identity is None else identity) + self.dropout_layer(out)

    forward.__doc__ = ("codetr_serve dispatcher: CPU float32 inference -> oneDNN linears, "
                       "else mmcv's FFN.forward.")
    setattr(forward, _ORIGINAL_ATTR, original)
    return forward


class DispatchingLinear(nn.Linear):
    """An `nn.Linear` whose forward is `linear()`: oneDNN while installed, `F.linear` otherwise.

    Same parameters and state-dict keys as `nn.Linear`; `adopt` turns existing layers into it in place.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self)


def adopt(model: nn.Module) -> int:
    """Make every plain `nn.Linear` in `model` a `DispatchingLinear` (in place); returns how many.

    Subclasses are left alone: `nn.MultiheadAttention`'s output projection is one, and its owner reads the
    weights without calling the layer.
    """
    layers = [m for m in model.modules() if type(m) is nn.Linear]
    for layer in layers:
        layer.__class__ = DispatchingLinear
    return len(layers)


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
