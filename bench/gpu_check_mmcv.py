"""mmcv's two CUDA kernels that Co-DINO runs, compiled on their own for the GPU check.

The lent GPU machine has no mmcv and no internet, and a full mmcv build (136 compile units) does not fit its
15 minutes. Co-DINO's inference calls three of mmcv's compiled ops: multi-scale deformable attention
(CUDA), NMS and the query head's soft-NMS (mmcv runs it on the CPU). This compiles mmcv's own sources for
exactly those (`cuda/ms_deform_attn_cuda.cu`, `cuda/nms_cuda.cu`, `nms.cpp`, `cpu/nms.cpp`, from the mmcv
2.1.0 sdist carried with the check) with a small pybind module of ours, and installs a `mmcv._ext` module
that serves them under mmcv's names and keywords. Every other op of `mmcv._ext` is a stub that raises,
loudly, if the model ever calls it, so a figure can only come from mmcv's real kernels.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from pathlib import Path

BINDING = r"""
#include <torch/extension.h>
#include "pytorch_cpp_helper.hpp"
#include "pytorch_device_registry.hpp"
at::Tensor ms_deform_attn_cuda_forward(const at::Tensor &value, const at::Tensor &spatial_shapes,
                                       const at::Tensor &level_start_index, const at::Tensor &sampling_loc,
                                       const at::Tensor &attn_weight, const int im2col_step);
Tensor NMSCUDAKernelLauncher(Tensor boxes, Tensor scores, float iou_threshold, int offset);
Tensor nms_impl(Tensor boxes, Tensor scores, float iou_threshold, int offset);
Tensor nms(Tensor boxes, Tensor scores, float iou_threshold, int offset);
Tensor softnms(Tensor boxes, Tensor scores, Tensor dets, float iou_threshold, float sigma, float min_score,
               int method, int offset);
// The CUDA entry of mmcv's nms dispatcher, as mmcv's cudabind.cpp registers it (that file registers every
// op, so it is not compiled here).
Tensor nms_cuda(Tensor boxes, Tensor scores, float iou_threshold, int offset) {
  return NMSCUDAKernelLauncher(boxes, scores, iou_threshold, offset);
}
REGISTER_DEVICE_IMPL(nms_impl, CUDA, nms_cuda);
// Names and keywords as mmcv's pybind.cpp has them, so mmcv.ops calls these unchanged.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("ms_deform_attn_forward", &ms_deform_attn_cuda_forward, "mmcv's MSDA CUDA forward",
        py::arg("value"), py::arg("value_spatial_shapes"), py::arg("value_level_start_index"),
        py::arg("sampling_locations"), py::arg("attention_weights"), py::arg("im2col_step"));
  m.def("nms", &nms, "mmcv's nms (CPU and CUDA)", py::arg("boxes"), py::arg("scores"),
        py::arg("iou_threshold"), py::arg("offset"));
  m.def("softnms", &softnms, "mmcv's soft-NMS (CPU, as in mmcv)", py::arg("boxes"), py::arg("scores"),
        py::arg("dets"), py::arg("iou_threshold"), py::arg("sigma"), py::arg("min_score"),
        py::arg("method"), py::arg("offset"));
}
"""

# mmcv._ext as a Python module: mmcv.ops asserts hasattr(_ext, name) for every op name at import time.
EXT_SHIM = '''"""mmcv._ext for bench/gpu_check: mmcv's MSDA, NMS and soft-NMS only (gpu_check_mmcv.py)."""
from gpu_check_mmcv_ops import ms_deform_attn_forward, nms, softnms  # noqa: F401


def get_compiler_version():
    return "nvcc (gpu_check: ms_deform_attn, nms, softnms only)"


def get_compiling_cuda_version():
    import torch
    return torch.version.cuda


def __getattr__(name):
    def missing(*_args, **_kwargs):
        raise NotImplementedError(f"mmcv op {name!r} was not compiled for the GPU check (only "
                                  "ms_deform_attn_forward, nms, softnms): this path needs a full mmcv build")
    return missing
'''


# `import mmdet.models` imports scipy at module level twice, for code inference never runs: the Hungarian
# assigner (training) and the CrowdHuman metric (evaluation). scipy (35 MB) does not fit into the 64 MiB next
# to opencv, so where it is absent a stand-in package satisfies those imports and raises if anything calls it.
SCIPY_STUB = '''"""Stand-in for scipy by bench/gpu_check_mmcv.py (no scipy on this machine): import only."""


def __getattr__(name):
    def absent(*_args, **_kwargs):
        raise NotImplementedError(f"scipy is not installed here ({__name__}.{name}): bench/gpu_check stands "
                                  "in for imports of training and evaluation code only")
    return absent
'''
SCIPY_MODULES = ("__init__.py", "optimize.py", "sparse/__init__.py", "sparse/csgraph.py")


def install_scipy_stub(folder: Path) -> Path | None:
    """The scipy stand-in under `folder` when scipy cannot be imported; returns folder or None."""
    import importlib.util

    if importlib.util.find_spec("scipy") is not None:
        return None
    for module in SCIPY_MODULES:
        path = folder / "scipy" / module
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SCIPY_STUB)
    return folder


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


def cuda_home() -> str | None:
    """CUDA_HOME, else the first toolkit folder (bin/nvcc and include/cuda_runtime.h) among the one of the
    nvcc on PATH (links resolved) and /usr/local/cuda. torch alone would take the folder above whatever
    `nvcc` PATH finds, e.g. /usr/local for a /usr/local/bin/nvcc wrapper, which has no CUDA headers."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    on_path = shutil.which("nvcc")
    candidates = [Path(on_path).resolve().parents[1]] if on_path else []
    candidates.append(Path("/usr/local/cuda"))
    complete = [home for home in candidates
                if (home / "bin" / "nvcc").exists() and (home / "include" / "cuda_runtime.h").exists()]
    return str(complete[0]) if complete else None


def compile_kernels(mmcv_root: Path, build_dir: Path, arch_list: str, verbose: bool = False):
    """Compile the kernels + our binding with nvcc (torch's extension builder); returns (module, s)."""
    home = cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    import torch.utils.cpp_extension as cpp_extension

    cpp_extension.CUDA_HOME = home or cpp_extension.CUDA_HOME  # read once, when the module was imported
    load = cpp_extension.load

    csrc = mmcv_root / "mmcv" / "ops" / "csrc"
    build_dir.mkdir(parents=True, exist_ok=True)
    binding = build_dir / "binding.cpp"
    binding.write_text(BINDING)
    # pytorch/nms.cpp and pytorch/cpu/nms.cpp would both build nms.o: copies with distinct names.
    dispatch, cpu_nms = build_dir / "mmcv_nms.cpp", build_dir / "mmcv_nms_cpu.cpp"
    dispatch.write_text((csrc / "pytorch" / "nms.cpp").read_text())
    cpu_nms.write_text((csrc / "pytorch" / "cpu" / "nms.cpp").read_text())
    os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
    start = time.perf_counter()
    module = load(name="gpu_check_mmcv_ops", build_directory=str(build_dir), verbose=verbose,
                  sources=[str(binding), str(dispatch), str(cpu_nms),
                           str(csrc / "pytorch" / "cuda" / "ms_deform_attn_cuda.cu"),
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
