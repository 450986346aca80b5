"""Parity cases for the EVA-CLIP ViT (crates/calico-model/src/eva_vit.rs).

Reference: HF transformers `Blip2VisionModel` (eager attention, float32).
Outputs: `last_hidden_state` (after `post_layernorm`, what BLIP-2 feeds the
Q-Former), `encoder_last_hidden_state` (before it) and `pooler_output`.

The `lavis` case stores the same kind of model under LAVIS BLIP-2 keys
(`visual_encoder.*`, `ln_vision.*`, split `q_bias`/`v_bias`), renamed here
with this script's own table; its key bias is zeroed (LAVIS has none) and
its final LayerNorm uses eps 1e-5 like LAVIS's `ln_vision`.

Usage: case_eva_vit.py --out DIR
"""

import argparse
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randomise_, seed_everything, write_case  # noqa: E402

from transformers import Blip2VisionConfig, Blip2VisionModel  # noqa: E402

CONFIG_KEYS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "image_size", "patch_size", "layer_norm_eps", "hidden_act", "qkv_bias",
)

CASES = [
    # name, config, batch, seed, names
    ("eva_vit_h32_d2_p14", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, image_size=28, patch_size=14), 2, 11, "hf"),
    ("eva_vit_h48_d2_p7", dict(hidden_size=48, intermediate_size=104, num_hidden_layers=2,
                               num_attention_heads=4, image_size=28, patch_size=7), 1, 12, "hf"),
    ("eva_vit_h32_d3_p7_img42", dict(hidden_size=32, intermediate_size=88, num_hidden_layers=3,
                                     num_attention_heads=4, image_size=42, patch_size=7), 2, 13, "hf"),
    ("eva_vit_h32_d2_nobias", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, image_size=21, patch_size=7,
                                   qkv_bias=False), 1, 14, "hf"),
    ("eva_vit_lavis_h32_d2", dict(hidden_size=32, intermediate_size=72, num_hidden_layers=2,
                                  num_attention_heads=2, image_size=28, patch_size=7), 2, 15, "lavis"),
]

LAVIS_LN_VISION_EPS = 1e-5


LAVIS_FIXED = {
    "embeddings.class_embedding": "visual_encoder.cls_token",
    "embeddings.position_embedding": "visual_encoder.pos_embed",
    "embeddings.patch_embedding.weight": "visual_encoder.patch_embed.proj.weight",
    "embeddings.patch_embedding.bias": "visual_encoder.patch_embed.proj.bias",
    "post_layernorm.weight": "ln_vision.weight",
    "post_layernorm.bias": "ln_vision.bias",
}
LAVIS_LAYER_PREFIXES = [
    ("layer_norm1.", "norm1."),
    ("layer_norm2.", "norm2."),
    ("self_attn.qkv.weight", "attn.qkv.weight"),
    ("self_attn.projection.", "attn.proj."),
    ("mlp.", "mlp."),
]


def to_lavis(state):
    """HF Blip2VisionModel state dict -> LAVIS BLIP-2 checkpoint keys; the
    fused qkv bias is split into q_bias / v_bias (its key third must be 0)."""
    out = {}
    for k, v in state.items():
        if k in LAVIS_FIXED:
            out[LAVIS_FIXED[k]] = v
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", k)
        block, rest = f"visual_encoder.blocks.{m.group(1)}.", m.group(2)
        if rest == "self_attn.qkv.bias":
            d = v.shape[0] // 3
            assert torch.all(v[d:2 * d] == 0), "LAVIS has no key bias"
            out[block + "attn.q_bias"] = v[:d]
            out[block + "attn.v_bias"] = v[2 * d:]
            continue
        for a, b in LAVIS_LAYER_PREFIXES:
            if rest.startswith(a):
                out[block + b + rest[len(a):]] = v
                break
        else:
            raise KeyError(k)
    assert len(out) == len(state) + sum(k.endswith("qkv.bias") for k in state)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, batch, seed, names in CASES:
        seed_everything(seed)
        cfg = Blip2VisionConfig(**over)
        cfg._attn_implementation = "eager"
        model = Blip2VisionModel(cfg).eval()
        randomise_(model, seed)
        config = {k: getattr(cfg, k) for k in CONFIG_KEYS}
        if names == "lavis":
            with torch.no_grad():
                for i in range(cfg.num_hidden_layers):
                    b = model.encoder.layers[i].self_attn.qkv.bias
                    d = cfg.hidden_size
                    b[d:2 * d] = 0.0
            model.post_layernorm.eps = LAVIS_LN_VISION_EPS
            config["post_layernorm_eps"] = LAVIS_LN_VISION_EPS
            config["names"] = "lavis"
        pixel_values = torch.randn(batch, 3, cfg.image_size, cfg.image_size)
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
            pre = model.encoder(inputs_embeds=model.embeddings(pixel_values)).last_hidden_state
            assert torch.allclose(model.post_layernorm(pre), out.last_hidden_state, atol=1e-6)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if names == "lavis":
            state = to_lavis(state)
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="eva_vit",
            config=config,
            weights=state,
            inputs={"pixel_values": pixel_values},
            outputs={
                "last_hidden_state": out.last_hidden_state,
                "encoder_last_hidden_state": pre,
                "pooler_output": out.pooler_output,
            },
            description=f"HF Blip2VisionModel, {names} tensor names, batch {batch}, seed {seed}",
            script=__file__,
        )


if __name__ == "__main__":
    main()
