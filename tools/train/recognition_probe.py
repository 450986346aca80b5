#!/usr/bin/env python3
"""How learnable are a samples file's object classes for a small image encoder?

A PyTorch side experiment for docs/tiny-recipe.md ("Why EVA gets a
convolutional stem"): it trains one small encoder on the images of a
`calico data build` split to recognise the object classes annotated on them
(every mask whose role is `object` labels its image), with stage 1's loss and
optimiser (cross-entropy against the image's classes, AdamW betas 0.9/0.95,
linear warm-up and decay, gradient clipping 1.0, horizontal flips, batch 32),
and prints top-1 accuracy (the top class is one of the image's) on the
training stream and on the validation images every 250 steps.

Encoders (all about 0.2-0.3 M parameters):
  vit      4 blocks, width 64, 4 heads, linear 14-px patches (tiny's EVA)
  stem     the same blocks over a 4-stage stride-2 conv stem, no normalisation
  stem_bn  the same with batch normalisation in the stem (eva_vit.conv_stem)
  stem_ln  the same with layer norm over each pixel's channels instead
  cnn      five 3x3 conv + batch norm + ReLU stages, global average pooling

Needs torch, numpy and Pillow (pip install torch numpy pillow). Example:
  python3 tools/train/recognition_probe.py mixedparts --encoder cnn --steps 3000
"""

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


def image_classes(samples: Path) -> dict:
    """Image file -> set of object classes, as calico_train::pretrain::image_labels."""
    out = {}
    with samples.open() as f:
        for line in f:
            s = json.loads(line)
            for m in s["masks"]:
                if m.get("role") == "object":
                    out.setdefault(s["images"][m["image"]]["file"], set()).add(m["label"])
    return out


def load_views(base: Path, files, side: int) -> torch.Tensor:
    """The EVA view: bicubic resize to side x side, CLIP mean/std."""
    arrays = []
    for f in files:
        rgb = Image.open(base / f).convert("RGB").resize((side, side), Image.BICUBIC)
        arrays.append((np.asarray(rgb) / 255.0 - CLIP_MEAN) / CLIP_STD)
    return torch.tensor(np.stack(arrays).transpose(0, 3, 1, 2), dtype=torch.float32)


class Block(nn.Module):
    def __init__(self, width, heads, mlp):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp), nn.GELU(), nn.Linear(mlp, width))

    def forward(self, x):
        y = self.norm1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def parse_stages(spec):
    """"16,32,32/1,64" -> [(16, 2), (32, 2), (32, 1), (64, 2)]: channels/stride (2 unless given)."""
    out = []
    for part in spec.split(","):
        c, _, s = part.partition("/")
        out.append((int(c), int(s or 2)))
    return out


class ChannelNorm(nn.Module):
    """Layer norm over the channels of every pixel (SAM's LayerNorm2d)."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_stem(channels, width, norm):
    layers, c_in = [], 3
    for c in channels:
        c, stride = c if isinstance(c, tuple) else (c, 2)
        layers.append(nn.Conv2d(c_in, c, 3, stride, 1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(c) if norm == "batch" else ChannelNorm(c))
        layers.append(nn.ReLU() if norm else nn.GELU())
        c_in = c
    layers.append(nn.Conv2d(c_in, width, 1))
    return nn.Sequential(*layers)


class ViT(nn.Module):
    def __init__(self, classes, side, patch=14, stem=None, width=64, depth=4, heads=4, mlp=128):
        super().__init__()
        if stem is None:
            self.patches = nn.Conv2d(3, width, patch, patch)
        else:
            patch = 2 ** sum(1 for c in stem[0] if not isinstance(c, tuple) or c[1] == 2)
            self.patches = conv_stem(stem[0], width, stem[1])
        n = (side // patch) ** 2
        self.cls = nn.Parameter(torch.zeros(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, n + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[Block(width, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class CNN(nn.Module):
    def __init__(self, classes, width=32, stages=None):
        super().__init__()
        layers, c_in = [], 3
        if stages is None:
            stages = [(width, 2), (width * 2, 2), (width * 2, 1), (width * 4, 2), (width * 4, 1)]
        for c, stride in stages:
            layers += [nn.Conv2d(c_in, c, 3, stride, 1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build(kind, classes, side, stages=None):
    stem = stages or (16, 32, 64, 64)
    return {
        "vit": lambda: ViT(classes, side),
        "stem": lambda: ViT(classes, side, stem=(stem, False)),
        "stem_bn": lambda: ViT(classes, side, stem=(stem, "batch")),
        "stem_ln": lambda: ViT(classes, side, stem=(stem, "channel")),
        "cnn": lambda: CNN(classes, stages=stages),
    }[kind]()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="a calico data build output (train.jsonl, val.jsonl)")
    ap.add_argument("--encoder", choices=["vit", "stem", "stem_bn", "stem_ln", "cnn"], default="vit")
    ap.add_argument("--stages", type=parse_stages, default=None,
                    help="conv stages for stem_bn / cnn as channels[/stride], e.g. 16,32,32/1,64,64/1")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--side", type=int, default=112)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    train = image_classes(args.data / "train.jsonl")
    val = image_classes(args.data / "val.jsonl")
    classes = sorted({c for cs in train.values() for c in cs})
    index = {c: i for i, c in enumerate(classes)}
    train_files = sorted(train)
    val_files = sorted(f for f in val if any(c in index for c in val[f]))
    if not train_files or not val_files:
        raise SystemExit(f"{args.data}: no images with object masks in train.jsonl or val.jsonl")

    def targets(labels, files):
        t = torch.zeros(len(files), len(classes))
        for i, f in enumerate(files):
            for c in labels[f]:
                if c in index:
                    t[i, index[c]] = 1.0
        return t

    x_train = load_views(args.data, train_files, args.side)
    x_val = load_views(args.data, val_files, args.side)
    t_train, t_val = targets(train, train_files), targets(val, val_files)
    model = build(args.encoder, len(classes), args.side, args.stages)
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.encoder}: {params:,} parameters, {len(train_files)} training and "
          f"{len(val_files)} validation images, {len(classes)} classes", flush=True)

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / args.warmup, 1.0) * max(0.0, (args.steps - s) / args.steps))

    def hits(logits, t):
        return t[torch.arange(len(t)), logits.argmax(1)].sum().item()

    queue, recent, t0 = [], [], time.time()
    for step in range(args.steps):
        if len(queue) < args.batch:
            queue += rng.sample(range(len(train_files)), len(train_files))
        idx, queue = queue[: args.batch], queue[args.batch:]
        x, t = x_train[idx], t_train[idx]
        flip = torch.rand(len(idx)) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        model.train()
        logits = model(x)
        loss = -(F.log_softmax(logits, 1) * (t / t.sum(1, keepdim=True))).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        recent = (recent + [hits(logits, t) / len(idx)])[-20:]
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                v = sum(hits(model(x_val[i:i + 256]), t_val[i:i + 256])
                        for i in range(0, len(val_files), 256)) / len(val_files)
            print(f"step {step + 1:5d}  loss {loss.item():.3f}  train {100 * np.mean(recent):5.1f} %  "
                  f"val {100 * v:5.1f} %  {time.time() - t0:5.0f} s", flush=True)


if __name__ == "__main__":
    main()
