"""mmcv's two CUDA kernels that Co-DINO runs, compiled on their own for the GPU check.

The lent GPU machine has no mmcv and no internet, and a full mmcv build (136 compile units) does not fit its
15 minutes. Co-DINO's inference calls two of mmcv's compiled ops: multi-scale deformable attention and NMS.
This compiles mmcv's own sources for exactly those (`ms_deform_attn_cuda.cu`, `nms_cuda.cu`, from the mmcv
2.1.0 sdist carried with the check) with a small pybind module of ours, and installs a `mmcv._ext` module
that serves them under mmcv's names. Every other op of `mmcv._ext` is a stub that raises, loudly, if the
model ever calls it, so a figure can only come from mmcv's real kernels.
"""

from __future__ import annotations

import os
import tarfile
import time
from pathlib import Path

BINDING = r"""
#include <torch/extension.h>
at::Tensor ms_deform_attn_cuda_forward(const at::Tensor &value, const at::Tensor &spatial_shapes,
                                       const at::Tensor &level_start_index, const at::Tensor &sampling_loc,
                                       const at::Tensor &attn_weight, const int im2col_step);
at::Tensor NMSCUDAKernelLauncher(at::Tensor boxes, at::Tensor scores, float iou_threshold, int offset);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &ms_deform_attn_cuda_forward, "mmcv 2.1.0's MSDA CUDA forward");
  m.def("nms", &NMSCUDAKernelLauncher, "mmcv 2.1.0's NMS CUDA kernel");
}
"""

# mmcv._ext as a Python module: mmcv.ops asserts hasattr(_ext, name) for every op name at import time.
EXT_SHIM = '''"""mmcv._ext for bench/gpu_check: mmcv's MSDA and NMS CUDA kernels only (gpu_check_mmcv.py)."""
import gpu_check_mmcv_ops as _ops


def ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                           im2col_step):
    return _ops.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                       attention_weights, im2col_step)


def nms(boxes, scores, iou_threshold, offset):
    if not boxes.is_cuda:
        raise NotImplementedError("gpu_check compiled mmcv's nms for CUDA tensors only")
    return _ops.nms(boxes, scores, iou_threshold, offset)


def get_compiler_version():
    return "nvcc (gpu_check: ms_deform_attn + nms only)"


def get_compiling_cuda_version():
    import torch
    return torch.version.cuda


def __getattr__(name):
    def missing(*_args, **_kwargs):
        raise NotImplementedError(f"mmcv op {name!r} was not compiled for the GPU check (only "
                                  "ms_deform_attn_forward and nms): this model path needs a full mmcv build")
    return missing
'''


def unpack_mmcv(sdist: Path, dest: Path) -> Path:
    """The mmcv source tree from its sdist; returns the folder that holds the `mmcv` package."""
    with tarfile.open(sdist) as archive:
        archive.extractall(dest, filter="data")
    return next(path for path in dest.iterdir() if (path / "mmcv" / "__init__.py").is_file())


def nvidia_include_dirs() -> list[str]:
    """Header folders of the nvidia-* wheels torch depends on (cuSPARSE, cuBLAS, ...): torch's CUDA headers
    include them, and neither torch's extension builder nor a wheel-made CUDA_HOME adds them."""
    try:
        import nvidia
    except ImportError:  # a torch whose CUDA libraries come from a system toolkit
        return []
    return sorted({str(path) for root in nvidia.__path__ for path in Path(root).glob("**/include")
                   if path.is_dir()})


def compile_kernels(mmcv_root: Path, build_dir: Path, arch_list: str, verbose: bool = False):
    """Compile the two kernels + our binding with nvcc (torch's extension builder); returns (module, s)."""
    from torch.utils.cpp_extension import load

    csrc = mmcv_root / "mmcv" / "ops" / "csrc"
    build_dir.mkdir(parents=True, exist_ok=True)
    binding = build_dir / "binding.cpp"
    binding.write_text(BINDING)
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    start = time.perf_counter()
    module = load(name="gpu_check_mmcv_ops", build_directory=str(build_dir), verbose=verbose,
                  sources=[str(binding), str(csrc / "pytorch" / "cuda" / "ms_deform_attn_cuda.cu"),
                           str(csrc / "pytorch" / "cuda" / "nms_cuda.cu")],
                  extra_include_paths=[str(csrc / "common"), str(csrc / "common" / "cuda"),
                                       *nvidia_include_dirs()],
                  extra_cflags=["-O3", "-DMMCV_WITH_CUDA"], extra_cuda_cflags=["-O3", "-DMMCV_WITH_CUDA"])
    return module, time.perf_counter() - start


def install_ext_shim(mmcv_root: Path) -> Path:
    """Write mmcv/_ext.py (over nothing: the sdist has no compiled _ext); returns its path."""
    shim = mmcv_root / "mmcv" / "_ext.py"
    shim.write_text(EXT_SHIM)
    return shim


def msda_inputs(device: str, queries_per_level=((200, 334), (100, 167), (50, 84), (25, 42), (13, 21))):
    """Random inputs at the 1333x800 encoder shape: 89,023 queries over 5 levels, 8 heads x 32 channels."""
    import torch

    generator = torch.Generator(device="cpu").manual_seed(0)
    shapes = torch.tensor(queries_per_level, device=device)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    keys = int((shapes[:, 0] * shapes[:, 1]).sum())
    value = torch.randn(1, keys, 8, 32, generator=generator).to(device)
    levels = len(queries_per_level)
    locations = torch.rand(1, keys, 8, levels, 4, 2, generator=generator).to(device)
    weights = torch.rand(1, keys, 8, levels * 4, generator=generator).softmax(-1).view(1, keys, 8, levels, 4)
    weights = weights.to(device)
    return value, shapes, starts, locations, weights
