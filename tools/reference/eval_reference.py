#!/usr/bin/env python3
"""Write random evaluation sets with reference values of the five metrics.

The Rust test `crates/calico-eval/tests/metrics_reference.rs` reads the file and
checks that `calico_eval::metrics` gives the same numbers.

    python3 tools/reference/eval_reference.py --seed 3 --sets 250 \
        --out tests/fixtures/eval/reference_cases.json

Where the numbers come from:

* AP50: pycocotools `COCOeval(gt, dt, "segm")` with `params.catIds = [1]`,
  `stats[1]` (IoU 0.50, area "all", 100 detections per image); `null` when
  COCOeval reports -1 (a set without any ground-truth mask).
* mIoU, strict mIoU, Recall, SS, S-IoU: the small implementations below, written
  from the metric descriptions (GLaMM's greedy mIoU and thresholded recall; VIC's
  word-set IoU), not from the Rust code.  Text similarity is exact string
  equality (1.0 or 0.0) after one leading article is removed from the
  predicted phrase, so no sentence embedder is needed.

File layout (compact, masks as compressed COCO RLE strings):

    {"seed": S, "similarity": "...", "cases": [
        {"images": [{"h": H, "w": W,
                     "gt":   [[label, counts], ...],
                     "pred": [[label, counts, score], ...]}, ...],
         "expected": {"ap50": x | null, "miou": x, "miou_strict": x,
                      "recall": x, "ss": x, "s_iou": x}}, ...]}
"""
import argparse
import contextlib
import io
import json

import numpy as np
from pycocotools import mask as M
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

IOU_THRESHOLD = 0.5
TEXT_THRESHOLD = 0.5

# Ground-truth labels (plain, as in the samples file).
VOCAB = [
    "leg", "seat", "back", "arm", "wheel", "door", "chair", "chair leg",
    "table leg", "handle", "mug handle", "side mirror", "head", "body",
]


# ---------------------------------------------------------------- text


def strip_article(phrase):
    """Drop one leading "a", "an" or "the" (ASCII case-insensitive) followed by a
    space, unless nothing would remain (calico_text::english::strip_article)."""
    head, sep, rest = phrase.partition(" ")
    if sep and head.isascii() and head.lower() in ("a", "an", "the") and rest:
        return rest
    return phrase


def similarity(gt_label, pred_phrase):
    return 1.0 if gt_label == strip_article(pred_phrase) else 0.0


def words(label):
    kept = "".join(ch for ch in label if ch.isalnum() or ch == " ")
    return set(kept.lower().split())


def word_iou(a, b):
    wa, wb = words(a), words(b)
    union = wa | wb
    if not union:
        return 0.0
    return len(wa & wb) / len(union)


# ---------------------------------------------------------------- masks


def encode(m):
    r = M.encode(np.asfortranarray(m.astype(np.uint8)))
    return r["counts"].decode()


def decode(counts, h, w):
    return M.decode({"size": [h, w], "counts": counts.encode()}).astype(bool)


def shape(rng, h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ry, rx = rng.uniform(1, h / 1.5), rng.uniform(1, w / 1.5)
    if rng.random() < 0.5:
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return (np.abs(yy - cy) <= ry) & (np.abs(xx - cx) <= rx)


def random_mask(rng, h, w):
    u = rng.random()
    if u < 0.03:
        return np.zeros((h, w), bool)
    if u < 0.05:
        return np.ones((h, w), bool)
    m = shape(rng, h, w)
    if rng.random() < 0.25:
        m |= shape(rng, h, w)
    return m


def jitter(rng, m):
    """A shifted (and sometimes grown or shrunk) copy, so IoUs land near 0.5."""
    dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
    out = np.roll(np.roll(m, dy, axis=0), dx, axis=1)
    if rng.random() < 0.3:
        out = out | np.roll(out, 1, axis=int(rng.integers(0, 2)))
    elif rng.random() < 0.3:
        out = out & np.roll(out, 1, axis=int(rng.integers(0, 2)))
    return out


def phrase_for(rng, label):
    """A predicted phrase: the label, often with an article, sometimes altered."""
    u = rng.random()
    if u < 0.35:
        p = label
    elif u < 0.55:
        p = "the " + label
    elif u < 0.62:
        p = ("a " if rng.random() < 0.5 else "an ") + label
    elif u < 0.67:
        p = "The " + label
    elif u < 0.70:
        p = "the  " + label  # two spaces: the stripped phrase keeps one
    elif u < 0.74:
        p = label.capitalize() + "."
    elif u < 0.77:
        p = label.replace(" ", "-")
    elif u < 0.79:
        p = "the"
    else:
        p = "the " + str(rng.choice(VOCAB))
    return p


def score(rng, mode):
    if mode == "ones":
        return 1.0
    if mode == "ties":
        return float(rng.choice([0.25, 0.5, 0.75, 1.0]))
    return round(float(rng.random()), 3)


def random_image(rng, mode, many):
    h, w = int(rng.integers(6, 25)), int(rng.integers(6, 33))
    n_gt = 0 if rng.random() < 0.12 else int(rng.integers(1, 13))
    gt = [(str(rng.choice(VOCAB)), random_mask(rng, h, w)) for _ in range(n_gt)]
    if rng.random() < 0.15:
        n_pred = 0
    elif many:
        n_pred = int(rng.integers(95, 131))
    else:
        n_pred = int(rng.integers(0, 13))
    pred = []
    for _ in range(n_pred):
        u = rng.random()
        if gt and u < 0.3:
            label, m = gt[int(rng.integers(0, len(gt)))]
            m = m.copy()
        elif gt and u < 0.7:
            label, m = gt[int(rng.integers(0, len(gt)))]
            m = jitter(rng, m)
        elif pred and u < 0.8:  # duplicate of an earlier prediction
            label, m, _ = pred[int(rng.integers(0, len(pred)))]
        else:
            label, m = str(rng.choice(VOCAB)), random_mask(rng, h, w)
        pred.append((phrase_for(rng, label), m, score(rng, mode)))
    return h, w, gt, pred


# ---------------------------------------------------------------- reference metrics


def mask_iou(a, b):
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 0.0
    return int(np.logical_and(a, b).sum()) / union


def greedy_miou(mat):
    """Repeatedly take the first largest entry (row-major) while it is > 0 and
    delete its row and column.  Returns the taken values."""
    mat = [row[:] for row in mat]
    taken = []
    while mat and mat[0]:
        best, bi, bj = None, -1, -1
        for i, row in enumerate(mat):
            for j, v in enumerate(row):
                if best is None or v > best:
                    best, bi, bj = v, i, j
        if not best > 0:
            break
        taken.append(best)
        del mat[bi]
        for row in mat:
            del row[bj]
    return taken


def greedy_recall(ious, sims):
    """Take the first largest IoU (row-major, GT rows); stop when it or its text
    similarity is below the threshold; otherwise count it and zero its row and
    column in both matrices."""
    ious = [row[:] for row in ious]
    sims = [row[:] for row in sims]
    tp = 0
    if not ious or not ious[0]:
        return 0
    while True:
        best, bi, bj = None, -1, -1
        for i, row in enumerate(ious):
            for j, v in enumerate(row):
                if best is None or v > best:
                    best, bi, bj = v, i, j
        if best < IOU_THRESHOLD or sims[bi][bj] < TEXT_THRESHOLD:
            return tp
        tp += 1
        for mat in (ious, sims):
            for j in range(len(mat[bi])):
                mat[bi][j] = 0.0
            for row in mat:
                row[bj] = 0.0


def reference_metrics(images):
    miou_sum = strict_sum = 0.0
    miou_n = 0
    tp = n_gt_total = 0
    ss_values, siou_values = [], []
    for h, w, gt, pred in images:
        gl = [lab for lab, _ in gt]
        pl = [lab for lab, _, _ in pred]
        pm = [m for _, m, _ in pred]
        gm = [m for _, m in gt]
        pred_gt = [[mask_iou(p, g) for g in gm] for p in pm]
        gt_pred = [[pred_gt[j][i] for j in range(len(pm))] for i in range(len(gm))]
        sims = [[similarity(g, p) for p in pl] for g in gl]
        if gt or pred:
            taken = greedy_miou(pred_gt)
            miou_sum += sum(taken) / len(taken) if taken else 0.0
            strict_sum += sum(taken) / len(gt) if gt else 0.0
            miou_n += 1
        tp += greedy_recall(gt_pred, sims)
        n_gt_total += len(gt)
        for i, g in enumerate(gl):
            ss_values.append(max(sims[i]) if pl else 0.0)
            siou_values.append(max(word_iou(g, strip_article(p)) for p in pl) if pl else 0.0)
    return {
        "miou": miou_sum / miou_n if miou_n else 0.0,
        "miou_strict": strict_sum / miou_n if miou_n else 0.0,
        "recall": tp / n_gt_total if n_gt_total else 0.0,
        "ss": sum(ss_values) / len(ss_values) if ss_values else 0.0,
        "s_iou": sum(siou_values) / len(siou_values) if siou_values else 0.0,
    }


def coco_ap50(images):
    """pycocotools' AP at IoU 0.50 (stats[1]); None where it reports -1."""
    gt_ds = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "part"}]}
    dets = []
    for k, (h, w, gt, pred) in enumerate(images):
        image_id = k + 1
        gt_ds["images"].append({"id": image_id, "height": h, "width": w})
        for _, m in gt:
            rle = M.encode(np.asfortranarray(m.astype(np.uint8)))
            gt_ds["annotations"].append({
                "id": len(gt_ds["annotations"]) + 1,
                "image_id": image_id,
                "category_id": 1,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode()},
                "area": float(M.area(rle)),
                "bbox": [float(v) for v in M.toBbox(rle)],
                "iscrowd": 0,
            })
        for _, m, s in pred:
            dets.append({
                "image_id": image_id,
                "category_id": 1,
                "segmentation": {"size": [h, w], "counts": encode(m)},
                "score": s,
            })
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        coco_gt = COCO()
        coco_gt.dataset = gt_ds
        coco_gt.createIndex()
        if dets:
            coco_dt = coco_gt.loadRes(dets)
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt_ds["images"], "annotations": [],
                               "categories": gt_ds["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ap = float(ev.stats[1])
    return None if ap == -1.0 else ap


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sets", type=int, default=250)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.sets < 1:
        ap.error("--sets must be at least 1")
    rng = np.random.default_rng(a.seed)

    cases = []
    for k in range(a.sets):
        mode = ["ones", "ties", "uniform"][k % 3]
        n_images = int(rng.integers(1, 21))
        many = rng.random() < 0.04  # some image gets > 100 predictions
        images = []
        for i in range(n_images):
            images.append(random_image(rng, mode, many and i == 0))
        if rng.random() < 0.05:  # a set without any ground truth
            images = [(h, w, [], pred) for h, w, _, pred in images]
        if rng.random() < 0.04:  # a set without any prediction
            images = [(h, w, gt, []) for h, w, gt, _ in images]
        expected = reference_metrics(images)
        expected["ap50"] = coco_ap50(images)
        cases.append({
            "images": [{
                "h": h, "w": w,
                "gt": [[lab, encode(m)] for lab, m in gt],
                "pred": [[lab, encode(m), s] for lab, m, s in pred],
            } for h, w, gt, pred in images],
            "expected": expected,
        })
        # The stored strings must give back the masks the values were computed on.
        for img, (h, w, gt, pred) in zip(cases[-1]["images"], images):
            for (_, c), (_, m) in zip(img["gt"], gt):
                assert (decode(c, h, w) == m).all()

    out = {
        "generator": "tools/reference/eval_reference.py",
        "seed": a.seed,
        "similarity": "1.0 if gt label == predicted phrase without one leading article else 0.0",
        "cases": cases,
    }
    with open(a.out, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")


if __name__ == "__main__":
    main()
