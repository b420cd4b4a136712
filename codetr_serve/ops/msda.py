"""Multi-scale deformable attention on CPU with our compiled op, and the switch that makes mmcv use it.

mmcv 2.1.0 has no CPU kernel for MultiScaleDeformableAttention: on CPU its module calls the module-level
function `mmcv.ops.multi_scale_deform_attn.multi_scale_deformable_attn_pytorch` (grid_sample per level,
stack, mul, sum), about 70 % of a Co-DINO CPU forward. `codetr_serve/ops/csrc/msda_cpu.cpp` computes the
same thing in one parallel pass. It is compiled ahead of time by `python -m codetr_serve.tools.build_ops`
(at `make setup` or image build time) into `ops_dir()`; this module only loads that library and never
compiles: a JIT build inside a worker takes about a minute and a killed one leaves a lock that hangs every
later load.

`configure_cpu_msda("auto")` replaces that module-level function with a dispatcher: CPU float32 tensors
without autograd go to our op, everything else (CUDA, fp16, training) to mmcv's original function. It is
idempotent and `configure_cpu_msda("fallback")` restores mmcv's own function. When the library is missing
or broken the dispatcher is not installed and ONE log line says why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from codetr_serve.ops import fused_attention, onednn_linear

log = logging.getLogger(__name__)

LIBRARY_NAME = "codetr_ops"
LIBRARY_FILE = f"{LIBRARY_NAME}.so"
BUILD_INFO_FILE = "build.json"
SOURCE_FILE = Path(__file__).with_name("csrc") / "msda_cpu.cpp"
MODES = ("auto", "fallback")
BUILD_COMMAND = "python -m codetr_serve.tools.build_ops"


def ops_dir() -> Path:
    """Where the prebuilt library lives: $CODETR_OPS_DIR, else <sys.prefix>/lib/codetr_serve_ops."""
    override = os.environ.get("CODETR_OPS_DIR")
    return Path(override) if override else Path(sys.prefix) / "lib" / "codetr_serve_ops"


def library_path() -> Path:
    return ops_dir() / LIBRARY_FILE


def source_digest() -> str:
    """sha256 over the op's C++ sources (the .cpp and the headers it includes), in name order."""
    digest = hashlib.sha256()
    for path in sorted(SOURCE_FILE.parent.glob("*.[ch]*")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class OpStatus:
    """Whether our CPU op can be used in this process, and why not when it cannot."""

    available: bool
    reason: str               # "" when available
    path: Path
    isa: str = ""             # the instruction set the kernel picked (avx512, avx2, baseline)
    stale: bool = False       # built from another msda_cpu.cpp than the one installed next to this file

    def describe(self) -> str:
        if not self.available:
            return f"unavailable: {self.reason}"
        extra = " (STALE: built from an older msda_cpu.cpp; rebuild with " + BUILD_COMMAND + ")" \
            if self.stale else ""
        return f"compiled op {self.path} ({self.isa}){extra}"


_lock = threading.Lock()
_status: OpStatus | None = None


def load_op(retry: bool = False) -> OpStatus:
    """Load the prebuilt library once per process (cached); never compiles.

    `retry` tries again after an earlier failure (e.g. once the build tool has run); a library that did
    load stays loaded for the life of the process.
    """
    global _status
    with _lock:
        if _status is None or (retry and not _status.available):
            _status = _load()
        return _status


def _load() -> OpStatus:
    path = library_path()
    if hasattr(torch.ops, LIBRARY_NAME) and _has_op():
        # Already registered in this process (e.g. by the build tool): use it as is.
        return OpStatus(True, "", path, isa=str(torch.ops.codetr_ops.msda_isa()))
    if not path.is_file():
        return OpStatus(False, f"{path} not found (build it with `{BUILD_COMMAND}`)", path)
    info = _read_build_info(path.parent)
    built_for = info.get("torch")
    if built_for and built_for != torch.__version__:
        return OpStatus(False, f"{path} was built for torch {built_for}, this is torch {torch.__version__} "
                               f"(rebuild with `{BUILD_COMMAND}`)", path)
    try:
        torch.ops.load_library(str(path))
    except Exception as error:  # noqa: BLE001 - any load failure means "use mmcv's path"
        return OpStatus(False, f"{path} failed to load: {error!r}", path)
    if not _has_op():
        return OpStatus(False, f"{path} loaded but registers no codetr_ops::msda_forward", path)
    try:
        _self_check()
    except Exception as error:  # noqa: BLE001
        return OpStatus(False, f"{path} failed its self-check: {error}", path)
    stale = bool(info.get("source_sha256")) and SOURCE_FILE.is_file() \
        and info["source_sha256"] != source_digest()
    return OpStatus(True, "", path, isa=str(torch.ops.codetr_ops.msda_isa()), stale=stale)


def _has_op() -> bool:
    try:
        torch.ops.codetr_ops.msda_forward  # noqa: B018 - attribute lookup raises when not registered
    except (AttributeError, RuntimeError):
        return False
    return True


def _read_build_info(directory: Path) -> dict:
    try:
        return json.loads((directory / BUILD_INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


# (head_dim, heads) of the self-check problems: 8 runs the generic loop, 32 the unrolled vector loop that
# Co-DINO's 256 channels / 8 heads use.
SELF_CHECK_HEADS = ((8, 2), (32, 8))


def _self_check() -> None:
    """A few milliseconds: on every kernel this CPU has, the op must agree with mmcv's formula on small random
    problems with a generic head size and Co-DINO's (32)."""
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor([[5, 3], [2, 2]], dtype=torch.long)
    starts = torch.tensor([0, 15], dtype=torch.long)
    for dim, heads in SELF_CHECK_HEADS:
        value = torch.randn(2, 19, heads, dim, generator=generator)
        locations = torch.rand(2, 7, heads, 2, 3, 2, generator=generator) * 1.4 - 0.2
        weights = torch.rand(2, 7, heads, 2, 3, generator=generator)
        reference = reference_msda(value.double(), shapes, locations.double(), weights.double()).float()
        for isa in torch.ops.codetr_ops.msda_isas():
            with torch.no_grad():
                ours = torch.ops.codetr_ops.msda_forward(value, shapes, starts, locations, weights, isa)
            if not torch.allclose(ours, reference, atol=1e-4, rtol=1e-4):
                error = (ours - reference).abs().max().item()
                raise RuntimeError(f"head_dim {dim}, {isa} kernel: max abs difference {error:.3g} "
                                   "from the reference")


def reference_msda(value: torch.Tensor, spatial_shapes: torch.Tensor, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """mmcv's formula (grid_sample, align_corners=False, zero padding) in whatever dtype it gets."""
    import torch.nn.functional as F

    bs, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    sizes = [int(h) * int(w) for h, w in spatial_shapes.tolist()]
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (value_l, (h, w)) in enumerate(zip(value.split(sizes, dim=1), spatial_shapes.tolist(),
                                                  strict=True)):
        maps = value_l.flatten(2).transpose(1, 2).reshape(bs * heads, dim, int(h), int(w))
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    weights = attention_weights.transpose(1, 2).reshape(bs * heads, 1, queries, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * weights).sum(-1).view(bs, heads * dim, queries)
    return out.transpose(1, 2).contiguous()


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def cpu_msda_available() -> bool:
    return load_op().available


def msda_forward(value: torch.Tensor, spatial_shapes: torch.Tensor, level_start: torch.Tensor | None,
                 sampling_locations: torch.Tensor, attention_weights: torch.Tensor,
                 isa: str = "auto") -> torch.Tensor:
    """Our op, forward only. Arguments as mmcv's CUDA function (`level_start` None = computed)."""
    status = load_op()
    if not status.available:
        raise RuntimeError(f"codetr_ops CPU deformable attention is {status.describe()}")
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in (value, sampling_locations, attention_weights)):
        raise RuntimeError("codetr_ops::msda_forward is forward-only (inference); it has no backward. "
                           "Run under torch.inference_mode()/no_grad(), or use mmcv's "
                           "multi_scale_deformable_attn_pytorch for training")
    spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long)
    if level_start is None:
        level_start = level_start_index(spatial_shapes)
    return torch.ops.codetr_ops.msda_forward(value, spatial_shapes, level_start, sampling_locations,
                                             attention_weights, isa)


# -- mmcv dispatch ---------------------------------------------------------------------------------------
_ORIGINAL_ATTR = "_codetr_original"


def _mmcv_module():
    import mmcv.ops.multi_scale_deform_attn as module

    return module


def _original_fallback():
    """mmcv's own function, whether or not our dispatcher currently wraps it."""
    current = _mmcv_module().multi_scale_deformable_attn_pytorch
    return getattr(current, _ORIGINAL_ATTR, current)


def _use_op(value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor) -> bool:
    tensors = (value, sampling_locations, attention_weights)
    if onednn_linear.exporting() or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return False  # exporters and compilers get mmcv's plain graph
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


def _make_dispatcher(original):
    def multi_scale_deformable_attn_pytorch(value, value_spatial_shapes, sampling_locations,
                                            attention_weights):
        if _use_op(value, sampling_locations, attention_weights):
            shapes = torch.as_tensor(value_spatial_shapes, dtype=torch.long)
            return torch.ops.codetr_ops.msda_forward(value, shapes, level_start_index(shapes),
                                                     sampling_locations, attention_weights, "auto")
        return original(value, value_spatial_shapes, sampling_locations, attention_weights)

    multi_scale_deformable_attn_pytorch.__doc__ = (
        "codetr_serve dispatcher: CPU float32 inference -> codetr_ops::msda_forward, else mmcv's function.")
    setattr(multi_scale_deformable_attn_pytorch, _ORIGINAL_ATTR, original)
    return multi_scale_deformable_attn_pytorch


def active_path() -> str:
    """'op' when mmcv's CPU fallback currently routes to our op, else 'fallback'."""
    current = _mmcv_module().multi_scale_deformable_attn_pytorch
    return "op" if hasattr(current, _ORIGINAL_ATTR) else "fallback"


@dataclass(frozen=True)
class ServingPath:
    """Which deformable-attention code a loaded model runs, and what the settings asked for."""

    path: str       # "op" (our compiled CPU op), "fallback" (mmcv's pure-PyTorch code), "mmcv_cuda"
    requested: str  # the cpu_msda setting: "auto" or "fallback"
    detail: str

    @property
    def unexpected(self) -> bool:
        """True when a CPU worker runs mmcv's slow path although nobody configured it."""
        return self.path == "fallback" and self.requested == "auto"


_requested_mode = "auto"
_serving: ServingPath | None = None


def report_serving_path(device: str | torch.device) -> ServingPath:
    """Record and log (one line) the path a model just placed on `device` runs; see `serving_path`."""
    global _serving
    if torch.device(device).type != "cpu":
        found = ServingPath("mmcv_cuda", _requested_mode, f"mmcv's kernel for {device}")
    elif active_path() == "op":
        how = "fused with the location arithmetic" if fused_attention.installed() \
            else "mmcv's forward around it"
        how += ", oneDNN linear layers" if onednn_linear.installed() else ""
        found = ServingPath("op", _requested_mode, f"{load_op().describe()}, {how}")
    else:
        why = "as configured (cpu_msda: fallback)" if _requested_mode == "fallback" \
            else f"compiled op {load_op().describe()}"
        found = ServingPath("fallback", _requested_mode, f"mmcv's pure-PyTorch code, {why}")
    _serving = found
    log.log(logging.WARNING if found.unexpected else logging.INFO,
            "deformable attention path: %s (cpu_msda: %s): %s", found.path, found.requested, found.detail)
    return found


def serving_path() -> ServingPath | None:
    """What `report_serving_path` last recorded in this process (None before a model was loaded)."""
    return _serving


def configure_cpu_msda(mode: str = "auto", fused: bool = True, onednn: bool = True) -> str:
    """Route mmcv's CPU deformable attention to our op ("auto") or to mmcv's own code ("fallback").

    With the op, `fused` (the default) also routes MultiScaleDeformableAttention.forward to the fused op
    (`fused_attention`); False keeps mmcv's forward around the plain op (benchmarks compare the two).
    `onednn` (default) runs the transformer's FFNs and attention projections through oneDNN
    (`onednn_linear`); "fallback" restores every mmcv forward, the reference path.
    Idempotent; returns the active path ("op" or "fallback"). "auto" falls back, with one warning, when
    the library is missing or broken.
    """
    global _requested_mode
    if mode not in MODES:
        raise ValueError(f"cpu_msda must be one of {MODES}, got {mode!r}")
    _requested_mode = mode
    module = _mmcv_module()
    with _lock:
        original = _original_fallback()
    if mode == "fallback":
        module.multi_scale_deformable_attn_pytorch = original
        fused_attention.uninstall()
        onednn_linear.uninstall()
        log.info("cpu_msda: fallback: mmcv's pure-PyTorch deformable attention on CPU (as configured)")
        return "fallback"
    status = load_op()
    if not status.available:
        module.multi_scale_deformable_attn_pytorch = original
        fused_attention.uninstall()
        onednn_linear.uninstall()
        log.warning("cpu_msda: compiled op %s; CPU deformable attention uses mmcv's slower pure-PyTorch "
                    "path", status.describe())
        return "fallback"
    if fused:
        fused_attention.install()
    else:
        fused_attention.uninstall()
    if not (onednn and onednn_linear.install()):
        onednn_linear.uninstall()
    if active_path() != "op":
        module.multi_scale_deformable_attn_pytorch = _make_dispatcher(original)
        if status.stale:
            log.warning("cpu_msda: using %s", status.describe())
        else:
            log.info("cpu_msda: CPU deformable attention uses %s", status.describe())
    return "op"
