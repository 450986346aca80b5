#!/usr/bin/env bash
# Regenerate every committed parity case with the pinned reference versions:
#
#     bash tools/reference/make_parity_cases.sh [OUT_DIR]
#
# OUT_DIR defaults to crates/calico-model/tests/fixtures/parity. Each
# generator takes --out DIR and writes its cases there; docs/parity.md
# describes the file format.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${1:-$ROOT/crates/calico-model/tests/fixtures/parity}"
PY="$(bash "$ROOT/tools/reference/setup_model_env.sh" | tail -n 1)"
mkdir -p "$OUT"
for gen in "$ROOT"/tools/reference/parity/case_*.py; do
    echo "== $(basename "$gen")"
    "$PY" "$gen" --out "$OUT"
done
