#!/usr/bin/env bash
# MixedParts builder at the paper's scale (≈ 44 K images, ≈ 2.4 M samples):
# SynthParts writes annotation-only sources (no JPEGs), then `calico data build`
# runs under /usr/bin/time; wall time and peak RSS are printed.
#
#   bash tools/bench/data_scale.sh [IMAGES_PER_SOURCE=14700] [PER_OBJECT=12] [WORK_DIR]
#
# Targets: < 10 min and < 4 GB on a 2-core machine. The output (several GB of
# JSONL) is deleted at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
images="${1:-14700}"
per_object="${2:-12}"
work="${3:-$(mktemp -d)}"
cargo build --release -q -p calico-cli
bin="$PWD/target/release/calico"
mkdir -p "$work"
trap 'rm -rf "$work/build" "$work/synth"' EXIT
echo "== SynthParts, annotation only: $images images per format, 96×96"
/usr/bin/time -f "synth: wall %e s, peak RSS %M KB" \
    "$bin" data synth --annotation-only --images "$images" --size 96 --out "$work/synth" >/dev/null
echo "== build (per-object $per_object)"
/usr/bin/time -f "build: wall %e s, peak RSS %M KB" \
    "$bin" data build --per-object "$per_object" --out "$work/build" \
    --source paco_lvis="$work/synth/paco_lvis" \
    --source part_image_net="$work/synth/part_image_net" \
    --source ade20k_part234="$work/synth/ade20k_part234" 2>&1 | grep -v '^ *\(reading\|paco_lvis:\|part_image_net:\|ade20k_part234:\)'
du -sh "$work/build" | sed 's/^/output size: /'
