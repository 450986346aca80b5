#!/usr/bin/env bash
# The GPU check of `--device cuda` (docs/gpu.md): run on a machine with an NVIDIA GPU, from the
# repository root, with a calico built with `--features cuda`:
#
#   bash tools/device/gpu_check.sh CALICO_BIN OUT_DIR
#
# CALICO_BIN may be xz-compressed (`*.xz`): a stripped CUDA build is about 80 MB, 13 MB as xz.
# From a machine without a GPU (docs/gpu.md, "Building with CUDA"):
#   cargo build --release -p calico-cli --features cuda --target-dir target-cuda
#   mkdir -p .gpu && strip -o .gpu/calico target-cuda/release/calico && xz -f .gpu/calico
# then carry .gpu (ignored by git) and run `bash tools/device/gpu_check.sh .gpu/calico.xz "$OUT"`.
#
# 0. `calico model parity` on the GPU: the 65 committed parity cases (every block against
#    PyTorch, docs/parity.md), each case's relative error against its tolerance;
# 1. `calico demo` on the CPU and on the GPU (the shipped tiny model, 60 held-out samples):
#    the answers and masks of the two devices compared line by line, and both Table 5s;
# 2. `calico predict` with the `small` preset's random weights (untrained, but the tensor
#    sizes are small's) on 20 samples, CPU against GPU: wall time and whether the answers agree;
# 3. `calico serve` of the demo model on the GPU: /api/health's device and one segmentation
#    request, whose answer is compared with the CPU's answer to the same request;
# 4. `--quantized-llm` (docs/quantized.md): the demo model quantized to Q8_0 with
#    `calico model quantize`, then `calico predict` of 20 held-out samples with both matmuls on
#    the CPU and on the GPU: answers and masks compared with the float model's CPU predictions.
# Prints a summary and writes it to OUT_DIR/gpu_check.md. Exits non-zero if a GPU run fails.
# GPU_CHECK_DEVICE=cpu runs the "GPU" side on the CPU too, to try the script on a machine without one.
set -euo pipefail
gpu_device=${GPU_CHECK_DEVICE:-cuda}
bin=${1:?usage: gpu_check.sh CALICO_BIN OUT_DIR}
out=${2:?usage: gpu_check.sh CALICO_BIN OUT_DIR}
mkdir -p "$out"
if [[ $bin == *.xz ]]; then
  xz -dc "$bin" > /tmp/calico-gpu-check
  chmod +x /tmp/calico-gpu-check
  bin=/tmp/calico-gpu-check
fi
bin=$(realpath "$bin")

# candle's CUDA backend loads CUDA 13's runtime, cuBLAS and cuRAND: the system's if the loader
# knows them, else those of the Python `nvidia-*` packages (a PyTorch install has them).
if ! ldconfig -p 2>/dev/null | grep -q 'libcublas.so.13'; then
  libs=$(python3 - <<'PY'
import glob, os, site, sys
dirs = set()
roots = site.getsitepackages() + [p for p in sys.path if p.endswith("site-packages")]
for root in roots:
    for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10"):
        for f in glob.glob(os.path.join(root, "nvidia", "**", name), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
  export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo "no nvidia-smi")
summary=$out/gpu_check.md
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "- GPU: $gpu; CPU cores: $(nproc)"
  echo "- calico: $bin"
} > "$summary"

seconds() { # seconds COMMAND…: runs it, prints its wall time in seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$out/last.log" 2>&1 || { cat "$out/last.log" >&2; return 1; }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.2f}')"
}

# Compares two predictions files line by line: answers equal, and masks' IoU.
compare() {
  python3 - "$1" "$2" <<'PY'
import json, sys
def load(p):
    return [json.loads(l) for l in open(p) if l.strip()]
a, b = load(sys.argv[1]), load(sys.argv[2])
same_text = sum(x.get("answer") == y.get("answer") for x, y in zip(a, b))
masks = same_masks = 0
for x, y in zip(a, b):
    for m, n in zip(x.get("masks", []), y.get("masks", [])):
        masks += 1
        same_masks += m.get("rle") == n.get("rle")
print(f"{len(a)} / {len(b)} predictions; answers identical: {same_text} of {min(len(a), len(b))}; "
      f"masks identical: {same_masks} of {masks}")
PY
}

echo "== 0. calico model parity on the GPU" >&2
parity_rc=0
"$bin" model parity crates/calico-model/tests/fixtures/parity --device "$gpu_device" \
  > "$out/parity-gpu.txt" 2>&1 || parity_rc=$?
{
  echo
  echo "## calico model parity (committed cases) on $gpu_device: exit $parity_rc"
  echo
  echo '```'
  grep -E 'within tolerance|^error' "$out/parity-gpu.txt" || tail -5 "$out/parity-gpu.txt"
  echo '```'
} >> "$summary"

echo "== 1. calico demo, CPU then GPU" >&2
t_cpu=$(seconds "$bin" demo --device cpu --out "$out/demo-cpu")
t_gpu=$(seconds "$bin" demo --device "$gpu_device" --out "$out/demo-gpu")
{
  echo
  echo "## calico demo (tiny, 60 held-out samples)"
  echo
  echo "- wall: CPU $t_cpu s, GPU $t_gpu s"
  echo "- $(compare "$out/demo-cpu/predictions.jsonl" "$out/demo-gpu/predictions.jsonl")"
  echo
  echo "CPU eval:"; echo '```'; python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['overall']['average'], indent=1))" "$out/demo-cpu/eval.json"; echo '```'
  echo "GPU eval:"; echo '```'; python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['overall']['average'], indent=1))" "$out/demo-gpu/eval.json"; echo '```'
} >> "$summary"

echo "== 2. calico predict, preset small, CPU then GPU" >&2
test=$out/demo-cpu/mixedparts/test.jsonl
sides=()
rm -f "$out/small-times.txt"
for dev in cpu "$gpu_device"; do
  side=$([[ ${#sides[@]} -eq 0 ]] && echo cpu || echo gpu)
  sides+=("$side")
  t=$(seconds "$bin" predict --device "$dev" --preset small --data "$test" --limit 20 \
        --max-new-tokens 64 --out "$out/small-$side.jsonl")
  echo "$side ($dev) $t" >> "$out/small-times.txt"
done
{
  echo
  echo "## calico predict --preset small (random weights), 20 samples, 64 new tokens"
  echo
  while read -r side dev t; do echo "- $side $dev: $t s"; done < "$out/small-times.txt"
  echo "- $(compare "$out/small-cpu.jsonl" "$out/small-gpu.jsonl")"
} >> "$summary"
rm -f "$out/small-times.txt" "$out/last.log"

echo "== 3. calico serve, GPU then CPU" >&2
pair=$(python3 - "$test" <<'PY'
import json, os, sys
first = json.loads(open(sys.argv[1]).readline())
base = os.path.dirname(sys.argv[1])
print(" ".join(os.path.join(base, im["file"]) for im in first["images"][:2]))
PY
)
read -r img1 img2 <<< "$pair"
serve_once() { # serve_once DEVICE NAME: starts calico serve, saves health and one answer, stops it
  local log=$out/serve-$2.log
  "$bin" serve --weights "$out/demo-cpu/model" --device "$1" --addr 127.0.0.1:0 > "$log" 2>&1 &
  local pid=$! url=""
  for _ in $(seq 120); do
    url=$(grep -o 'http://127\.0\.0\.1:[0-9]*' "$log" | head -1 || true)
    [[ -n $url ]] && break
    sleep 1
  done
  [[ -n $url ]] || { cat "$log" >&2; kill $pid 2>/dev/null; return 1; }
  curl -s "$url/api/health" > "$out/serve-$2-health.json"
  curl -s -F image=@"$img1" -F image=@"$img2" -F task=common-parts "$url/api/segment" \
    > "$out/serve-$2-answer.json"
  kill $pid
  wait $pid 2>/dev/null || true
}
serve_once "$gpu_device" gpu
serve_once cpu cpu
python3 - "$out" >> "$summary" <<'PY'
import json, sys
out = sys.argv[1]
h = json.load(open(f"{out}/serve-gpu-health.json"))
g = json.load(open(f"{out}/serve-gpu-answer.json"))
c = json.load(open(f"{out}/serve-cpu-answer.json"))
print()
print("## calico serve (the demo model), one common-parts request")
print()
print(f"- GPU health: device {h.get('device')}, model {h.get('model')}")
print(f"- GPU: {g.get('elapsed_s', 0):.3f} s, {len(g.get('masks', []))} masks; "
      f"CPU: {c.get('elapsed_s', 0):.3f} s, {len(c.get('masks', []))} masks")
print(f"- answers identical: {g.get('answer') == c.get('answer')}; "
      f"masks identical: {g.get('masks') == c.get('masks')}")
PY

echo "== 4. --quantized-llm, CPU then GPU" >&2
"$bin" model quantize --weights "$out/demo-cpu/model" --type q8_0 --out "$out/demo-q8" \
  > "$out/quantize.log" 2>&1 || { cat "$out/quantize.log" >&2; exit 1; }
"$bin" predict --device cpu --weights "$out/demo-cpu/model" --data "$test" --limit 20 \
  --out "$out/q-float-cpu.jsonl" > /dev/null 2>&1
{
  echo
  echo "## --quantized-llm: the demo model in Q8_0, 20 samples, against the float model on the CPU"
  echo
  for matmul in dequantize q8; do
    for dev in cpu "$gpu_device"; do
      t=$(seconds "$bin" predict --device "$dev" --weights "$out/demo-q8" --quantized-llm "$matmul" \
            --data "$test" --limit 20 --out "$out/q-$matmul-$dev.jsonl")
      echo "- $matmul on $dev ($t s): $(compare "$out/q-float-cpu.jsonl" "$out/q-$matmul-$dev.jsonl")"
    done
  done
} >> "$summary"
rm -f "$out/last.log"
cat "$summary"
