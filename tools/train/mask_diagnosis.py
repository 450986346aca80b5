#!/usr/bin/env python3
"""Are a model's masks poor because it names the wrong things, or poor anyway?

For every predicted mask whose label names a ground-truth mask of the same
image (exact match once a leading "the"/"a"/"an" and case are dropped), the
IoU with the best such ground-truth mask, grouped by the ground truth's role
(object, common_part, unique_part) and source. Predicted masks whose label
names nothing on their image are counted apart, with their best IoU against
any ground-truth mask of the image. A side experiment for docs/tiny-recipe.md
("Where the masks fall short").

Needs pycocotools and numpy. Example:
  python3 tools/train/mask_diagnosis.py mixedparts/test.jsonl run.pred.jsonl
"""

import argparse
import json
from collections import defaultdict

import numpy as np
from pycocotools import mask as coco


def bare(label: str) -> str:
    label = label.lower().strip()
    for article in ("the ", "a ", "an "):
        if label.startswith(article):
            return label[len(article):]
    return label


def rle(m: dict) -> dict:
    return {"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()}


def read_jsonl(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ground_truth", help="samples.jsonl (calico data build)")
    ap.add_argument("predictions", help="predictions.jsonl (calico predict)")
    args = ap.parse_args()
    truth = {s["id"]: s for s in read_jsonl(args.ground_truth)}
    named = defaultdict(list)  # (role, source) -> [(iou, gt area share)]
    unnamed = []
    for p in read_jsonl(args.predictions):
        s = truth.get(p["id"])
        if s is None:
            raise SystemExit(f"{args.predictions}: sample {p['id']!r} is not in {args.ground_truth}")
        for m in p["masks"]:
            on_image = [g for g in s["masks"] if g["image"] == m["image"]]
            if not on_image:
                continue
            same = [g for g in on_image if bare(g["label"]) == bare(m["label"])]
            pool = same or on_image
            ious = coco.iou([rle(m)], [rle(g) for g in pool], [0] * len(pool))[0]
            k = int(np.argmax(ious))
            if same:
                h, w = pool[k]["rle"]["size"]
                share = coco.area(rle(pool[k])) / (h * w)
                named[(pool[k].get("role", "?"), s["source"])].append((ious[k], share))
            else:
                unnamed.append(ious[k])
    print(f"{'role':<12} {'source':<16} {'masks':>6} {'mean IoU':>9} {'IoU>=0.5':>9} {'GT area':>8}")
    everything = []
    for (role, source), rows in sorted(named.items()):
        a = np.array(rows)
        everything += list(a[:, 0])
        print(f"{role:<12} {source:<16} {len(a):>6} {100 * a[:, 0].mean():>8.1f}% "
              f"{100 * (a[:, 0] >= 0.5).mean():>8.1f}% {100 * a[:, 1].mean():>7.1f}%")
    for name, v in (("named right", everything), ("named wrong", unnamed)):
        if v:
            v = np.array(v)
            print(f"{name:<29} {len(v):>6} {100 * v.mean():>8.1f}% {100 * (v >= 0.5).mean():>8.1f}%")


if __name__ == "__main__":
    main()
