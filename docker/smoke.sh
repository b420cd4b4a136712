#!/usr/bin/env bash
# Smoke test of a built image (`make image-smoke`), the way users run it: read-only root filesystem, tmpfs
# for /tmp, a volume for the logs, the tiny random-weight demo model mounted read-only, token auth on. Checks:
#   1. the image: runs as uid 1000, holds no compiler (nor nvcc), pip cache, tests, benchmarks or
#      model files; the doctor (codetr-doctor) says the stack can serve and, in a CUDA image, names the
#      architectures mmcv's kernels carry
#   2. an empty model store fails fast (exit 78) with a message that says what to mount
#   3. the server becomes healthy (the HEALTHCHECK command), PID 1 is the entrypoint
#   4. POST an image with the inference token -> 200 with detections; without the token -> rejected
#   5. /metrics on the metrics port has TorchServe's and our counters; a token refresh gives a working key
#   6. SIGTERM (docker/podman stop) ends the server within the grace period with exit status 0
# Variables: VARIANT, TORCH_CUDA, IMAGE (as for `make image`: default codetr-serve:cpu, with VARIANT=cuda
# codetr-serve:cu130), ENGINE (docker or podman), GRACE (stop timeout, default 30 s).
# Needs .venv (make setup) to pack the demo model and write the test image.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
tag=$(bash docker/build.sh tag)  # what `make image` built for the same VARIANT / TORCH_CUDA / IMAGE
grace=${GRACE:-30}
py=${VENV:-.venv}/bin/python
say() { printf '==> %s\n' "$*"; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
die() { printf 'SMOKE FAILED: %s\n' "$*" >&2; exit 1; }

if [ -n "${ENGINE:-}" ]; then engine=$ENGINE
elif command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1; then engine=docker
elif command -v podman >/dev/null; then engine=podman
else die "no Docker daemon and no podman: install podman (apt-get install podman) or start Docker"; fi
[ -x "$py" ] || die "$py not found: run 'make setup' first (it packs the demo model)"

# Some VMs refuse podman's default rlimits and crun's cgroup handling ("crun: setrlimit RLIMIT_NOFILE:
# Operation not permitted", "cgroups in hybrid mode not supported"); runc with the host's own limits works.
run_flags=()
if [ "$engine" = podman ] && ! podman run --rm --entrypoint true "$tag" >/dev/null 2>&1; then
  command -v runc >/dev/null || die "podman cannot run containers here; try: apt-get install runc"
  run_flags=(--runtime runc --ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=4096:4096")
  say "podman's defaults fail on this host: using ${run_flags[*]}"
fi

work=$(mktemp -d /tmp/codetr-smoke.XXXXXX)
name=codetr-smoke-$$
cleanup() {
  "$engine" rm -f "$name" >/dev/null 2>&1 || true
  "$engine" volume rm -f "$name-logs" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "1. image contents ($tag)"
"$engine" run --rm "${run_flags[@]}" --user 0 --entrypoint /bin/bash "$tag" -c '
  set -u; bad=0
  for tool in gcc g++ cc c++ nvcc make; do command -v "$tool" && { echo "compiler in image: $tool"; bad=1; }; done
  # nvcc and its front end cicc belong to the builder stage only (triton ships a ptxas for torch.compile)
  cuda_tools=$(find / -xdev \( -name nvcc -o -name cicc -o -path /usr/local/cuda \) -not -path "/proc/*" -print)
  [ -z "$cuda_tools" ] || { echo "CUDA compiler in image:"; echo "$cuda_tools"; bad=1; }
  for dir in /root/.cache/pip /home/model-server/.cache /src /wheels; do [ -e "$dir" ] && { echo "left over: $dir"; bad=1; }; done
  found=$(find / -xdev \( -name "*.mar" -o -name "*.pth" -o -name "*.safetensors" -o -name model_store \
          -o -path "*/tests/unit" -o -path "*/bench/*" \) -not -path "/proc/*" -print | grep -v "/site-packages/" || true)
  [ -z "$found" ] || { echo "model or test files in image:"; echo "$found"; bad=1; }
  /opt/venv/bin/python -m pip list 2>/dev/null | grep -iE "^(pytest|ruff|hadolint)" && { echo "dev tools in image"; bad=1; }
  getent passwd 1000
  exit $bad' || die "the image holds what it should not (see above)"
[ "$("$engine" image inspect --format '{{.Config.User}}' "$tag")" = "1000:1000" ] || die "image USER is not 1000:1000"

say "1b. the doctor in the image: the stack, and the GPUs mmcv's kernels were compiled for"
"$engine" run --rm "${run_flags[@]}" --entrypoint codetr-doctor "$tag" >"$work/doctor.txt" 2>&1 \
  || { cat "$work/doctor.txt"; die "codetr-doctor in the image says the stack cannot serve"; }
grep -E '^(torch|gpu|mmcv ops) ' "$work/doctor.txt" | sed 's/  */ /g'
flavour=$("$engine" image inspect --format '{{index .Config.Labels "io.codetr-serve.torch-flavour"}}' "$tag")
if [ "$flavour" != cpu ]; then
  grep -qE '^mmcv ops .*CUDA [0-9.]+ kernels sm_' "$work/doctor.txt" \
    || die "a $flavour image whose mmcv ops have no CUDA kernels (see the doctor's 'mmcv ops' row)"
fi

say "2. an empty model store fails fast"
mkdir -p "$work/empty"
set +e
"$engine" run --rm "${run_flags[@]}" --read-only --tmpfs /tmp -v "$work/empty:/home/model-server/model-store:ro" \
  "$tag" >"$work/empty.log" 2>&1
rc=$?
set -e
cat "$work/empty.log"
[ "$rc" = 78 ] || die "empty store: exit status $rc, expected 78"
grep -q "Mount your model store" "$work/empty.log" || die "empty store: the message does not say what to mount"

say "3. start on the tiny demo model (read-only root, tmpfs /tmp, a volume for the logs)"
./archive.sh --config config/co_dino_tiny.py --name co_detr --format no-archive --out "$work/store" >/dev/null
chmod -R a+rX "$work"
ports=$("$py" -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
read -r infer_port metrics_port <<<"$ports"
start=$(date +%s)
"$engine" run -d --name "$name" "${run_flags[@]}" --read-only --tmpfs /tmp -v "$name-logs:/home/model-server/logs" \
  -v "$work/store:/home/model-server/model-store:ro" \
  -p "127.0.0.1:$infer_port:8080" -p "127.0.0.1:$metrics_port:8082" "$tag" >/dev/null
until health=$("$engine" exec "$name" codetr-healthcheck 2>&1); do
  [ "$("$engine" inspect --format '{{.State.Running}}' "$name")" = true ] \
    || { "$engine" logs "$name" | tail -n 40; die "the container exited while starting"; }
  [ $(( $(date +%s) - start )) -lt 600 ] || { "$engine" logs "$name" | tail -n 40; die "not healthy after 600 s: $health"; }
  sleep 3
done
say "healthy after $(( $(date +%s) - start )) s: $health"
pid1=$("$engine" exec "$name" cat /proc/1/cmdline | tr '\0' ' ')
case "$pid1" in *codetr-entrypoint*) say "PID 1: $pid1" ;; *) die "PID 1 is '$pid1', not the entrypoint" ;; esac

say "4. predictions with and without the token"
"$py" -c 'import sys, numpy as np; from PIL import Image
Image.fromarray(np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(sys.argv[1])' "$work/img.jpg"
token=$("$engine" exec "$name" codetr-healthcheck --print-token)
url=http://127.0.0.1:$infer_port/predictions/co_detr
t0=$(date +%s%N)
code=$(curl -sS -o "$work/out.json" -w '%{http_code}' -H "Authorization: Bearer $token" \
       -H 'Content-Type: image/jpeg' --data-binary @"$work/img.jpg" "$url")
say "POST $url -> HTTP $code in $(ms_since "$t0") ms"
[ "$code" = 200 ] || { head -c 400 "$work/out.json"; die "prediction answered $code"; }
"$py" - "$work/out.json" <<'PY' || die "the answer is not a detections document"
import json, sys
body = json.load(open(sys.argv[1]))
print(f"    {body['schema']}: model {body['model']['name']} {body['model']['version']}, "
      f"{len(body['detections'])} detections on {body['image']['width']}x{body['image']['height']}")
PY
code=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Content-Type: image/jpeg' --data-binary @"$work/img.jpg" "$url")
say "POST without a token -> HTTP $code"
[ "$code" != 200 ] || die "a request without token was served: token auth is off"

say "5. metrics and token refresh"
curl -sS "http://127.0.0.1:$metrics_port/metrics" >"$work/metrics.txt"
grep -E '^(ts_inference_requests_total|CoDetrImages)' "$work/metrics.txt" | head -n 4
grep -q '^ts_inference_requests_total' "$work/metrics.txt" || die "/metrics lacks ts_inference_requests_total"
grep -q '^CoDetr' "$work/metrics.txt" || die "/metrics lacks the CoDetr* metrics declared in config/metrics.yaml"
new_token=$("$engine" exec "$name" codetr-healthcheck --refresh-token)
[ "$new_token" != "$token" ] || die "token refresh returned the old key"
code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $new_token" -H 'Content-Type: image/jpeg' \
       --data-binary @"$work/img.jpg" "$url")
say "refreshed token -> HTTP $code"
[ "$code" = 200 ] || die "the refreshed token was rejected ($code)"

say "6. SIGTERM ($engine stop -t $grace)"
t0=$(date +%s%N)
"$engine" stop -t "$grace" "$name" >/dev/null
took=$(ms_since "$t0")
rc=$("$engine" inspect --format '{{.State.ExitCode}}' "$name")
"$engine" logs "$name" 2>&1 | grep -E 'codetr-entrypoint' | tail -n 3
say "stopped in $took ms, exit status $rc"
[ "$rc" = 0 ] || die "exit status $rc after SIGTERM, expected 0"
[ "$took" -lt $(( grace * 1000 )) ] || die "stop took $took ms: SIGKILL after the grace period"
say "smoke test passed"
