"""Parity cases for SAM's prompt encoder + mask decoder, prompted as LISA and
GLaMM prompt them (anchors.md §2.1, §2.3).

Builds `segment_anything`'s PromptEncoder, TwoWayTransformer and MaskDecoder
at tiny sizes, randomises every weight, and runs them:

  sparse, dense = prompt_encoder(points, boxes, masks)      # SAM's own prompts
  sparse = cat(sparse, text_embeds)                         # LISA appends [SEG] embeddings
  low_res_masks, iou_predictions = mask_decoder(
      image_embeddings, prompt_encoder.get_dense_pe(), sparse, dense, multimask_output)

The installed segment_anything 1.0 has no `text_embeds` argument; LISA's
modified forward only concatenates them after the point/box tokens and uses
the text batch size for `no_mask_embed`'s broadcast, which is what this
script does by hand.

Usage: case_sam_prompt_mask_decoder.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer  # noqa: E402


CASES = [
    dict(
        name="text_d16_8x8",
        description="LISA [SEG] path, one text prompt, width 16, depth 1, 8x8 embedding",
        dim=16, depth=1, heads=2, mlp_dim=32, emb=(8, 8), mask_in_chans=8,
        iou_head_depth=3, iou_head_hidden_dim=16, n=1, multimask=False, seed=11,
    ),
    dict(
        name="text_d32_16x16_n3",
        description="LISA [SEG] path, three text prompts sharing one image, width 32, depth 2, 16x16",
        dim=32, depth=2, heads=4, mlp_dim=64, emb=(16, 16), mask_in_chans=8,
        iou_head_depth=3, iou_head_hidden_dim=32, n=3, multimask=False, seed=12,
    ),
    dict(
        name="points_text_multimask_d32_8x12",
        description="points (with padding point) + text, multimask output, non-square 8x12 embedding",
        dim=32, depth=2, heads=4, mlp_dim=64, emb=(8, 12), mask_in_chans=8,
        iou_head_depth=3, iou_head_hidden_dim=32, n=2, multimask=True, seed=13,
        points=True,
    ),
    dict(
        name="box_mask_text_d16_12x8",
        description="box + mask prompt + text, non-square 12x8 embedding, IoU head depth 2",
        dim=16, depth=2, heads=2, mlp_dim=32, emb=(12, 8), mask_in_chans=8,
        iou_head_depth=2, iou_head_hidden_dim=24, n=2, multimask=False, seed=14,
        boxes=True, masks=True,
    ),
]


def build(c):
    h, w = c["emb"]
    input_size = (4 * h, 4 * w)
    pe = PromptEncoder(
        embed_dim=c["dim"],
        image_embedding_size=(h, w),
        input_image_size=input_size,
        mask_in_chans=c["mask_in_chans"],
    )
    dec = MaskDecoder(
        transformer_dim=c["dim"],
        transformer=TwoWayTransformer(
            depth=c["depth"], embedding_dim=c["dim"], num_heads=c["heads"], mlp_dim=c["mlp_dim"],
        ),
        num_multimask_outputs=3,
        iou_head_depth=c["iou_head_depth"],
        iou_head_hidden_dim=c["iou_head_hidden_dim"],
    )
    common.randomise_(pe, c["seed"])
    common.randomise_(dec, c["seed"] + 100)
    config = {
        "prompt_encoder": {
            "embed_dim": c["dim"],
            "image_embedding_size": [h, w],
            "input_image_size": list(input_size),
            "mask_in_chans": c["mask_in_chans"],
        },
        "mask_decoder": {
            "transformer_dim": c["dim"],
            "depth": c["depth"],
            "num_heads": c["heads"],
            "mlp_dim": c["mlp_dim"],
            "attention_downsample_rate": 2,
            "num_multimask_outputs": 3,
            "iou_head_depth": c["iou_head_depth"],
            "iou_head_hidden_dim": c["iou_head_hidden_dim"],
        },
        "multimask_output": c["multimask"],
    }
    return pe.eval(), dec.eval(), config


def make_case(c, out_dir, script):
    common.seed_everything(c["seed"])
    pe, dec, config = build(c)
    n, dim = c["n"], c["dim"]
    h, w = c["emb"]
    H, W = 4 * h, 4 * w
    inputs = {
        "image_embeddings": torch.randn(1, dim, h, w),
        "text_embeds": torch.randn(n, 1, dim),
    }
    points = boxes = masks = None
    if c.get("points"):
        coords = torch.rand(n, 2, 2) * torch.tensor([W - 1.0, H - 1.0])
        labels = torch.tensor([[1, 0], [1, -1]][:n], dtype=torch.float32)
        inputs["point_coords"] = coords
        inputs["point_labels"] = labels
        points = (coords, labels.int())
    if c.get("boxes"):
        xy0 = torch.rand(n, 2) * torch.tensor([W / 2, H / 2])
        xy1 = xy0 + torch.rand(n, 2) * torch.tensor([W / 2, H / 2])
        boxes = torch.cat([xy0, xy1], dim=1)
        inputs["boxes"] = boxes
    if c.get("masks"):
        masks = 2.0 * torch.randn(n, 1, H, W)
        inputs["mask_inputs"] = masks

    with torch.no_grad():
        if points is None and boxes is None and masks is None:
            sparse = torch.empty((n, 0, dim))
            dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(n, -1, h, w)
        else:
            sparse, dense = pe(points=points, boxes=boxes, masks=masks)
        sparse = torch.cat([sparse, inputs["text_embeds"]], dim=1)
        dense_pe = pe.get_dense_pe()
        low_res_masks, iou_predictions = dec(
            image_embeddings=inputs["image_embeddings"],
            image_pe=dense_pe,
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=c["multimask"],
        )

    weights = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    weights.update({f"mask_decoder.{k}": v for k, v in dec.state_dict().items()})
    common.write_case(
        os.path.join(out_dir, f"sam_prompt_mask_decoder_{c['name']}.safetensors"),
        component="sam_prompt_mask_decoder",
        config=config,
        weights=weights,
        inputs=inputs,
        outputs={
            "low_res_masks": low_res_masks,
            "iou_predictions": iou_predictions,
            "dense_pe": dense_pe,
        },
        description=c["description"],
        script=script,
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for c in CASES:
        make_case(c, args.out, __file__)


if __name__ == "__main__":
    main()
