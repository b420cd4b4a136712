#!/usr/bin/env bash
# One-command, repeatable install of the serving stack into a virtualenv.
# Versions come only from requirements/constraints.txt; this script decides *how* to install them.
#
# Variables (all optional):
#   VENV          virtualenv path                              (default .venv)
#   PYTHON        interpreter used to create it                (default python3.11, else python3)
#   TORCH_CUDA    which torch build (codetr_serve/tools/torch_choice.py decides, README "Setup"):
#                   empty  the CPU build where no NVIDIA GPU is visible, PyPI's CUDA 13.0 build where one is
#                   cpu    the CPU build (a local +cpu wheel pip resolves to, else PyTorch's CPU index)
#                   cu130  PyPI's own torch (CUDA 13.0); mmcv compiled with CUDA kernels
#                   cu128  ... any other flavour: PyTorch's index for it; mmcv compiled with CUDA kernels
#   TORCH_CUDA_ARCH_LIST  GPUs mmcv's CUDA kernels are built for (default: docker/cuda_archs.txt)
#   WHEEL_CACHE   directory searched for a prebuilt mmcv wheel; a fresh source build is stored there
#   TORCH_WHEEL   a torch wheel file to install instead of resolving torch from an index (offline image builds)
#   SETUP_STEPS=torch  stop once torch is installed (docker/Dockerfile's toolchain stage: its own layer)
#   RUNTIME_DEPS_ONLY=1  stop after torch, mmcv and requirements/runtime.txt: no dev tools, no project
#                 install, no Java, no doctor (docker/Dockerfile does those in its own layers)
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
constraints="$here/requirements/constraints.txt"
venv=${VENV:-$here/.venv}
wheel_cache=${WHEEL_CACHE:-$here/.cache/wheels}

log() { printf '\n==> %s\n' "$*"; }
pin() { grep -E "^$1==" "$constraints" | head -n1; }

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  command -v python3.11 >/dev/null && { echo python3.11; return; }
  echo python3
}

make_venv() {
  local py; py=$(pick_python)
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv with $py"
    "$py" -m venv "$venv"
  fi
  "$venv/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    || { echo "codetr-serve is pinned to Python 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
}

pip_install() { "$venv/bin/python" -m pip install --disable-pip-version-check -c "$constraints" "$@"; }

# Sets torch_source, torch_index, torch_exact, mmcv_flavour and torch_note (see torch_choice.py).
choose_torch() {
  local plan
  plan=$("$venv/bin/python" "$here/codetr_serve/tools/torch_choice.py" "$venv/bin/python" "$constraints")
  eval "$plan"
}

install_torch() {
  local spec; spec=$(pin torch)
  [ "$torch_exact" = 1 ] && spec="torch===${spec#torch==}"  # PyPI's build, never a local +cpu one
  log "installing $spec (mmcv flavour $mmcv_flavour; from ${TORCH_WHEEL:-${torch_index:-the configured pip indexes}})"
  [ -z "$torch_note" ] || printf 'NOTE: %s\n' "$torch_note" >&2
  if [ -n "${TORCH_WHEEL:-}" ]; then
    pip_install "$TORCH_WHEEL"
  elif [ -n "$torch_index" ]; then
    pip_install --index-url "$torch_index" "$spec"
  else
    pip_install "$spec"
  fi
  pip_install numpy setuptools wheel ninja
  "$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
}

mmcv_ops_work() {
  # Runs a real compiled op: an import alone does not prove the .so matches this torch's ABI.
  # For a CUDA stack the ops must also have been compiled with CUDA (a CPU-only wheel would load fine),
  # and for every GPU of TORCH_CUDA_ARCH_LIST (a wheel cached from a smaller list must not be reused).
  local why
  why=$(NEED_CUDA=$([ "$mmcv_flavour" = cpu ] || echo 1) TOOLS="$here/codetr_serve/tools" \
        "$venv/bin/python" - 2>&1 <<'PY'
import os
import sys
import torch
from mmcv.ops import get_compiling_cuda_version, nms
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
if os.environ.get("NEED_CUDA"):
    assert get_compiling_cuda_version() != "not available", "mmcv ops were compiled without CUDA"
    sys.path.append(os.environ["TOOLS"])
    import mmcv._ext
    from cuda_archs import fatbin_archs, missing_archs
    missing = missing_archs(os.environ["TORCH_CUDA_ARCH_LIST"], fatbin_archs(mmcv._ext.__file__))
    assert not missing, f"mmcv's CUDA kernels lack {' '.join(missing)}"
PY
) && return 0
  printf 'mmcv check: %s\n' "$(tail -n1 <<<"$why")" >&2
  return 1
}

# The GPUs mmcv's CUDA kernels are for: TORCH_CUDA_ARCH_LIST, else the one list the image and k8s/ read.
resolve_cuda_archs() {
  [ "$mmcv_flavour" = cpu ] && return 0
  [ -n "${TORCH_CUDA_ARCH_LIST:-}" ] || TORCH_CUDA_ARCH_LIST=$(grep -v '^#' "$here/docker/cuda_archs.txt" | head -n1)
  export TORCH_CUDA_ARCH_LIST
}

# CPU and CUDA builds of mmcv share one file name, so each CUDA flavour keeps its wheels in a subfolder.
cache_for_variant() {
  if [ "$mmcv_flavour" != cpu ]; then echo "$1/$mmcv_flavour"; else echo "$1"; fi
}

install_mmcv_from_cache() {
  local whl
  whl=$(ls "$wheel_cache"/mmcv-2.1.0-cp311-*.whl 2>/dev/null | head -n1 || true)
  [ -n "$whl" ] || return 1
  log "installing mmcv from wheel cache: $whl"
  pip_install --no-deps --force-reinstall "$whl" && pip_install "mmcv==2.1.0" && mmcv_ops_work && return 0
  echo "cached mmcv wheel does not work here (see 'mmcv check' above); building from source instead" >&2
  "$venv/bin/python" -m pip uninstall -y mmcv >/dev/null
  return 1
}

export_nvidia_includes() {
  local dirs
  dirs=$("$venv/bin/python" -c 'import nvidia, pathlib
print(":".join(sorted({str(p) for r in nvidia.__path__ for p in pathlib.Path(r).glob("**/include") if p.is_dir()})))' 2>/dev/null || true)
  [ -n "$dirs" ] || return 0
  export CPATH="$dirs${CPATH:+:$CPATH}"
  export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:-} -I${dirs//:/ -I}"
}

# Sets cpu_s to the CPU seconds (user + system) of this shell's finished children. Call it directly, never
# as $(...): a subshell's count of its children starts at zero.
children_cpu_s() {
  local out; out=$(mktemp)
  times >"$out"
  cpu_s=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s += t[1] * 60 + t[2] } printf "%d", s }' "$out")
  rm -f "$out"
}

build_mmcv_from_source() {
  local cuda=0; [ "$mmcv_flavour" != cpu ] && cuda=1
  local what="CPU ops only: about 21 min on 2 cores"
  [ "$cuda" = 1 ] && what="CPU ops and CUDA kernels for $TORCH_CUDA_ARCH_LIST: docker/README.md has the times"
  log "building $(pin mmcv) with compiled ops from source ($what)"
  # torch's CUDA headers include cuSPARSE/cuBLAS/... headers, which come with torch's nvidia-* wheels
  # (site-packages/nvidia/*/include), not with nvcc: hand them to gcc (CPATH) and nvcc.
  [ "$cuda" = 1 ] && export_nvidia_includes
  if [ "$cuda" = 1 ] && [ ! -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ] && ! command -v nvcc >/dev/null; then
    echo "mmcv's CUDA kernels need nvcc: sudo bash docker/cuda-toolkit.sh $mmcv_flavour (NVIDIA's compiler" \
         "wheels from PyPI, linked at /usr/local/cuda), or set CUDA_HOME; or put a prebuilt wheel in" \
         "$wheel_cache/" >&2
    exit 1
  fi
  mkdir -p "$wheel_cache" 2>/dev/null || true
  # A read-only cache (e.g. a shared wheelhouse) is still searched, but new builds go to the project's own.
  [ -w "$wheel_cache" ] || { wheel_cache=$(cache_for_variant "$here/.cache/wheels"); mkdir -p "$wheel_cache"; }
  local started=$SECONDS cpu_s cpu_before; children_cpu_s; cpu_before=$cpu_s
  # The venv's bin first on PATH: torch's BuildExtension looks for `ninja` there and, without it, falls back
  # to compiling one file at a time whatever MAX_JOBS says.
  PATH="$venv/bin:$PATH" MMCV_WITH_OPS=1 FORCE_CUDA=$cuda MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$venv/bin/python" -m pip wheel --no-build-isolation --no-deps -c "$constraints" \
      -w "$wheel_cache" "$(pin mmcv)"
  children_cpu_s
  log "mmcv compiled in $((SECONDS - started)) s wall, $((cpu_s - cpu_before)) s CPU" \
      "(MAX_JOBS=${MAX_JOBS:-$(nproc)} of $(nproc) cores$([ "$cuda" = 1 ] && echo ", TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"))"
  install_mmcv_from_cache || { echo "mmcv built but its ops do not load: see the build log above" >&2; exit 1; }
}

install_java() {
  if java -version 2>&1 | grep -qE 'version "(1[7-9]|[2-9][0-9])'; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing Java 17 for TorchServe"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless
  else
    echo "TorchServe needs Java >= 17: install it (Debian/Ubuntu: sudo apt-get install openjdk-17-jre-headless)" >&2
    exit 1
  fi
}

make_venv
choose_torch
wheel_cache=$(cache_for_variant "$wheel_cache")
pip_install --upgrade pip
install_torch
[ "${SETUP_STEPS:-all}" = torch ] && exit 0
resolve_cuda_archs
mmcv_ops_work || install_mmcv_from_cache || build_mmcv_from_source
log "installing the rest of the stack"
if [ "${RUNTIME_DEPS_ONLY:-0}" = 1 ]; then pip_install -r "$here/requirements/runtime.txt"; exit 0; fi
pip_install -r "$here/requirements/runtime.txt" -r "$here/requirements/dev.txt"
pip_install --no-deps --no-build-isolation -e "$here"
log "building the compiled CPU deformable-attention op (about 15 s; never inside a worker)"
"$venv/bin/python" -m codetr_serve.tools.build_ops
install_java
log "checking the stack"
"$venv/bin/python" -m codetr_serve.tools.doctor
