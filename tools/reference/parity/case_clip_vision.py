"""Parity cases for the CLIP ViT vision tower of the LISA / GLaMM baselines
(crates/calico-model/src/clip_vision.rs).

Reference: HF transformers `CLIPVisionModel` (eager attention, float32),
weights stored under the checkpoint names `vision_model.*`.
Outputs: `last_hidden_state` (the last block's output; HF applies no final
LayerNorm to it), `pooler_output` (`post_layernorm` of the class token), and
LLaVA's feature selection: `features_m2_patch` = `hidden_states[-2][:, 1:]`
(select_layer -2, select_feature "patch") and `features_m1_cls_patch` =
`hidden_states[-1]` (select_layer -1, "cls_patch").

Usage: case_clip_vision.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randomise_, seed_everything, write_case  # noqa: E402

from transformers import CLIPVisionConfig, CLIPVisionModel  # noqa: E402

CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "image_size", "patch_size", "layer_norm_eps", "hidden_act",
)

CASES = [
    # name, config, batch, seed
    ("clip_vision_h32_d2_p14_quickgelu", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                              num_attention_heads=2, image_size=28, patch_size=14,
                                              hidden_act="quick_gelu"), 2, 21),
    ("clip_vision_h48_d3_p7_quickgelu", dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                             num_attention_heads=4, image_size=28, patch_size=7,
                                             hidden_act="quick_gelu"), 1, 22),
    ("clip_vision_h32_d3_p7_img42_gelu", dict(hidden_size=32, intermediate_size=80, num_hidden_layers=3,
                                              num_attention_heads=4, image_size=42, patch_size=7,
                                              hidden_act="gelu", layer_norm_eps=1e-6), 2, 23),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, batch, seed in CASES:
        seed_everything(seed)
        cfg = CLIPVisionConfig(**over)
        cfg._attn_implementation = "eager"
        model = CLIPVisionModel(cfg).eval()
        randomise_(model, seed)
        config = {k: getattr(cfg, k) for k in CONFIG_KEYS}
        pixel_values = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
        with torch.no_grad():
            out = model(pixel_values=pixel_values, output_hidden_states=True)
        hs = out.hidden_states
        assert len(hs) == cfg.num_hidden_layers + 1
        assert torch.equal(hs[-1], out.last_hidden_state)
        # Checkpoint names: transformers 5 builds CLIPVisionModel without the
        # `vision_model` submodule and adds the prefix when saving/loading.
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if not all(k.startswith("vision_model.") for k in state):
            state = {f"vision_model.{k}": v for k, v in state.items()}
        assert "vision_model.pre_layrnorm.weight" in state
        assert "vision_model.embeddings.position_embedding.weight" in state
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="clip_vision",
            config=config,
            weights=state,
            inputs={"pixel_values": pixel_values},
            outputs={
                "last_hidden_state": out.last_hidden_state,
                "pooler_output": out.pooler_output,
                "features_m2_patch": hs[-2][:, 1:],
                "features_m1_cls_patch": hs[-1],
            },
            description=f"HF CLIPVisionModel ({over['hidden_act']}), batch {batch}, seed {seed}",
            script=__file__,
        )


if __name__ == "__main__":
    main()
