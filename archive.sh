#!/usr/bin/env bash
# Build model_store/<name>.mar (or a no-archive folder) from an mmdet config and checkpoint.
#   ./archive.sh --config config/serve_co_dino_swin_l_o365tococo.py --checkpoint co_dino_swin_l.pth --format no-archive
# Run `./archive.sh --help` for every option.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON_BIN:-$here/.venv/bin/python}
[ -x "$python" ] || { echo "archive.sh: $python not found; run 'make setup' first" >&2; exit 1; }
exec "$python" -m codetr_serve.tools.archive "$@"
