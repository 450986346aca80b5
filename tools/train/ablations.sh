#!/usr/bin/env bash
# Table 2's ablations on SynthParts with one command per row: Calico, w/o CEM,
# w/o CAM, w/o CEM w/o CAM — the same `calico train` run with `--ablation`,
# then `calico predict` on the held-out test split and `calico eval`.
#
#   bash tools/train/ablations.sh MIXEDPARTS_DIR OUT_DIR [TRAIN_CONFIG.json] [TEST_LIMIT] [PARALLEL]
#
# The model and its training defaults are PRESET's (default `tiny`; e.g.
# PRESET=tiny-staged for the staged recipe, which TRAIN_CONFIG can shorten),
# or MODEL_CONFIG=FILE's with its family's defaults (e.g.
# MODEL_CONFIG=tools/train/tiny-staged.model.json with TRAIN_CONFIG
# tools/train/tiny-staged-short.json: the staged encoders without stage 1b).
#
# MIXEDPARTS_DIR holds train.jsonl / val.jsonl / test.jsonl from `calico data
# build`; the evaluation uses TEST_LIMIT (default 150) samples spread evenly
# over test.jsonl. Writes OUT_DIR/<row>/ (the run), OUT_DIR/<row>.predictions.jsonl,
# OUT_DIR/<row>.eval.json and prints the average row of each evaluation.
# PARALLEL (default 1) runs that many trainings at once.
set -euo pipefail
mp="$1"; out="$2"; cfg="${3:-}"; limit="${4:-150}"; parallel="${5:-1}"
calico="${CALICO:-target/release/calico}"
mkdir -p "$out"
cfg_args=()
[ -n "$cfg" ] && cfg_args=(--config "$cfg")
model_args=(--preset "${PRESET:-tiny}")
[ -n "${MODEL_CONFIG:-}" ] && model_args=(--model-config "$MODEL_CONFIG")
# Held-out evaluation set: LIMIT samples spread evenly over test.jsonl (all
# sources and tasks), beside it so its lines are copies of test.jsonl's.
test="$mp/test_every_$limit.jsonl"
"$calico" data subset --data "$mp/test.jsonl" --count "$limit" --out "$test" > /dev/null

one() {
    local row="$1"; shift
    local t0=$SECONDS
    "$calico" train "${model_args[@]}" --data "$mp/train.jsonl" --out "$out/$row" "${cfg_args[@]}" \
        --similarity exact "$@" > "$out/$row.train.log" 2>&1
    "$calico" predict --data "$test" --weights "$out/$row/model" \
        --out "$out/$row.predictions.jsonl" > /dev/null 2>&1
    "$calico" eval --ground-truth "$test" --predictions "$out/$row.predictions.jsonl" \
        --out "$out/$row.eval.json" > "$out/$row.eval.txt" 2>&1
    echo "$row: trained and evaluated in $((SECONDS - t0)) s"
}

rows=("calico:" "no-cem:--ablation no-cem" "no-cam:--ablation no-cam" "no-cem-no-cam:--ablation no-cem-no-cam")
running=0
for r in "${rows[@]}"; do
    name="${r%%:*}"; args="${r#*:}"
    # shellcheck disable=SC2086
    one "$name" $args &
    running=$((running + 1))
    if [ "$running" -ge "$parallel" ]; then wait -n; running=$((running - 1)); fi
done
wait

python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
print("\n| model | AP50 | mIoU | Recall | SS | S-IoU |")
print("|---|---:|---:|---:|---:|---:|")
for row, label in [("calico", "Calico (tiny)"), ("no-cem", "w/o CEM"), ("no-cam", "w/o CAM"),
                   ("no-cem-no-cam", "w/o CEM, w/o CAM")]:
    p = os.path.join(out, row + ".eval.json")
    if not os.path.exists(p):
        print(f"| {label} | failed | | | | |"); continue
    a = json.load(open(p))["overall"]["average"]
    ap = "-" if a["ap50"] is None else f"{a['ap50']:.1f}"
    print(f"| {label} | {ap} | {a['miou']:.1f} | {a['recall']:.1f} | {a['ss']:.1f} | {a['s_iou']:.1f} |")
PY
