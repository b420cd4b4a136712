#!/usr/bin/env bash
# Build the codetr-serve container image (docker/Dockerfile) with docker, or with buildah where no Docker
# daemon answers. `make image` runs `docker/build.sh image`; `make image-base` runs `docker/build.sh base`.
#
#   docker/build.sh image    build the image (CPU by default)
#   docker/build.sh base     make a local Debian bookworm base image (for machines that cannot pull from
#                            Docker Hub): mmdebstrap -> localhost/debian:bookworm-slim
#   docker/build.sh tag      print the tag `image` builds (and docker/smoke.sh runs) for these variables
#   docker/build.sh stage    copy the wheels into the build context as `image` does, list them, remove them
#
# Variables (all optional):
#   VARIANT          cpu (default) or cuda
#   TORCH_CUDA       torch flavour: cpu for VARIANT=cpu; for VARIANT=cuda cu130 by default (PyPI's own torch
#                    and NVIDIA's compiler wheels from PyPI: no other index needed), or a PyTorch index
#                    flavour such as cu128 (torch from download.pytorch.org, nvcc from NVIDIA's apt repository)
#   TORCH_CUDA_ARCH_LIST  GPU architectures mmcv's CUDA kernels are compiled for (default: docker/cuda_archs.txt,
#                    the list k8s/ selects GPU nodes by); only used when no mmcv wheel is staged
#   IMAGE            tag to build (default codetr-serve:<TORCH_CUDA>)
#   BASE_IMAGE       base of both stages (default docker.io/library/debian:bookworm-slim; when buildah
#                    builds and localhost/debian:bookworm-slim exists, that local base is used)
#   WHEEL_CACHE      folder with a prebuilt mmcv-2.1.0-cp311-*.whl (CUDA builds in a <TORCH_CUDA>/ subfolder,
#                    the layout scripts/setup.sh uses); copied into the build context, else mmcv is compiled.
#                    The builder uses it only if its ops run there (CUDA kernels included for a CUDA flavour).
#                    A wheel the builder compiled is copied back here (if writable) for the next build.
#   TORCH_WHEEL_DIR  folder with a torch-<pin>+<TORCH_CUDA>-cp311-*.whl to use instead of an index
#   ENGINE           docker or buildah (default: docker if its daemon answers, else buildah)
#   MAX_JOBS         parallel compile jobs in the builder (default: all cores of the build machine)
#   PIP_CERT         a CA bundle for pip in the builder (hosts behind a TLS-inspecting proxy)
#   BUILD_FLAGS      extra flags for `docker build` / `buildah bud`, e.g. --no-cache
#
# buildah here uses /var/lib/containers/storage with the overlay driver (native on ext4/xfs as root). Where
# overlay is not available (rootless, nested containers), set STORAGE_DRIVER=vfs: slower and bigger, but works.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
LOCAL_BASE=localhost/debian:bookworm-slim
say() { printf '==> %s\n' "$*"; }
die() { printf 'docker/build.sh: %s\n' "$*" >&2; exit 1; }

pick_engine() {
  if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; return; fi
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then echo docker; return; fi
  command -v buildah >/dev/null && { echo buildah; return; }
  die "neither a Docker daemon nor buildah is available (Debian/Ubuntu: apt-get install buildah podman)"
}

image_exists() {
  case "$1" in
    docker) docker image inspect "$2" >/dev/null 2>&1 ;;
    *) buildah inspect --type image "$2" >/dev/null 2>&1 ;;
  esac
}

make_base() {
  # A minbase bookworm with the same dpkg excludes as the official slim image (no man pages, docs, locales).
  command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"
  local tar=.cache/images/debian-bookworm-slim.tar engine; engine=$(pick_engine)
  mkdir -p "$(dirname "$tar")"
  say "mmdebstrap --variant=minbase bookworm -> $tar"
  mmdebstrap --variant=minbase --aptopt='Acquire::Languages "none"' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    bookworm "$tar"
  say "importing it as $LOCAL_BASE"
  if [ "$engine" = docker ]; then
    docker import --change 'CMD ["bash"]' "$tar" "$LOCAL_BASE"
  else
    podman import --change 'CMD=["bash"]' "$tar" "$LOCAL_BASE" >/dev/null
  fi
  rm -f "$tar"
}

# Where the wheels are staged: the Dockerfile copies docker/wheels/{torch,mmcv}/ (tests point it elsewhere).
STAGE=${WHEEL_STAGE:-docker/wheels}
unstage() { [ -d "$STAGE" ] || return 0; find "$STAGE" -mindepth 1 ! -name .gitkeep -exec rm -rf {} +; }

# The CUDA architectures for mmcv's kernels: TORCH_CUDA_ARCH_LIST, else docker/cuda_archs.txt.
cuda_archs() {
  if [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then echo "$TORCH_CUDA_ARCH_LIST"; return; fi
  grep -v '^#' docker/cuda_archs.txt | grep -m1 .
}

link_or_copy() { cp -l "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

# The torch flavour for VARIANT and TORCH_CUDA.
flavour_of() {
  local variant=${VARIANT:-cpu} flavour
  case "$variant" in
    cpu) flavour=${TORCH_CUDA:-cpu} ;;
    cuda) flavour=${TORCH_CUDA:-cu130} ;;
    *) die "VARIANT must be cpu or cuda, not '$variant'" ;;
  esac
  [ "$variant" = cpu ] && [ "$flavour" != cpu ] && die "VARIANT=cpu needs TORCH_CUDA=cpu (got $flavour)"
  [ "$variant" = cuda ] && [ "$flavour" = cpu ] && die "VARIANT=cuda needs a CUDA flavour such as cu130"
  echo "$flavour"
}

image_tag() { local flavour; flavour=$(flavour_of); echo "${IMAGE:-codetr-serve:$flavour}"; }

# mmcv wheels of a CUDA flavour live in a subfolder named after it, in WHEEL_CACHE and in the builder's
# /wheels/mmcv alike (scripts/setup.sh's layout: CPU and CUDA builds share one file name).
flavour_dir() { [ "$1" = cpu ] || echo "$1/"; }

# Copy the optional prebuilt wheels into the build context: $STAGE/torch/ (a torch wheel, the CA bundle)
# and $STAGE/mmcv/[<flavour>/] (an mmcv wheel of the flavour). They are removed again when the build ends.
stage_wheels() {
  local flavour=$1 dest=$STAGE sub; sub=$(flavour_dir "$flavour")
  unstage
  trap unstage EXIT
  mkdir -p "$dest/torch" "$dest/mmcv/$sub"
  local cache=${WHEEL_CACHE:-.cache/wheels} whl torch_pin
  for whl in "$cache/$sub"mmcv-2.1.0-cp311-*.whl; do
    [ -f "$whl" ] && { link_or_copy "$whl" "$dest/mmcv/$sub"; say "mmcv wheel: $whl"; }
  done
  torch_pin=$(sed -n 's/^torch==//p' requirements/constraints.txt)
  # Behind a TLS-inspecting proxy pip needs the host's CA bundle (PIP_CERT); the builder stages use it.
  if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then cp "$PIP_CERT" "$dest/torch/ca-bundle.pem"; say "CA bundle: $PIP_CERT"; fi
  # TORCH_WHEEL_DIR, else the local folders of pip's find-links (PIP_FIND_LINKS): where `make setup` found
  # its +cpu torch, so that `make image` on the same host takes the same 0.2 GB wheel instead of falling
  # back to PyPI's CUDA build (a 6.2 GB "cpu" image, measured 2026-12-04).
  local dir
  for dir in ${TORCH_WHEEL_DIR:-${PIP_FIND_LINKS:-}}; do
    dir=${dir#file://}
    [ -d "$dir" ] || continue
    for whl in "$dir"/torch-"$torch_pin"+"$flavour"-cp311-*.whl; do
      [ -f "$whl" ] && { link_or_copy "$whl" "$dest/torch/"; say "torch wheel: $whl"; return 0; }
    done
  done
  return 0
}

pick_base() {
  local engine=$1 base=${BASE_IMAGE:-}
  if [ -z "$base" ]; then
    base=docker.io/library/debian:bookworm-slim
    if [ "$engine" = buildah ] && image_exists buildah "$LOCAL_BASE"; then
      base=$LOCAL_BASE
      say "using the local base $LOCAL_BASE (made by 'make image-base'); BASE_IMAGE=... overrides" >&2
    fi
  fi
  echo "$base"
}

# One build with the engine: the common arguments (the caller's `args` and `pull`), then "$@".
engine_build() {
  if [ "$engine" = docker ]; then
    DOCKER_BUILDKIT=1 docker build "${args[@]}" "$@" .
  else
    # chroot isolation: this kind of VM cannot run the OCI runtime (crun: setrlimit RLIMIT_NOFILE denied).
    # --format docker: OCI image configs have no HEALTHCHECK and no SHELL.
    buildah bud --isolation chroot --format docker --layers "${pull[@]}" "${args[@]}" "$@" .
  fi
}

# Copy the mmcv wheel the builder stage compiled (image $2, in /wheels/mmcv/[<flavour>/]) into WHEEL_CACHE,
# where the next `make image` or `make setup` finds it instead of compiling again.
export_mmcv_wheel() {
  local engine=$1 image=$2 sub; sub=$(flavour_dir "$3")
  local cache=${WHEEL_CACHE:-.cache/wheels}/$sub src=/wheels/mmcv/$sub ctr mnt
  mkdir -p "$cache" 2>/dev/null || true
  [ -w "$cache" ] || { say "$cache is not writable: the compiled mmcv wheel stays in $image"; return 0; }
  if [ "$engine" = docker ]; then
    ctr=$(docker create "$image" true)
    docker cp "$ctr:$src." "$STAGE/export" && cp "$STAGE"/export/mmcv-2.1.0-*.whl "$cache/"
    docker rm "$ctr" >/dev/null
  else
    ctr=$(buildah from --pull-never "$image") && mnt=$(buildah mount "$ctr")
    cp "$mnt$src"mmcv-2.1.0-*.whl "$cache/"
    buildah umount "$ctr" >/dev/null && buildah rm "$ctr" >/dev/null
  fi
  say "compiled mmcv wheel saved: $(ls "$cache"mmcv-2.1.0-*.whl | tr '\n' ' ')"
}

image_size() {
  if [ "$engine" = docker ]; then
    docker image inspect --format '{{.Size}}' "$1" | awk '{printf "==> image size: %.2f GB (uncompressed)\n", $1/1e9}'
  else
    buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep -F "${1#localhost/}" | head -n1 \
      | sed 's/^/==> image size: /'
  fi
}

build_image() {
  local flavour engine base tag start builder
  flavour=$(flavour_of)
  engine=$(pick_engine)
  tag=$(image_tag)
  base=$(pick_base "$engine")
  stage_wheels "$flavour"
  local args=(${BUILD_FLAGS:-} --build-arg "BASE_IMAGE=$base" --build-arg "TORCH_CUDA=$flavour"
              --build-arg "TORCH_CUDA_ARCH_LIST=$(cuda_archs)"
              --build-arg "MAX_JOBS=${MAX_JOBS:-}" -f docker/Dockerfile) pull=(--pull)
  case "$base" in localhost/*) pull=(--pull-never) ;; esac
  say "building $tag (torch flavour $flavour, CUDA archs $(cuda_archs) unless an mmcv wheel is staged) from $base with $engine"
  start=$(date +%s)
  if ! ls "$STAGE/mmcv/$(flavour_dir "$flavour")"mmcv-*.whl >/dev/null 2>&1; then
    # No wheel: the builder compiles mmcv. Build that stage on its own first (the full build below reuses
    # its layers) and keep the wheel, even if a later step fails.
    builder=$tag-builder
    engine_build --target builder -t "$builder"
    export_mmcv_wheel "$engine" "$builder" "$flavour"
  fi
  engine_build -t "$tag"
  say "built $tag in $(( $(date +%s) - start )) s"
  image_size "$tag"
}

case "${1:-image}" in
  image) build_image ;;
  base) make_base ;;
  archs) cuda_archs ;;
  tag) image_tag ;;
  stage) flavour=$(flavour_of); stage_wheels "$flavour"; find "$STAGE" -name '*.whl' | sort ;;
  *) die "usage: docker/build.sh [image|base|archs|tag|stage]" ;;
esac
