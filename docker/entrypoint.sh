#!/usr/bin/env bash
# Container entrypoint (/usr/local/bin/codetr-entrypoint): check the mounts, then run TorchServe in the
# foreground and stop it cleanly on SIGTERM / SIGINT. Arguments are passed on to `torchserve`.
#
# Why this script stays PID 1 instead of `exec torchserve --foreground`: TorchServe 0.12's launcher
# (ts/model_server.py) starts the Java frontend as a child and only waits for it, without a SIGTERM
# handler. The kernel drops signals that PID 1 has no handler for, so `docker stop` would wait out the
# grace period and SIGKILL (measured: 15 s, status 137). Under an init that forwards the signal, the launcher
# gets the signal and dies at once, the init exits with it and the JVM is killed mid-way (measured with
# podman --init: 0.5 s, 143).
# Here the signal goes to the JVM, whose shutdown hook closes the ports and stops the workers, and the
# script waits for it (2.9 s, 0). docker/README.md has the table.
#
# Environment (defaults are set in docker/Dockerfile):
#   MODEL_STORE                mounted model store: NAME.mar / NAME.tar.gz files or no-archive folders
#   TS_CONFIG_FILE             TorchServe config (also read by TorchServe's launcher itself)
#   CODETR_WORKDIR             start dir: TorchServe writes key_file.json here (default /tmp/torchserve)
#   TEMP, LOG_LOCATION         must be writable (tmpfs / volumes when the root filesystem is read-only)
#   CODETR_DISABLE_TOKEN_AUTH  1 = start with --disable-token-auth (only behind a gateway that authenticates)
# Exit status: 0 after a requested stop, 78 when a mount or setting is wrong (nothing was started), else
# non-zero when TorchServe ended on its own.
set -uo pipefail

store=${MODEL_STORE-/home/model-server/model-store}
config=${TS_CONFIG_FILE:-/home/model-server/config/config.properties}
workdir=${CODETR_WORKDIR:-/tmp/torchserve}
tmp_dir=${TEMP:-/tmp}
log_dir=${LOG_LOCATION:-/home/model-server/logs}
# TorchServe keeps its pid file in Python's tempfile.gettempdir(): TMPDIR, else TEMP, else TMP.
pid_file=${TMPDIR:-${TEMP:-${TMP:-/tmp}}}/.model_server.pid
mount_hint="docker run -v /srv/store:/home/model-server/model-store:ro ... (build a store with: ./archive.sh --config CONFIG --checkpoint CKPT --format no-archive --out /srv/store)"

say() { printf 'codetr-entrypoint: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 78; }

# ---- checks: fail fast, before Java starts, with what to mount ----
[ -n "$store" ] || fail "MODEL_STORE is set but empty: point it at the mounted model store. Mount one with: $mount_hint"
[ -d "$store" ] || fail "model store $store does not exist. Mount one with: $mount_hint"
{ [ -r "$store" ] && [ -x "$store" ]; } \
  || fail "model store $store is not readable by uid $(id -u): make it world-readable (chmod -R a+rX) or owned by uid 1000 (on SELinux hosts add :z to the -v option)"
models=()
for entry in "$store"/*; do   # the glob skips hidden entries, as TorchServe's --models all does
  [ -e "$entry" ] || continue
  name=${entry##*/}
  if [ -f "$entry" ]; then
    case "$name" in *.mar|*.tar.gz) models+=("$name") ;; *) say "ignoring $name: not a .mar / .tar.gz file" ;; esac
  elif [ -f "$entry/MAR-INF/MANIFEST.json" ]; then
    models+=("$name")
  else
    say "ignoring $name/: no MAR-INF/MANIFEST.json, so not a model folder (./archive.sh --format no-archive makes one)"
  fi
done
[ ${#models[@]} -gt 0 ] || fail "no model in $store (it needs NAME.mar files or no-archive model folders). Mount your model store with: $mount_hint"
[ -f "$config" ] || fail "TorchServe config $config not found: mount one there or set TS_CONFIG_FILE"
for dir in "$tmp_dir" "$log_dir"; do
  mkdir -p "$dir" 2>/dev/null
  [ -d "$dir" ] && [ -w "$dir" ] \
    || fail "$dir is not writable by uid $(id -u): with a read-only root filesystem mount a writable volume or tmpfs there (-v codetr-logs:$dir, --tmpfs $dir)"
done
mkdir -p "$workdir" 2>/dev/null && cd "$workdir" \
  || fail "cannot create the start dir $workdir (CODETR_WORKDIR): it must be on a writable mount such as /tmp"
rm -f "$pid_file" key_file.json   # leftovers of an earlier run on a persistent volume

flags=(--start --foreground --ncs --ts-config "$config" --model-store "$store")
case "${CODETR_DISABLE_TOKEN_AUTH:-0}" in
  1|true|yes) flags+=(--disable-token-auth); say "token auth is OFF (CODETR_DISABLE_TOKEN_AUTH): only run this behind a gateway that authenticates" ;;
  0|false|no|"") ;;
  *) fail "CODETR_DISABLE_TOKEN_AUTH must be 1 or 0, not '$CODETR_DISABLE_TOKEN_AUTH'" ;;
esac
say "models: ${models[*]} (store $store); start dir $workdir"

# ---- run and supervise ----
stop_requested=0
jvm_pid() {   # the Java frontend: from TorchServe's pid file, else the launcher's child
  local pid=""
  [ -r "$pid_file" ] && read -r pid <"$pid_file"
  [ -n "$pid" ] || pid=$(cat "/proc/$launcher/task/$launcher/children" 2>/dev/null)
  echo "${pid%% *}"
}
on_signal() {
  stop_requested=1
  # A signal can arrive before `launcher=$!` has run: $! is already the launcher once `torchserve &` has
  # forked, and empty before that (then nothing is started at all, see below). Never an unset variable:
  # under `set -u` that would end this script with 127 and leave TorchServe running.
  launcher=${launcher:-${!:-}}
  if [ -z "$launcher" ]; then
    say "$1 received before TorchServe started: not starting it"
    return 0
  fi
  jvm=$(jvm_pid)
  say "$1 received: stopping TorchServe (java pid ${jvm:-unknown})"
  kill -TERM "${jvm:-$launcher}" 2>/dev/null
}
launcher=""
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

[ "$stop_requested" = 1 ] && exit 0
torchserve "${flags[@]}" "$@" --models "${models[@]}" &
launcher=$!
# A signal between the check above and the fork found no launcher to stop: stop it now.
[ "$stop_requested" = 1 ] && kill -TERM "$launcher" 2>/dev/null
# `wait` returns early when a trapped signal arrives: keep waiting until the launcher has really exited.
while wait "$launcher"; status=$?; kill -0 "$launcher" 2>/dev/null; do :; done
# The launcher can die before the JVM (e.g. a terminal's Ctrl-C reaches the whole process group): as PID 1
# we inherit the JVM, so wait until it is gone (a zombie counts as gone).
jvm=$(jvm_pid)
jvm_alive() { [ -n "$jvm" ] && [ -e "/proc/$jvm" ] && ! grep -q '^State:.*Z' "/proc/$jvm/status" 2>/dev/null; }
# A stop that reached only the launcher (signalled before the JVM existed) must still end the JVM.
[ "$stop_requested" = 1 ] && jvm_alive && kill -TERM "$jvm" 2>/dev/null
while jvm_alive; do sleep 0.2; done
if [ "$stop_requested" = 1 ]; then
  say "TorchServe stopped"
  exit 0
fi
say "TorchServe exited on its own (launcher status $status): see its log above"
[ "$status" -ne 0 ] && exit "$status"
exit 1
