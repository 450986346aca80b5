"""Parity cases for SAM's mask post-processing (`sam_postprocess`).

The reference is `segment_anything.modeling.Sam.postprocess_masks`
(segment-anything 1.0): bilinear upsampling of low-resolution mask logits to
the padded model input, a crop to the resized image, bilinear resizing to
the original image size. The resized size comes from
`ResizeLongestSide.get_preprocess_shape`, as in SAM's predictor. The cases
vary the low-resolution size, the model input size (including a
non-integer ratio), the aspect ratio, and whether the last resize goes up
or down; one hits the round-half-up rule of `get_preprocess_shape`.

The cases have no weights. Usage: case_sam_postprocess.py --out DIR
"""

import argparse
import os
import types

import torch
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

import common

CASES = [
    dict(name="sam_postprocess_low16_down", seed=21, batch=2, channels=1, low=16,
         img_size=64, original_size=(37, 50),
         description="16x16 logits, model input 64, resized 47x64, down to 37x50"),
    dict(name="sam_postprocess_low32_up_ratio3", seed=22, batch=1, channels=3, low=32,
         img_size=96, original_size=(150, 90),
         description="32x32 logits (3 masks), model input 96, resized 96x58, up to 150x90"),
    dict(name="sam_postprocess_low64_down_wide", seed=23, batch=1, channels=1, low=64,
         img_size=256, original_size=(120, 200),
         description="64x64 logits, model input 256, resized 154x256, down to 120x200"),
    dict(name="sam_postprocess_low16_half_rounding", seed=24, batch=1, channels=2, low=16,
         img_size=64, original_size=(5, 128),
         description="16x16 logits, model input 64, original 5x128 -> resized 3x64 "
                     "(2.5 rounds up), then 3 rows up to 5"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for case in CASES:
        common.seed_everything(case["seed"])
        img_size = case["img_size"]
        oh, ow = case["original_size"]
        input_size = ResizeLongestSide.get_preprocess_shape(oh, ow, img_size)
        g = torch.Generator().manual_seed(case["seed"])
        low = 4.0 * torch.randn(case["batch"], case["channels"], case["low"], case["low"],
                                generator=g)
        sam_like = types.SimpleNamespace(
            image_encoder=types.SimpleNamespace(img_size=img_size))
        with torch.no_grad():
            masks = Sam.postprocess_masks(sam_like, low, input_size, (oh, ow))
        config = dict(img_size=img_size, input_size=list(input_size),
                      original_size=[oh, ow])
        common.write_case(
            os.path.join(args.out, case["name"] + ".safetensors"),
            component="sam_postprocess",
            config=config,
            weights={},
            inputs={"low_res_masks": low},
            outputs={
                "masks": masks,
                "preprocess_shape": torch.tensor(input_size, dtype=torch.float32),
            },
            description=case["description"],
            script=__file__,
        )


if __name__ == "__main__":
    main()
