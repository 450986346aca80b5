#!/usr/bin/env bash
# Create (or reuse) the Python environment that runs the reference
# implementations behind the model parity cases:
#
#     bash tools/reference/setup_model_env.sh        # → .venv-ref/
#
# Versions are pinned in tools/reference/requirements-model.txt. Takes about
# two minutes on a fresh machine (torch is the large download).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${CALICO_REF_VENV:-$ROOT/.venv-ref}"
PYTHON="${PYTHON:-python3}"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check \
    -r "$ROOT/tools/reference/requirements-model.txt"
echo "$VENV/bin/python"
