#!/usr/bin/env python3
"""RLE encode / decode / IoU: calico-masks against pycocotools, measured in the same run.

    python3 tools/bench/masks_bench.py [--masks 100] [--pairs 1000] [--repeats 5] [--rounds 3]

Writes blob-shaped 480×640 masks (unions of ellipses and rectangles, like
object masks) to a temporary directory, times pycocotools on them, runs
`cargo bench -p calico-masks --bench rle` on the same files, and prints the
times and the speed-up (pycocotools time / calico time; > 1 means faster).

The two sides take turns, `--rounds` times (pycocotools best of `--repeats`,
then calico best of `--repeats`), and each keeps its best time over all
rounds: on a shared machine a slow spell then hits both sides alike instead of
whichever happened to run during it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version

import numpy as np
from pycocotools import mask as M

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def blob_mask(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    m = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.05, 0.45) * h, rng.uniform(0.05, 0.45) * w
        if rng.random() < 0.6:
            m |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        else:
            m |= (abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)
    return m.astype(np.uint8)


def best_of(repeats, f):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--masks", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=640)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    h, w, n = a.height, a.width, a.masks
    masks = np.stack([blob_mask(rng, h, w) for _ in range(n)], axis=2)  # h × w × n
    pairs = [[int(rng.integers(0, n)), int(rng.integers(0, n))] for _ in range(a.pairs)]

    with tempfile.TemporaryDirectory() as d:
        np.ascontiguousarray(masks.transpose(2, 0, 1)).tofile(os.path.join(d, "masks.bin"))
        with open(os.path.join(d, "meta.json"), "w") as f:
            json.dump(dict(n=n, height=h, width=w, pairs=pairs, repeats=a.repeats), f)

        fortran = np.asfortranarray(masks)
        rles = M.encode(fortran)
        cases = {
            "encode": lambda: M.encode(fortran),
            "decode": lambda: M.decode(rles),
            "iou_matrix": lambda: M.iou(rles, rles, [0] * n),
            "iou_pairs": lambda: [M.iou([rles[i]], [rles[j]], [0]) for i, j in pairs],
        }
        bench = ["cargo", "bench", "-q", "-p", "calico-masks", "--bench", "rle", "--", d]
        subprocess.run(["cargo", "bench", "-q", "--no-run", "-p", "calico-masks", "--bench", "rle"],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        py = {k: float("inf") for k in cases}
        rs = {k: float("inf") for k in cases}
        for _ in range(max(a.rounds, 1)):
            for k, f in cases.items():
                py[k] = min(py[k], best_of(a.repeats, f))
            out = subprocess.run(bench, cwd=ROOT, check=True, capture_output=True, text=True).stdout
            got = json.loads(out.strip().splitlines()[-1])
            threads = got["threads"]
            for k in cases:
                rs[k] = min(rs[k], got[k])

    names = {
        "encode": f"encode {n} masks {h}×{w}",
        "decode": f"decode {n} masks (from strings)",
        "iou_matrix": f"IoU {n}×{n} matrix (from strings)",
        "iou_pairs": f"IoU {a.pairs} pairs (from strings)",
    }
    print(f"pycocotools {version('pycocotools')} vs calico-masks ({threads} threads), "
          f"best of {a.repeats} × {max(a.rounds, 1)} alternating rounds, {os.cpu_count()} CPUs")
    print(f"{'operation':<36} {'pycocotools':>12} {'calico':>12} {'speed-up':>9}")
    worst = float("inf")
    for k, label in names.items():
        ratio = py[k] / rs[k]
        worst = min(worst, ratio)
        print(f"{label:<36} {py[k]*1e3:>9.2f} ms {rs[k]*1e3:>9.2f} ms {ratio:>8.1f}×")
    print(f"slowest speed-up: {worst:.1f}× (target ≥ 3×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
