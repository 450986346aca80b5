#!/usr/bin/env python3
"""Write random mask cases with pycocotools' (and Pillow's) answers.

The Rust test `crates/calico-masks/tests/pycocotools_parity.rs` reads the file
and checks that calico-masks gives identical strings and values.

    python3 tools/reference/pycocotools_cases.py --seed 7 --masks 2000 --out cases.json

Masks are stored row-major, packed 8 pixels per byte (numpy.packbits, big bit
order) and base64-encoded.
"""
import argparse
import base64
import json
import sys

import numpy as np
import PIL
from importlib.metadata import version
from PIL import Image
from pycocotools import mask as M


def pack(m):
    return base64.b64encode(np.packbits(m.astype(np.uint8).ravel()).tobytes()).decode()


def s(counts):
    return counts.decode() if isinstance(counts, bytes) else counts


def random_size(rng):
    kind = rng.integers(0, 10)
    if kind == 0:
        return 1, 1
    if kind == 1:
        return 1, int(rng.integers(1, 70))
    if kind == 2:
        return int(rng.integers(1, 70)), 1
    if kind == 3:
        return int(rng.integers(60, 130)), int(rng.integers(60, 130))
    return int(rng.integers(2, 48)), int(rng.integers(2, 48))


def random_mask(rng, h, w):
    kind = rng.integers(0, 9)
    if kind == 0:
        return np.zeros((h, w), np.uint8)
    if kind == 1:
        return np.ones((h, w), np.uint8)
    if kind == 2:  # noise of random density
        return (rng.random((h, w)) < rng.random()).astype(np.uint8)
    if kind == 3:  # a border-touching frame or edge strip
        m = np.zeros((h, w), np.uint8)
        side = rng.integers(0, 4)
        t = int(rng.integers(1, max(2, min(h, w) // 2 + 1)))
        [m[:t, :], m[-t:, :], m[:, :t], m[:, -t:]][side][...] = 1
        return m
    # unions of rectangles and ellipses, possibly touching borders
    m = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 5))):
        cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
        ry, rx = rng.uniform(0.05, 0.8) * h + 0.5, rng.uniform(0.05, 0.8) * w + 0.5
        if rng.random() < 0.5:
            m |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        else:
            m |= ((abs(yy - cy) <= ry) & (abs(xx - cx) <= rx)).astype(np.uint8)
    if rng.random() < 0.3:
        m ^= (rng.random((h, w)) < 0.05).astype(np.uint8)
    return m


def random_polygon(rng, h, w):
    k = int(rng.integers(1, 13))
    pts = []
    for _ in range(k):
        x = rng.uniform(-0.3, 1.3) * w
        y = rng.uniform(-0.3, 1.3) * h
        style = rng.integers(0, 4)
        if style == 0:
            x, y = round(x), round(y)
        elif style == 1:
            x, y = round(x * 2) / 2, round(y * 2) / 2
        elif style == 2:
            x, y = round(x, 2), round(y, 2)
        pts += [float(x), float(y)]
    if k >= 2 and rng.random() < 0.15:  # repeated vertex
        pts[2:2] = pts[0:2]
    if rng.random() < 0.1:  # odd trailing coordinate is ignored
        pts.append(float(rng.uniform(0, w)))
    return pts


def random_counts(rng):
    n = int(rng.integers(1, 12))
    out = []
    for _ in range(n):
        kind = rng.integers(0, 5)
        if kind == 0:
            out.append(0)
        elif kind == 1:
            # rleToString allocates 6 characters per value plus nothing for the
            # terminating NUL: a string whose every value needs 6 characters (|delta|
            # ≥ 2**24) writes one byte past the buffer and corrupts the heap. Large
            # values stay below 2**23 so each needs at most 5 characters.
            out.append(int(rng.integers(2**22, 2**23)))
        else:
            out.append(int(rng.integers(1, 5000)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--masks", type=int, default=2000)
    ap.add_argument("--polygons", type=int, default=2000)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)

    masks, groups = [], {}
    for i in range(a.masks):
        # reuse sizes often so that IoU and merge get same-size partners
        if groups and rng.random() < 0.6:
            keys = list(groups)
            h, w = keys[int(rng.integers(0, len(keys)))]
        else:
            h, w = random_size(rng)
        m = random_mask(rng, h, w)
        r = M.encode(np.asfortranarray(m[:, :, None]))[0]
        dec = M.decode([r])[:, :, 0]
        assert (dec == m).all()
        masks.append(
            dict(h=h, w=w, bits=pack(m), rle=s(r["counts"]), area=int(M.area([r])[0]),
                 bbox=[float(v) for v in M.toBbox([r])[0]])
        )
        groups.setdefault((h, w), []).append(i)
    # two degenerate sizes pycocotools accepts for encoding
    for h, w in [(0, 0), (3, 0)]:
        r = M.encode(np.zeros((h, w, 1), np.uint8, order="F"))[0]
        masks.append(dict(h=h, w=w, bits="", rle=s(r["counts"]), area=0, bbox=[0.0] * 4))

    rles = [{"size": [m["h"], m["w"]], "counts": m["rle"]} for m in masks]
    ious, merges = [], []
    keys = [k for k in groups]
    for _ in range(a.masks // 4):
        key = keys[int(rng.integers(0, len(keys)))]
        pool = groups[key]
        dt = [int(x) for x in rng.choice(pool, size=int(rng.integers(1, 6)))]
        gt = [int(x) for x in rng.choice(pool, size=int(rng.integers(1, 6)))]
        if rng.random() < 0.1:  # a ground truth of another size
            gt.append(int(rng.integers(0, a.masks)))
        crowd = [int(rng.random() < 0.2) for _ in gt]
        o = M.iou([rles[d] for d in dt], [rles[g] for g in gt], crowd)
        ious.append(dict(dt=dt, gt=gt, iscrowd=crowd, iou=np.asarray(o).tolist()))
        idx = [int(x) for x in rng.choice(pool, size=int(rng.integers(1, 5)))]
        # (merging different sizes makes pycocotools write past a zero-length buffer,
        # so that case is covered by a unit test instead)
        intersect = int(rng.random() < 0.3)
        r = M.merge([rles[i] for i in idx], intersect)
        merges.append(dict(idx=idx, intersect=intersect, size=list(r["size"]), rle=s(r["counts"])))

    polygons = []
    for _ in range(a.polygons):
        h, w = random_size(rng)
        polys = [random_polygon(rng, h, w) for _ in range(int(rng.integers(1, 4)))]
        # pycocotools decides the input type from the first entry's length: 4 means
        # boxes (and raises for lists), fewer raises; so the first polygon has > 4 numbers.
        while len(polys[0]) <= 4:
            polys[0] += [float(rng.uniform(0, w)), float(rng.uniform(0, h))]
        r = M.merge(M.frPyObjects(polys, h, w))
        polygons.append(dict(h=h, w=w, polys=polys, rle=s(r["counts"]), area=int(M.area([r])[0])))

    boxes = []
    for _ in range(a.polygons // 4):
        h, w = random_size(rng)
        bb = [float(rng.uniform(-0.3, 1.1) * w), float(rng.uniform(-0.3, 1.1) * h),
              float(rng.uniform(0, 1.2) * w), float(rng.uniform(0, 1.2) * h)]
        if rng.random() < 0.5:
            bb = [float(round(v)) for v in bb]
        r = M.frPyObjects(np.array([bb]), h, w)[0]
        boxes.append(dict(h=h, w=w, bbox=bb, rle=s(r["counts"])))

    uncompressed = []
    for _ in range(a.masks // 4):
        counts = random_counts(rng)
        h, w = int(rng.integers(1, 100)), int(rng.integers(1, 100))
        r = M.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        uncompressed.append(dict(h=h, w=w, counts=counts, rle=s(r["counts"]),
                                 area=int(M.area([r])[0]), bbox=[float(v) for v in M.toBbox([r])[0]]))

    resizes = []
    for _ in range(a.masks // 8):
        h, w = random_size(rng)
        oh, ow = int(rng.integers(1, 3 * h + 2)), int(rng.integers(1, 3 * w + 2))
        if rng.random() < 0.5:
            lab = rng.integers(0, 256, (h, w)).astype(np.uint8)
            out = np.array(Image.fromarray(lab).resize((ow, oh), Image.NEAREST))
            depth = 8
        else:
            lab = rng.integers(0, 65536, (h, w)).astype(np.uint16)
            out = np.array(Image.fromarray(lab).resize((ow, oh), Image.NEAREST)).astype(np.uint16)
            depth = 16
        resizes.append(dict(h=h, w=w, depth=depth, labels=lab.ravel().tolist(), oh=oh, ow=ow,
                            out=out.ravel().tolist()))

    doc = dict(seed=a.seed, pycocotools=version("pycocotools"), numpy=np.__version__,
               pillow=PIL.__version__, masks=masks, iou=ious, merge=merges, polygons=polygons,
               boxes=boxes, uncompressed=uncompressed, resize=resizes)
    with open(a.out, "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"{a.out}: {len(masks)} masks, {len(ious)} iou sets, {len(merges)} merges, "
          f"{len(polygons)} polygon sets, {len(boxes)} boxes, {len(uncompressed)} uncompressed, "
          f"{len(resizes)} resizes (pycocotools {version('pycocotools')})", file=sys.stderr)


if __name__ == "__main__":
    main()
