#!/usr/bin/env python3
"""Where the names in common-object answers come from.

    python3 tools/train/name_sources.py GT.jsonl PREDICTIONS.jsonl SAMPLES.jsonl [SAMPLES.jsonl ...]

GT.jsonl is the samples file the predictions answer (`calico predict --data GT.jsonl`).
The SAMPLES files (e.g. a build's train/val/test.jsonl) tell which objects are
annotated on each image: every mask whose role is `object`, over all their samples.

For every common-object sample of GT.jsonl, each object the prediction names (its
mask labels, articles dropped) is counted as
  right                      one of the sample's own common objects,
  another common object      annotated on both images, but not the answer,
  on one image only          annotated on one of the two images,
  on neither image           annotated on neither,
per source and over all, in percent of the names.
"""
import collections
import json
import sys

ARTICLES = ("a ", "an ", "the ")
KINDS = ("right", "another common object", "on one image only", "on neither image")


def norm(label):
    label = label.strip().lower()
    for a in ARTICLES:
        if label.startswith(a):
            return label[len(a):]
    return label


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    gt = {s["id"]: s for s in read(argv[1])}
    objects = collections.defaultdict(set)
    for path in argv[3:]:
        for s in read(path):
            for m in s["masks"]:
                if m.get("role") == "object":
                    objects[s["images"][m["image"]]["file"]].add(norm(m["label"]))
    counts = collections.defaultdict(collections.Counter)
    for p in read(argv[2]):
        g = gt.get(p["id"])
        if g is None:
            sys.exit(f"{argv[2]}: prediction {p['id']} is not a sample of {argv[1]}")
        if g["task"] != "common_object":
            continue
        want = {norm(m["label"]) for m in g["masks"]}
        files = [im["file"] for im in g["images"]]
        for label in {norm(m["label"]) for m in p.get("masks", [])}:
            on = sum(label in objects[f] for f in files)
            kind = KINDS[0] if label in want else KINDS[1] if on == len(files) else \
                KINDS[2] if on else KINDS[3]
            counts[g["source"]][kind] += 1
            counts["all"][kind] += 1
    print("| source | names | " + " | ".join(KINDS) + " |")
    print("|---|---:|" + "---:|" * len(KINDS))
    for source in sorted(counts, key=lambda s: (s == "all", s)):
        c = counts[source]
        n = sum(c.values())
        cells = " | ".join(f"{100 * c[k] / n:.0f} %" for k in KINDS)
        print(f"| {source} | {n} | {cells} |")


if __name__ == "__main__":
    main(sys.argv)
