#!/usr/bin/env bash
# Builder stage only: the CUDA compiler and headers mmcv's CUDA kernels need, in the CUDA version of the torch
# build (TORCH_CUDA=cu130 -> CUDA 13.0), linked at /usr/local/cuda. The runtime stage never gets these: the
# torch wheels bring their CUDA libraries (nvidia-* wheels), the host brings the driver.
#
#   docker/cuda-toolkit.sh <cpu|cuNNN> [CONSTRAINTS]     (cpu: nothing to do)
#
# Two sources (CUDA_TOOLKIT_SOURCE):
#   pypi  (default for CUDA 13.x) NVIDIA's own wheels from PyPI: `cuda-toolkit[nvcc,cccl]` at the version
#         requirements/constraints.txt pins, which is the version torch itself requires (torch 2.13.0 from
#         PyPI depends on cuda-toolkit==13.0.3). Installed into a throw-away venv, /opt/cuda-wheels; its
#         nvidia/cu13 folder is the toolkit (bin/nvcc, include/, lib/, nvvm/). No index besides PyPI.
#   apt   (default for CUDA 12.x) NVIDIA's Debian 12 repository: cuda-nvcc-X-Y and cuda-libraries-dev-X-Y,
#         for flavours whose torch comes from PyTorch's index (cu126, cu128).
# CUDA_TOOLKIT_DRY_RUN=1 prints what would be installed and exits.
set -euo pipefail

flavour=${1:?usage: cuda-toolkit.sh <cpu|cuNNN> [constraints.txt]}
constraints=${2:-requirements/constraints.txt}
[ "$flavour" = cpu ] && exit 0
case "$flavour" in
  cu[0-9][0-9][0-9]) ;;
  *) echo "cuda-toolkit.sh: TORCH_CUDA must be cpu or look like cu130, not '$flavour'" >&2; exit 2 ;;
esac
digits=${flavour#cu}
major=${digits:0:2} minor=${digits:2:1}
default_source=apt
[ "$major" -ge 13 ] && default_source=pypi
source=${CUDA_TOOLKIT_SOURCE:-$default_source}

# The wheels carry only versioned libraries (libcudart.so.13) and no symlinks, but the linker's -lcudart
# (torch.utils.cpp_extension links every CUDA extension with it) needs libcudart.so: add the dev links.
dev_links() {
  local so dev
  for so in "$1"/lib*.so.[0-9]*; do
    [ -f "$so" ] || continue
    dev=${so%%.so.*}.so
    [ -e "$dev" ] || ln -s "$(basename "$so")" "$dev"
  done
}

from_pypi() {
  local pinned spec
  pinned=$(sed -n 's/^cuda-toolkit==//p' "$constraints" 2>/dev/null | head -n1)
  if [ -n "$pinned" ] && [ "${pinned%%.*}.$(cut -d. -f2 <<<"$pinned")" = "$major.$minor" ]; then
    spec="cuda-toolkit[nvcc,cccl]==$pinned"
  else
    # Not the CUDA of the pinned torch (e.g. a cu131 torch from elsewhere): the newest release of that CUDA.
    spec="cuda-toolkit[nvcc,cccl]==$major.$minor.*"
  fi
  echo "CUDA $major.$minor from PyPI: $spec"
  [ "${CUDA_TOOLKIT_DRY_RUN:-0}" = 1 ] && return 0
  local prefix=/opt/cuda-wheels
  python3 -m venv "$prefix"
  # Only the toolkit's own wheels (nvcc, crt, nvvm, cudart, cccl): no torch, nothing of the stack.
  "$prefix/bin/python" -m pip install --no-cache-dir --disable-pip-version-check -q "$spec"
  local root; root=$("$prefix/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu'"$major"'"))')
  [ -e "$root/lib64" ] || ln -s lib "$root/lib64"  # torch.utils.cpp_extension links -L$CUDA_HOME/lib64
  dev_links "$root/lib"
  [ -e "$root/lib/libcudart.so" ] || { echo "cuda-toolkit.sh: no libcudart in $root/lib: CUDA extensions cannot link" >&2; exit 1; }
  ln -sfn "$root" /usr/local/cuda
}

from_apt() {
  echo "CUDA $major.$minor from NVIDIA's Debian 12 repository: cuda-nvcc-$major-$minor cuda-libraries-dev-$major-$minor"
  [ "${CUDA_TOOLKIT_DRY_RUN:-0}" = 1 ] && return 0
  local keyring=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "/tmp/cuda-keyring.deb")' "$keyring"
  dpkg -i /tmp/cuda-keyring.deb
  rm -f /tmp/cuda-keyring.deb
  apt-get update
  # nvcc, the runtime/cuBLAS/cuSPARSE/cuSOLVER/cuRAND headers torch's CUDA headers include, and NVTX.
  apt-get install -y --no-install-recommends \
    "cuda-nvcc-$major-$minor" "cuda-libraries-dev-$major-$minor" "cuda-nvtx-$major-$minor"
  rm -rf /var/lib/apt/lists/*
  ln -sfn "/usr/local/cuda-$major.$minor" /usr/local/cuda
}

case "$source" in
  pypi) from_pypi ;;
  apt) from_apt ;;
  *) echo "cuda-toolkit.sh: CUDA_TOOLKIT_SOURCE must be pypi or apt, not '$source'" >&2; exit 2 ;;
esac
[ "${CUDA_TOOLKIT_DRY_RUN:-0}" = 1 ] && exit 0
# torch.utils.cpp_extension looks for CUDA_HOME, then nvcc on PATH, then /usr/local/cuda.
/usr/local/cuda/bin/nvcc --version | tail -n 2
