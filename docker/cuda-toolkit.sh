#!/usr/bin/env bash
# Builder stage only: install the CUDA compiler and headers that mmcv's CUDA kernels need, from NVIDIA's
# Debian 12 repository, in the CUDA version of the torch build (TORCH_CUDA=cu128 -> CUDA 12.8). The runtime
# stage never gets these: torch's CUDA wheels bring their own CUDA libraries, the host brings the driver.
#   docker/cuda-toolkit.sh <cpu|cuNNN>        (cpu: nothing to do)
set -euo pipefail

flavour=${1:?usage: cuda-toolkit.sh <cpu|cuNNN>}
[ "$flavour" = cpu ] && exit 0
digits=${flavour#cu}
case "$flavour" in
  cu[0-9][0-9][0-9]) ;;
  *) echo "cuda-toolkit.sh: TORCH_CUDA must be cpu or look like cu128, not '$flavour'" >&2; exit 2 ;;
esac
major=${digits:0:2} minor=${digits:2:1}
if [ "${CUDA_TOOLKIT_DRY_RUN:-0}" = 1 ]; then echo "CUDA $major.$minor"; exit 0; fi

keyring=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], "/tmp/cuda-keyring.deb")' "$keyring"
dpkg -i /tmp/cuda-keyring.deb
rm -f /tmp/cuda-keyring.deb
apt-get update
# nvcc, the runtime/cuBLAS/cuSPARSE/cuSOLVER/cuRAND headers torch's CUDA headers include, and NVTX.
apt-get install -y --no-install-recommends \
  "cuda-nvcc-$major-$minor" "cuda-libraries-dev-$major-$minor" "cuda-nvtx-$major-$minor"
rm -rf /var/lib/apt/lists/*
# torch.utils.cpp_extension looks for CUDA_HOME, then nvcc on PATH, then /usr/local/cuda.
ln -sfn "/usr/local/cuda-$major.$minor" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version | tail -n 2
