#!/usr/bin/env bash
# GPU figures for docs/tuning.md on a lent GPU machine (the `device` tool: one H200, Python 3.12, torch with
# CUDA and nvcc, no internet). Prepared here, where no GPU is lent; run it where one is:
#
#   here, once:  bash bench/gpu_check.sh wheels     # pure-Python wheels of the stack into .gpu-wheels/
#   device run:  bash bench/gpu_check.sh run        # carry .gpu-wheels; writes $OUT/gpu_check.md + .json
#
# `run` keeps the machine's own torch (its CUDA build), installs the carried wheels without touching torch,
# compiles mmcv 2.1.0's ops for Hopper only (sm_90: one arch keeps the build inside the 10-minute limit on
# 16 cores; the Docker image's CUDA variant builds 8.9 and 9.0) and then runs bench/gpu_check.py. If mmcv
# does not build in time, that is the figure to report; nothing here fakes a number.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.gpu-wheels

case "${1:-}" in
  wheels)
    # Everything the model needs besides torch and mmcv, as wheels for CPython 3.12 on x86-64.
    mkdir -p "$wheels"
    grep -qxF "/$wheels/" .git/info/exclude || echo "/$wheels/" >>.git/info/exclude
    python3 -m pip download -q -d "$wheels" --only-binary=:all: --python-version 3.12 \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -c requirements/constraints.txt mmengine mmdet numpy opencv-python Pillow safetensors PyYAML psutil \
      packaging addict termcolor yapf rich pycocotools scipy shapely terminaltables tqdm matplotlib
    python3 -m pip download -q -d "$wheels" --no-deps --no-binary=:all: mmcv==2.1.0
    du -sh "$wheels"
    ;;
  run)
    out=${OUT:-bench/results/gpu-check}
    mkdir -p "$out"
    nvidia-smi | tee "$out/nvidia-smi.txt"
    python3 -m pip install -q --no-index --find-links "$wheels" --no-deps "$wheels"/*.whl
    start=$(date +%s)
    MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) \
      timeout 420 python3 -m pip install -q --no-build-isolation --no-deps "$wheels"/mmcv-2.1.0.tar.gz \
      || { echo "mmcv 2.1.0 did not build with CUDA ops within 420 s" | tee "$out/gpu_check.md"; exit 1; }
    echo "mmcv ops built in $(( $(date +%s) - start )) s" | tee "$out/mmcv_build.txt"
    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 -m bench.gpu_check --out "$out"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh wheels|run" >&2
    exit 2
    ;;
esac
