"""Parity cases for the image views (crates/calico-model/src/preprocess/).

Each case holds an 8-bit RGB image `inputs.image` (H, W, 3) and the
reference pipeline's outputs:
  outputs.pixel_values  (3, H', W') float32, normalised (and padded for SAM)
  outputs.resized_u8    (h, w, 3) the 8-bit image that was normalised
  outputs.resized_hw    (2,) the content size (SAM: before padding)
optionally strided by `output_stride` (every n-th row and column) so that a
full-size 1024x1024 SAM input fits in a small file.

Reference pipelines:
  sam   segment_anything ResizeLongestSide.apply_image (torchvision to_pil_image
        + TF.resize on a PIL image = Pillow BILINEAR) and Sam.preprocess
        ((x - pixel_mean) / pixel_std, pad bottom/right), as LISA/GLaMM call them
  clip  LAVIS blip_image_eval: Resize((h, w), BICUBIC) on PIL, ToTensor,
        Normalize(CLIP mean/std); cross-checked against HF BlipImageProcessorPil
  dino  HF BitImageProcessorPil as configured for facebook/dinov2-*: shortest
        edge (Pillow BICUBIC), centre crop, rescale 1/255, ImageNet mean/std

Images are raw pixel arrays: JPEG decoders differ by +-1 between libjpeg-turbo
and the Rust `image` crate, so decoding is kept out of the comparison.

Usage: case_preprocess.py --out DIR [--big DIR]
  --big also writes larger unstrided cases (not committed) for a local check:
  CALICO_PARITY_DIR=DIR cargo test -p calico-model --test parity
"""

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

TOL = 1e-6

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_image(h, w, seed, kind):
    """Random noise, or structured content (edges, gradients, saturated
    areas) that exercises the clipping of the bicubic overshoot."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3), dtype=np.float64)
    img[..., 0] = 255.0 * xx / max(w - 1, 1)
    img[..., 1] = np.where((xx // 3 + yy // 2) % 2 == 0, 255.0, 0.0)
    img[..., 2] = 127.5 + 127.5 * np.sin(xx * 0.7 + yy * 0.3)
    img += rng.normal(0, 12, size=img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def sam_reference(image, target):
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(target).apply_image(image)
    x = torch.from_numpy(resized).permute(2, 0, 1).contiguous()
    pixel_mean = torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    pixel_std = torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    # Sam.preprocess, without building an image encoder for img_size.
    x = (x - pixel_mean) / pixel_std
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, target - w, 0, target - h))
    return x, resized, (h, w)


FILTERS = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def clip_reference(image, size, mean, std, filt="bicubic"):
    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    tf = transforms.Compose([
        transforms.Resize(tuple(size), interpolation=getattr(InterpolationMode, FILTERS[filt])),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    pil = Image.fromarray(image)
    x = tf(pil)
    resized = np.asarray(pil.resize((size[1], size[0]), getattr(Image, FILTERS[filt])))
    if filt != "bicubic":
        return x, resized, tuple(size)

    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    hf = BlipImageProcessorPil(size={"height": size[0], "width": size[1]},
                               image_mean=list(mean), image_std=list(std))
    y = hf(images=image, return_tensors="pt", input_data_format="channels_last")["pixel_values"][0]
    d = (x - y).abs().max().item()
    assert d <= 1e-6, f"LAVIS and HF BLIP disagree by {d}"
    return x, resized, tuple(size)


def dino_reference(image, shortest_edge, crop, mean, std):
    from PIL import Image
    from transformers.image_transforms import get_resize_output_image_size
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil

    proc = BitImageProcessorPil(
        size={"shortest_edge": shortest_edge},
        crop_size={"height": crop[0], "width": crop[1]},
        resample=Image.BICUBIC,
        image_mean=list(mean),
        image_std=list(std),
    )
    x = proc(images=image, return_tensors="pt", input_data_format="channels_last")["pixel_values"][0]
    h, w = get_resize_output_image_size(
        image.transpose(2, 0, 1), size=shortest_edge, default_to_square=False,
        input_data_format="channels_first")
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC))
    from transformers.image_transforms import center_crop

    cropped = center_crop(resized, (crop[0], crop[1]), input_data_format="channels_last")
    return x, cropped, tuple(crop)


def write(out_dir, name, image, view, description, stride=None):
    kind = view["kind"]
    if kind == "sam":
        x, resized, hw = sam_reference(image, view["target"])
    elif kind == "clip":
        x, resized, hw = clip_reference(image, view["size"], view.get("mean", CLIP_MEAN),
                                        view.get("std", CLIP_STD), view.get("filter", "bicubic"))
    elif kind == "dino":
        x, resized, hw = dino_reference(image, view["shortest_edge"], view["crop"],
                                        view.get("mean", IMAGENET_MEAN),
                                        view.get("std", IMAGENET_STD))
    else:
        raise ValueError(kind)
    resized = torch.from_numpy(np.array(resized))
    if stride:
        x = x[:, ::stride, ::stride]
        resized = resized[::stride, ::stride]
    config = {"view": view}
    if stride:
        config["output_stride"] = stride
    common.write_case(
        os.path.join(out_dir, f"preprocess_{name}.safetensors"),
        component="preprocess",
        config=config,
        weights={},
        inputs={"image": torch.from_numpy(image)},
        outputs={
            "pixel_values": x.float(),
            "resized_u8": resized,
            "resized_hw": torch.tensor(hw, dtype=torch.float32),
        },
        description=description,
        script=__file__,
        tolerance=TOL,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--big", help="also write large unstrided cases here (not for committing)")
    ap.add_argument("--sweep", help="also write random resize cases here (not for committing)")
    ap.add_argument("--sweep-n", type=int, default=200)
    args = ap.parse_args()

    cases = [
        # SAM: small targets keep files small; one full 1024 case, strided.
        ("sam_37x53_t64", make_image(37, 53, 1, "structured"), {"kind": "sam", "target": 64},
         "SAM view, 53x37 downscaled to longest side 64 (bilinear, antialiased)", None),
        ("sam_17x640_t96", make_image(17, 640, 2, "noise"), {"kind": "sam", "target": 96},
         "SAM view, 640x17 strip downscaled 6.7x, short side rounds to 3", None),
        ("sam_1x5_t48", make_image(1, 5, 3, "noise"), {"kind": "sam", "target": 48},
         "SAM view, 5x1 image upscaled to 48x10", None),
        ("sam_150x200_t1024", make_image(150, 200, 4, "structured"), {"kind": "sam", "target": 1024},
         "SAM view at the real 1024 target (upscale 5.12x), outputs every 13th row/column", 13),
        # CLIP / BLIP-2 eval.
        ("clip_300x200_s224", make_image(200, 300, 5, "structured"),
         {"kind": "clip", "size": [224, 224]},
         "BLIP-2 eval view, 300x200 to 224x224 (bicubic: down in x, up in y)", 13),
        ("clip_37x53_s40", make_image(53, 37, 6, "noise"), {"kind": "clip", "size": [40, 40]},
         "CLIP view, 37x53 to 40x40 (bicubic, both passes)", None),
        ("clip_1x5_s24x30", make_image(5, 1, 7, "structured"),
         {"kind": "clip", "size": [24, 30], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
         "resize+normalise view with a non-square size and ImageNet mean/std, 1x5 upscaled", None),
        ("clip_640x17_s32", make_image(17, 640, 8, "structured"), {"kind": "clip", "size": [32, 32]},
         "CLIP view, 640x17 to 32x32 (20x downscale in x, upscale in y)", None),
        # Pillow 13 runs the vertical pass first iff h < H and 2(W - w) < H - h;
        # these two sit on either side of that boundary (32x2: vertical first).
        ("clip_60x60_s2x32", make_image(60, 60, 13, "noise"), {"kind": "clip", "size": [2, 32]},
         "pass order boundary: 60x60 to 32x2 runs the vertical pass first", None),
        ("clip_60x60_s2x31", make_image(60, 60, 14, "noise"), {"kind": "clip", "size": [2, 31]},
         "pass order boundary: 60x60 to 31x2 runs the horizontal pass first", None),
        ("clip_53x37_s61x23_nearest", make_image(37, 53, 15, "structured"),
         {"kind": "clip", "size": [61, 23], "filter": "nearest"},
         "resize view with Pillow NEAREST (up in y, down in x)", None),
        # DINOv2 (HF BitImageProcessor).
        ("dino_300x200_e256_c224", make_image(200, 300, 9, "structured"),
         {"kind": "dino", "shortest_edge": 256, "crop": [224, 224]},
         "DINOv2 view at the real sizes: 300x200 -> 384x256 -> crop 224, every 13th row/column", 13),
        ("dino_53x37_e40_c32", make_image(37, 53, 10, "noise"),
         {"kind": "dino", "shortest_edge": 40, "crop": [32, 32]},
         "DINO view, 53x37 -> 57x40 (odd crop offsets) -> crop 32", None),
        ("dino_17x640_e20_c28x14", make_image(640, 17, 11, "structured"),
         {"kind": "dino", "shortest_edge": 20, "crop": [28, 14]},
         "DINO view, tall 17x640 strip downscaled to 20x752, non-square crop 28x14", None),
        ("dino_5x1_e12_c16", make_image(1, 5, 12, "noise"),
         {"kind": "dino", "shortest_edge": 12, "crop": [16, 16]},
         "DINO view, 5x1 upscaled to 60x12, crop larger than the height pads with black", None),
    ]
    for name, image, view, desc, stride in cases:
        write(args.out, name, image, view, desc, stride)

    if args.big:
        big = [
            ("big_sam_480x640", make_image(480, 640, 20, "structured"), {"kind": "sam", "target": 1024}),
            ("big_sam_1500x1001", make_image(1500, 1001, 21, "noise"), {"kind": "sam", "target": 1024}),
            ("big_sam_333x1999", make_image(333, 1999, 22, "structured"), {"kind": "sam", "target": 1024}),
            ("big_clip_1001x733", make_image(733, 1001, 23, "structured"), {"kind": "clip", "size": [224, 224]}),
            ("big_clip_97x61", make_image(61, 97, 24, "noise"), {"kind": "clip", "size": [224, 224]}),
            ("big_dino_640x480", make_image(480, 640, 25, "structured"),
             {"kind": "dino", "shortest_edge": 256, "crop": [224, 224]}),
            ("big_dino_123x457", make_image(457, 123, 26, "noise"),
             {"kind": "dino", "shortest_edge": 256, "crop": [224, 224]}),
            ("big_dino_448_e448", make_image(701, 999, 27, "structured"),
             {"kind": "dino", "shortest_edge": 448, "crop": [448, 448]}),
        ]
        for name, image, view in big:
            write(args.big, name, image, view, "large local check", None)

    if args.sweep:
        rng = np.random.default_rng(1234)
        for i in range(args.sweep_n):
            H, W = (int(v) for v in rng.integers(1, 400, 2))
            h = max(1, int(H * rng.uniform(0.02, 3.0)))
            w = max(1, int(W * rng.uniform(0.02, 3.0)))
            if i % 3 == 0 and h < H:  # near the pass-order boundary
                w = max(1, int(W - (H - h) / 2 + rng.integers(-2, 3)))
            filt = ["bicubic", "bilinear", "nearest"][i % 3]
            image = make_image(H, W, 1000 + i, "noise" if i % 2 else "structured")
            view = {"kind": "clip", "size": [h, w], "filter": filt}
            write(args.sweep, f"sweep{i:03d}", image, view, "random resize sweep", None)


if __name__ == "__main__":
    main()
