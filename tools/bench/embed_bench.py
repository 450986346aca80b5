#!/usr/bin/env python3
"""Label-embedding throughput: calico-eval against sentence-transformers, same run.

    python3 tools/bench/embed_bench.py [--labels 2000] [--batch 64] [--repeats 3]

Makes N distinct synthetic part labels ("left leg of the chair", "mug's
upper handle", ...), times sentence-transformers' `encode` on them (CPU,
batch B, best of R runs after a warm-up), runs
`cargo bench -p calico-eval --bench embed -- N --batch B --labels FILE` on
the same labels (R times, best kept), and prints labels/s for both and the
ratio (calico / sentence-transformers; > 1 means calico is faster).

Needs the model (`bash tools/reference/fetch_models.sh`) and
sentence-transformers + torch (see tools/reference/minilm_reference.py for
the pinned versions).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ADJECTIVES = ["left", "right", "front", "rear", "upper", "lower", "wooden", "metal",
              "small", "large", "inner", "outer"]
OBJECTS = ["chair", "table", "lamp", "car", "bicycle", "mug", "bottle", "laptop", "bird",
           "dog", "airplane", "guitar", "sofa", "kettle"]
PARTS = ["leg", "seat", "back", "arm", "wheel", "handle", "lid", "screen", "wing", "tail",
         "door", "shade", "spout", "keyboard", "cushion", "frame"]


def synthetic_label(i):
    a = ADJECTIVES[i % len(ADJECTIVES)]
    o = OBJECTS[(i // len(ADJECTIVES)) % len(OBJECTS)]
    p = PARTS[(i // (len(ADJECTIVES) * len(OBJECTS))) % len(PARTS)]
    form = (i // (len(ADJECTIVES) * len(OBJECTS) * len(PARTS))) % 4
    return [f"{a} {p} of the {o}", f"{o}'s {a} {p}", f"the {a} {o} {p}",
            f"{p} ({a} side) of a {o}"][form]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    args = ap.parse_args()

    labels = [synthetic_label(i) for i in range(args.labels)]
    if len(set(labels)) != len(labels):
        sys.exit(f"only {len(set(labels))} distinct synthetic labels; use fewer")

    model = SentenceTransformer(args.model, device="cpu")
    model.encode([f"warm {l}" for l in labels[: args.batch]], batch_size=args.batch)
    st_best = float("inf")
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.encode(labels, batch_size=args.batch, convert_to_numpy=True)
        st_best = min(st_best, time.perf_counter() - t)
    st_rate = len(labels) / st_best

    env = dict(os.environ, CALICO_MINILM_DIR=os.path.abspath(args.model))
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(labels) + "\n")
        labels_file = f.name
    try:
        cmd = ["cargo", "bench", "-q", "-p", "calico-eval", "--bench", "embed", "--",
               str(args.labels), "--batch", str(args.batch), "--labels", labels_file]
        results = []
        for _ in range(args.repeats):
            out = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True,
                                 text=True).stdout
            try:
                results.append(json.loads(out.strip().splitlines()[-1]))
            except (IndexError, json.JSONDecodeError):
                sys.exit("`cargo bench --bench embed` printed no JSON line (is it registered "
                         "with `harness = false` in crates/calico-eval/Cargo.toml?):\n" + out)
    finally:
        os.unlink(labels_file)
    best = max(results, key=lambda r: r["labels_per_s"])
    if best["labels"] != len(labels):
        sys.exit(f"cargo bench embedded {best['labels']} labels, expected {len(labels)}")

    print(f"{len(labels)} distinct labels, batch {args.batch}, best of {args.repeats}, "
          f"CPU threads: torch {torch.get_num_threads()}, machine {os.cpu_count()}")
    print(f"{'':28}{'labels/s':>10}{'seconds':>10}")
    print(f"{'sentence-transformers ' + version('sentence-transformers'):28}"
          f"{st_rate:>10.1f}{st_best:>10.3f}")
    print(f"{'calico-eval (candle)':28}{best['labels_per_s']:>10.1f}{best['seconds']:>10.3f}")
    print(f"ratio calico / sentence-transformers: {best['labels_per_s'] / st_rate:.2f} "
          f"(model load: calico {best['load_s']:.2f} s)")


if __name__ == "__main__":
    main()
