#!/usr/bin/env python3
"""How well can tiny's SAM path learn SynthParts masks, apart from the LLM?

A PyTorch side experiment for docs/tiny-recipe.md ("Where the masks fall
short"). Stage 2 trains SAM's image encoder and mask decoder through the
LLM's `[SEG]` states; this probe replaces those states with a learned
embedding of the mask's label (one sparse prompt token per mask), so that
only the mask path is measured. It trains on every distinct (image, label)
mask of a `calico data build` split with tiny's mask losses (sigmoid BCE 0.5 +
Dice 2.0 at the decoder's resolution, targets sampled at each cell's centre as
calico_train does), and scores the validation images' masks the way
`calico predict` makes them: logits resized bilinearly to the image,
thresholded at 0, IoU with the full-resolution ground truth, mean per role.

Models (segment-anything's own modules, tiny's sizes from
tools/train/tiny-staged.model.json):
  sam        ImageEncoderViT 128 px, patch 8, 48 wide, 2 blocks -> neck 32;
             MaskDecoder 32 wide, TwoWayTransformer depth 2 (tiny as it is)
  sam_stem   the same with a 3-stage stride-2 conv stem (batch norm + ReLU,
             16/32/48 channels) in place of the linear 8-px patch projection
  sam_skip   sam_stem whose mask features (4x the token grid) also get a 1x1
             projection of the stem's first stage, which has that resolution
             (a U-Net skip, as HQ-SAM adds early features to SAM's)
  cnn        no transformer: stride-2 conv stages (16/32/48, batch norm +
             ReLU) to the token grid, two 64-wide stride-1 stages there, 1x1
             to the decoder's width (the question: is it the ViT?)

Needs torch, numpy, Pillow, pycocotools and segment-anything
(pip install --no-deps segment-anything; torchvision is not needed). Example:
  python3 tools/train/mask_probe.py mixedparts --model sam --steps 1500
"""

import argparse
import json
import random
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from pycocotools import mask as mask_utils

# segment_anything/__init__ imports its predictor and mask generator, which
# need torchvision; the modelling code does not, so the package is entered
# without running its __init__.
import importlib.util  # noqa: E402

_spec = importlib.util.find_spec("segment_anything")
_pkg = types.ModuleType("segment_anything")
_pkg.__path__ = list(_spec.submodule_search_locations)
sys.modules.setdefault("segment_anything", _pkg)
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    TwoWayTransformer,
)

PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])


def masks_of(samples: Path, base: Path):
    """Every distinct (image, label) mask: image file -> {label: rle}."""
    out = defaultdict(dict)
    roles = {}
    with samples.open() as f:
        for line in f:
            s = json.loads(line)
            for m in s["masks"]:
                file = str(base / s["images"][m["image"]]["file"])
                out[file].setdefault(m["label"], m["rle"])
                roles.setdefault((file, m["label"]), m["role"])
    return out, roles


def decode(rle) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


class Data:
    """SAM views (longest side `side`, padded square) and low-res targets."""

    def __init__(self, masks, roles, labels, side, low, keep_full=False):
        self.files = sorted(masks)
        self.views, self.items, self.full = [], [], []
        for i, file in enumerate(self.files):
            rgb = Image.open(file).convert("RGB")
            w, h = rgb.size
            s = side / max(w, h)
            nw, nh = round(w * s), round(h * s)
            arr = (np.asarray(rgb.resize((nw, nh), Image.BILINEAR)) - PIXEL_MEAN) / PIXEL_STD
            pad = np.zeros((side, side, 3))
            pad[:nh, :nw] = arr
            self.views.append(torch.tensor(pad.transpose(2, 0, 1), dtype=torch.float32))
            # Each low-res cell takes the mask at its centre, mapped back
            # through the resize (the same scale on both axes); the padding
            # is background.
            centres = ((np.arange(low) + 0.5) * (side / low) / s).astype(int)
            vy, vx = centres < h, centres < w
            for label, rle in masks[file].items():
                if label not in labels:
                    continue
                m = decode(rle)
                t = np.zeros((low, low), dtype=np.float32)
                t[np.ix_(vy, vx)] = m[np.ix_(centres[vy], centres[vx])]
                self.items.append((i, labels[label], torch.tensor(t), roles[(file, label)]))
                if keep_full:
                    self.full.append((m, (nh, nw)))


class Stem(nn.Module):
    """k stride-2 3x3 convolutions with batch norm and ReLU (then any stride-1
    ones, `same`), then 1x1 to `dim`; channels last, as SAM's patch embedding."""

    def __init__(self, chans, dim, same=()):
        super().__init__()
        layers, c = [], 3
        for o, s in [(o, 2) for o in chans] + [(o, 1) for o in same]:
            layers += [nn.Conv2d(c, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]
            c = o
        layers.append(nn.Conv2d(c, dim, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        self.early = None
        for k, layer in enumerate(self.net):
            x = layer(x)
            if k == 2:  # after the first stage's ReLU
                self.early = x
        return x.permute(0, 2, 3, 1)


class ConvEncoder(Stem):
    """A CNN in place of SAM's ViT: the stem's stride-2 stages down to the
    grid, stride-1 stages there, 1x1 to the decoder's width, channels first."""

    def forward(self, x):
        return super().forward(x).permute(0, 3, 1, 2)


class Probe(nn.Module):
    def __init__(self, model, n_labels, side, patch, width, depth, dec_dim):
        super().__init__()
        grid = side // patch
        self.encoder = ImageEncoderViT(
            img_size=side, patch_size=patch, embed_dim=width, depth=depth,
            num_heads=2, mlp_ratio=2.0, out_chans=dec_dim, qkv_bias=True,
            use_rel_pos=True, window_size=8, global_attn_indexes=[depth - 1],
        )
        self.skip = None
        if model == "cnn":
            k = int(np.log2(patch))
            self.encoder = ConvEncoder([16, 32, 48, 64][:k], dec_dim, same=[64, 64])
        if model in ("sam_stem", "sam_skip"):
            k = int(np.log2(patch))
            self.encoder.patch_embed = Stem([16, 32, 48][:k], width)
        if model == "sam_skip":
            # The first stage is at 1/2 of the view; the masks at 4/patch.
            assert patch == 8, "sam_skip pairs the stem's first stage with 4x the grid"
            self.skip = nn.Conv2d(16, dec_dim // 8, 1)
        self.prompt = PromptEncoder(
            embed_dim=dec_dim, image_embedding_size=(grid, grid),
            input_image_size=(side, side), mask_in_chans=8,
        )
        self.decoder = MaskDecoder(
            transformer_dim=dec_dim,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dec_dim, mlp_dim=2 * dec_dim, num_heads=2),
            num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=dec_dim,
        )
        self.labels = nn.Embedding(n_labels, dec_dim)

    def forward(self, views, groups):
        """groups: per image, the label ids to segment; returns logits per image."""
        emb = self.encoder(views)
        pe = self.prompt.get_dense_pe()
        dense = self.prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)
        out = []
        skip = None if self.skip is None else self.skip(self.encoder.patch_embed.early)
        for i, ids in enumerate(groups):
            sparse = self.labels(ids)[:, None, :]
            d = dense.expand(len(ids), -1, emb.shape[-2], emb.shape[-1])
            if skip is None:
                low, _ = self.decoder(emb[i : i + 1], pe, sparse, d, multimask_output=False)
                out.append(low[:, 0])
            else:
                out.append(self.masks_with_skip(emb[i : i + 1], pe, sparse, d, skip[i : i + 1]))
        return out

    def masks_with_skip(self, emb, pe, sparse, dense, skip):
        """MaskDecoder.predict_masks (first mask token) with `skip` added
        to the upscaled embedding before the hypernetwork's product."""
        dec = self.decoder
        out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
        tokens = torch.cat((out_tokens[None].expand(sparse.shape[0], -1, -1), sparse), dim=1)
        src = emb.expand(tokens.shape[0], -1, -1, -1) + dense
        pos = pe.expand(tokens.shape[0], -1, -1, -1)
        b, c, h, w = src.shape
        hs, src = dec.transformer(src, pos, tokens)
        up = dec.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w)) + skip
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1, :])
        return (hyper[:, None, :] @ up.flatten(2)).reshape(b, up.shape[-2], up.shape[-1])


def losses(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    p = logits.sigmoid().flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce.mean(), dice.mean()


def evaluate(model, val, side, limit):
    model.eval()
    per_role = defaultdict(list)
    by_image = defaultdict(list)
    for k, (i, lab, _, role) in enumerate(val.items[:limit]):
        by_image[i].append((k, lab, role))
    with torch.no_grad():
        for i, entries in by_image.items():
            ids = torch.tensor([lab for _, lab, _ in entries])
            low = model(val.views[i][None], [ids])[0]
            up = F.interpolate(low[:, None], size=(side, side), mode="bilinear", align_corners=False)[:, 0]
            for (k, _, role), logit in zip(entries, up):
                gt, (nh, nw) = val.full[k]
                pred = F.interpolate(logit[None, None, :nh, :nw], size=gt.shape, mode="bilinear", align_corners=False)[0, 0] > 0
                pred = pred.numpy()
                union = (pred | gt).sum()
                per_role[role].append((pred & gt).sum() / union if union else 0.0)
    model.train()
    return {r: float(np.mean(v)) for r, v in sorted(per_role.items())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a `calico data build` output directory")
    ap.add_argument("--model", choices=["sam", "sam_stem", "sam_skip", "cnn"], default="sam")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--images", type=int, default=16, help="images per step (all their masks)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--side", type=int, default=128)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--width", type=int, default=48)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--dec-dim", type=int, default=32)
    ap.add_argument("--bce", type=float, default=0.5)
    ap.add_argument("--dice", type=float, default=2.0)
    ap.add_argument("--val-masks", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    torch.set_num_threads(args.threads)

    base = args.data
    train_masks, train_roles = masks_of(args.data / "train.jsonl", base)
    val_masks, val_roles = masks_of(args.data / "val.jsonl", base)
    names = sorted({lab for m in train_masks.values() for lab in m})
    labels = {n: i for i, n in enumerate(names)}
    low = 4 * args.side // args.patch
    t0 = time.time()
    train = Data(train_masks, train_roles, labels, args.side, low)
    val = Data(val_masks, val_roles, labels, args.side, low, keep_full=True)
    print(f"{len(train.files)} training images, {len(train.items)} masks, {len(names)} labels; "
          f"{len(val.files)} validation images, {len(val.items)} masks ({time.time() - t0:.0f} s)", flush=True)
    by_image = defaultdict(list)
    for k, (i, _, _, _) in enumerate(train.items):
        by_image[i].append(k)
    images = sorted(by_image)

    model = Probe(args.model, len(names), args.side, args.patch, args.width, args.depth, args.dec_dim)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warm = 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (args.steps - s) / (args.steps - warm)))
    order, pos = [], 0
    t0 = time.time()
    run_bce = run_dice = 0.0
    for step in range(1, args.steps + 1):
        if pos + args.images > len(order):
            order, pos = random.sample(images, len(images)), 0
        batch = order[pos : pos + args.images]
        pos += args.images
        views = torch.stack([train.views[i] for i in batch])
        groups = [torch.tensor([train.items[k][1] for k in by_image[i]]) for i in batch]
        targets = torch.cat([torch.stack([train.items[k][2] for k in by_image[i]]) for i in batch])
        logits = torch.cat(model(views, groups))
        bce, dice = losses(logits, targets)
        loss = args.bce * bce + args.dice * dice
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run_bce += bce.item()
        run_dice += dice.item()
        if step % 100 == 0:
            print(f"step {step}: bce {run_bce / 100:.3f} dice {run_dice / 100:.3f} "
                  f"({(time.time() - t0) / step:.3f} s/step)", flush=True)
            run_bce = run_dice = 0.0
        if step % args.eval_every == 0 or step == args.steps:
            ious = evaluate(model, val, args.side, args.val_masks)
            print(f"step {step} val IoU: " + ", ".join(f"{r} {100 * v:.1f}" for r, v in ious.items())
                  + f" ({time.time() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
