"""Parity cases for SAM's ViT image encoder (`sam_image_encoder`).

The reference is `segment_anything.modeling.ImageEncoderViT` (segment-anything
1.0) built with tiny configs, every parameter randomised, saved under the
original checkpoint names with the `image_encoder.` prefix. The cases cover
windowed attention whose grid is not a multiple of the window (padding),
global blocks at different indexes, decomposed relative position
embeddings, `qkv_bias` off, an all-global encoder without relative
positions, and relative-position tables whose length differs from what the
config implies (the reference then resizes them by linear interpolation).

Usage: case_sam_image_encoder.py --out DIR
"""

import argparse
import os
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT

import common

CASES = [
    dict(
        name="sam_image_encoder_pad_window3",
        seed=11,
        batch=1,
        config=dict(img_size=64, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                    mlp_ratio=2.0, out_chans=16, qkv_bias=True, use_rel_pos=True,
                    window_size=3, global_attn_indexes=[1]),
        description="grid 8x8, window 3 (padded to 9), global block 1, rel pos",
    ),
    dict(
        name="sam_image_encoder_patch16_nobias",
        seed=12,
        batch=2,
        config=dict(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=4,
                    mlp_ratio=1.5, out_chans=24, qkv_bias=False, use_rel_pos=True,
                    window_size=3, global_attn_indexes=[0]),
        description="grid 4x4, window 3 (padded to 6), global block 0, qkv without bias, batch 2",
    ),
    dict(
        name="sam_image_encoder_relpos_resized",
        seed=13,
        batch=1,
        config=dict(img_size=80, patch_size=8, embed_dim=32, depth=4, num_heads=2,
                    mlp_ratio=2.0, out_chans=16, qkv_bias=True, use_rel_pos=True,
                    window_size=4, global_attn_indexes=[1, 3]),
        # block index -> (rel_pos_h length, rel_pos_w length); the config
        # implies 7 for windowed blocks and 19 for global ones.
        resize_rel_pos={0: (5, 11), 1: (13, 25), 3: (19, 9)},
        description="grid 10x10, window 4 (padded to 12), global blocks 1 and 3, "
                    "rel-pos tables of other lengths (linear interpolation)",
    ),
    dict(
        name="sam_image_encoder_all_global_norel",
        seed=14,
        batch=1,
        config=dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
                    mlp_ratio=4.0, out_chans=8, qkv_bias=True, use_rel_pos=False,
                    window_size=0, global_attn_indexes=[]),
        description="grid 4x4, window 0 (every block global), no relative positions",
    ),
]


def build(cfg):
    return ImageEncoderViT(
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=3,
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        out_chans=cfg["out_chans"],
        qkv_bias=cfg["qkv_bias"],
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        act_layer=torch.nn.GELU,
        use_abs_pos=True,
        use_rel_pos=cfg["use_rel_pos"],
        rel_pos_zero_init=True,
        window_size=cfg["window_size"],
        global_attn_indexes=tuple(cfg["global_attn_indexes"]),
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for case in CASES:
        common.seed_everything(case["seed"])
        cfg = case["config"]
        enc = build(cfg).eval()
        head_dim = cfg["embed_dim"] // cfg["num_heads"]
        for i, (lh, lw) in case.get("resize_rel_pos", {}).items():
            attn = enc.blocks[i].attn
            attn.rel_pos_h = torch.nn.Parameter(torch.zeros(lh, head_dim))
            attn.rel_pos_w = torch.nn.Parameter(torch.zeros(lw, head_dim))
        common.randomise_(enc, case["seed"])
        g = torch.Generator().manual_seed(case["seed"] + 1000)
        x = torch.randn(case["batch"], 3, cfg["img_size"], cfg["img_size"], generator=g)
        with torch.no_grad():
            y = enc(x)
        weights = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}
        common.write_case(
            os.path.join(args.out, case["name"] + ".safetensors"),
            component="sam_image_encoder",
            config=cfg,
            weights=weights,
            inputs={"pixel_values": x},
            outputs={"image_embeddings": y},
            description=case["description"],
            script=__file__,
        )


if __name__ == "__main__":
    main()
