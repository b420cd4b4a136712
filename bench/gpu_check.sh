#!/usr/bin/env bash
# GPU figures for docs/tuning.md on a lent GPU machine (one H200, Python 3.12, its own torch with CUDA 13 and
# nvcc, no mmcv, no internet, 64 MiB carried per call, 15 minutes of device time in all, 10 per command).
# bench/README.md "GPU check" has the plan, the budgets and the expected device time.
#
#   here, once:   bash bench/gpu_check.sh wheels     # the carried set: .gpu-wheels/ (git-ignored, < 62 MiB)
#   rehearsal:    bash bench/gpu_check.sh dry-run    # the same control flow on this CPU, tiny model
#                 PYTHON=<py3.12 with a CUDA torch> bash bench/gpu_check.sh run --dry-run
#                                                    # the device path: unpack, compile the kernels, shim
#   device, one call (run tool: carry [".gpu-wheels"], timeout_s 540):
#                 bash bench/gpu_check.sh run        # writes $OUT/gpu_check.md + .json
#
# `run` keeps the machine's own torch, unpacks only the carried wheels whose modules the machine lacks (no
# pip, no index), compiles mmcv's two CUDA kernels Co-DINO needs (bench/gpu_check_mmcv.py) and runs
# bench/gpu_check.py with a total budget of BUDGET_S seconds (default 420); each step stops on its own budget.
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=.gpu-wheels
budget=${BUDGET_S:-420}
python=${PYTHON:-python3}
carry_limit=$(( 64 * 1024 * 1024 - 512 * 1024 ))  # the run tool carries 64 MiB in all, with the repository

# module name -> wheel name prefix, for the modules the model path imports
modules="cv2:opencv_python_headless PIL:pillow mmengine:mmengine mmdet:mmdet addict:addict yapf:yapf
termcolor:termcolor terminaltables:terminaltables tqdm:tqdm rich:rich markdown_it:markdown_it_py mdurl:mdurl
pygments:pygments pycocotools:pycocotools shapely:shapely safetensors:safetensors yaml:PyYAML psutil:psutil
packaging:packaging platformdirs:platformdirs ninja:ninja matplotlib:matplotlib contourpy:contourpy
cycler:cycler fontTools:fonttools kiwisolver:kiwisolver pyparsing:pyparsing dateutil:python_dateutil six:six"

download() {
  rm -rf "$wheels" && mkdir -p "$wheels"
  exclude=$(git rev-parse --git-path info/exclude)
  grep -qxF "/$wheels/" "$exclude" 2>/dev/null || echo "/$wheels/" >>"$exclude"
  # Exact versions from requirements/constraints.txt (opencv: the headless build of the pinned version).
  local pins=() name
  for name in mmengine mmdet addict yapf termcolor terminaltables tqdm rich markdown-it-py mdurl Pygments \
              pycocotools shapely safetensors PyYAML psutil packaging platformdirs Pillow ninja \
              matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six; do
    pins+=("$(grep -iE "^${name}==" requirements/constraints.txt)")
  done
  pins+=("opencv-python-headless==$(sed -n 's/^opencv-python==//p' requirements/constraints.txt)")
  python3 -m pip download -q -d "$wheels" --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 "${pins[@]}"
  # A wheel is a zip; the same files as xz-compressed tar take a third less, which is what makes opencv
  # (50 MB as a wheel) and matplotlib (mmdet.utils imports it) fit into one call's 64 MiB.
  local whl unpacked
  for whl in "$wheels"/*.whl; do
    unpacked=$(mktemp -d)
    python3 -m zipfile -e "$whl" "$unpacked"
    tar -C "$unpacked" -cf - . | xz -9 -T2 >"${whl%.whl}.tar.xz"
    rm -rf "$unpacked" "$whl"
  done
  # mmcv's sdist as published (pip download would run its setup.py just to read metadata), checked against
  # the sha256 PyPI lists for it.
  python3 - "$wheels" "$(sed -n 's/^mmcv==//p' requirements/constraints.txt)" <<'PY'
import hashlib, json, sys, urllib.request
folder, version = sys.argv[1:3]
request = urllib.request.Request("https://pypi.org/simple/mmcv/",  # PEP 691 JSON form of the simple index
                                 headers={"Accept": "application/vnd.pypi.simple.v1+json"})
files = json.load(urllib.request.urlopen(request, timeout=60))["files"]
sdist = next(item for item in files if item["filename"] == f"mmcv-{version}.tar.gz")
data = urllib.request.urlopen(sdist["url"], timeout=120).read()
assert hashlib.sha256(data).hexdigest() == sdist["hashes"]["sha256"], "sha256 mismatch"
open(f"{folder}/{sdist['filename']}", "wb").write(data)
PY
  local wheel_bytes repo_bytes
  wheel_bytes=$(du -sb "$wheels" | cut -f1)
  repo_bytes=$(git ls-files -z | xargs -0 cat | wc -c)
  echo "$wheels: $(( wheel_bytes / 1024 )) KiB + the repository's $(( repo_bytes / 1024 )) KiB" \
       "of the $(( carry_limit / 1024 )) KiB that one call may carry"
  [ $(( wheel_bytes + repo_bytes )) -le "$carry_limit" ] || { echo "over the carry budget" >&2; exit 1; }
}

# Unpack each carried wheel (as .tar.xz) whose top-level module the python cannot import yet.
unpack_missing() {
  local site=$1 pair module prefix whl
  mkdir -p "$site"
  for pair in $modules; do
    module=${pair%%:*} prefix=${pair#*:}
    "$python" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$module') is None)" && continue
    whl=$(ls "$wheels"/"$prefix"-*.tar.xz 2>/dev/null | head -n1 || true)
    if [ -z "$whl" ]; then echo "missing on this machine and not carried: $module" >&2; continue; fi
    "$python" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
      "$whl" "$site"
    echo "unpacked $(basename "$whl")"
  done
}

case "${1:-}" in
  wheels) download ;;
  dry-run)
    out=${OUT:-bench/results/gpu-check-dry-run}
    PYTHONUNBUFFERED=1 "$python" -m bench.gpu_check --dry-run --total-budget "$budget" --out "$out" \
      --mmcv-sdist "$wheels/mmcv-2.1.0.tar.gz" "${@:2}"
    ;;
  run)
    out=${OUT:-bench/results/gpu-check}
    mkdir -p "$out"
    start=$(date +%s)
    { nvidia-smi || echo "no nvidia-smi"; } >"$out/nvidia-smi.txt" 2>&1
    site=$(mktemp -d)/site
    timeout 60 bash -c "$(declare -f unpack_missing); wheels=$wheels python=$python modules='$modules'; unpack_missing $site" \
      | tee "$out/unpack.txt" || echo "unpacking stopped at its 60 s budget" | tee -a "$out/unpack.txt"
    # torch's extension builder runs `ninja`; a wheel unzipped by hand loses the executable bit.
    if [ -d "$site/ninja/data/bin" ]; then chmod +x "$site"/ninja/data/bin/*; export PATH="$site/ninja/data/bin:$PATH"; fi
    left=$(( budget - ($(date +%s) - start) ))
    # The python step budgets are scaled to what is left; `timeout` is the backstop 30 s after that.
    PYTHONPATH="$PWD:$site" PYTHONUNBUFFERED=1 timeout --kill-after=10 $(( left + 30 )) \
      "$python" -m bench.gpu_check --total-budget "$left" --out "$out" --mmcv-sdist "$wheels/mmcv-2.1.0.tar.gz" \
      "${@:2}" || echo "bench.gpu_check exited with status $? after $(( $(date +%s) - start )) s" | tee -a "$out/gpu_check.md"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh wheels|dry-run|run [bench.gpu_check options]" >&2
    exit 2
    ;;
esac
