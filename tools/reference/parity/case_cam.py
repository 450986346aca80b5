"""Parity cases for Calico's CAM (crates/calico-model/src/cam.rs).

Reference: VPG-C's update (Cheetah `LlamaModel.forward`, anchors §2.5)
written with HF transformers' `Blip2QFormerModel` (eager, float32) and two
`torch.nn.Linear`:

    q' = query_tokens + f_adaptation(hidden[b, last_instruction_idx[b]])
    for each image i: hidden[b, start:end] += f_reintegration(Q(q', X'_i)[b])

Weights: the Q-Former under `qformer.` (HF names), `query_tokens`, and
`cam.{layer}.f_adaptation.*`, `cam.{layer}.f_reintegration.*` (randomised,
i.e. a trained CAM, not the zero init).

Usage: case_cam.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randomise_, seed_everything, write_case  # noqa: E402

from transformers import Blip2QFormerConfig, Blip2QFormerModel  # noqa: E402

CONFIG_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "layer_norm_eps", "cross_attention_frequency", "encoder_hidden_size",
)

CASES = [
    # name, qformer config, queries, D_llm, layer, batch, T, image tokens N_g,
    # spans per row, last instruction index per row, seed
    ("cam_l11_two_images", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, encoder_hidden_size=24,
                                cross_attention_frequency=2),
     4, 48, 11, 2, 16, 5, [[(2, 6), (8, 12)], [(1, 5), (5, 9)]], [15, 13], 41),
    ("cam_l1_one_image", dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
                              intermediate_size=40, encoder_hidden_size=16,
                              cross_attention_frequency=1),
     3, 32, 1, 1, 9, 7, [[(3, 6)]], [8], 42),
    ("cam_l22_three_images", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, encoder_hidden_size=32,
                                  cross_attention_frequency=2),
     2, 40, 22, 2, 12, 6, [[(0, 2), (4, 6), (8, 10)], [(9, 11), (1, 3), (5, 7)]], [11, 7], 43),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, nq, d, layer, batch, t, ng, spans, last, seed in CASES:
        seed_everything(seed)
        cfg = Blip2QFormerConfig(**over)
        cfg._attn_implementation = "eager"
        qformer = Blip2QFormerModel(cfg).eval()
        h = cfg.hidden_size
        f_adaptation = torch.nn.Linear(d, h)
        f_reintegration = torch.nn.Linear(h, d)
        for m in (qformer, f_adaptation, f_reintegration):
            randomise_(m, seed)
        query_tokens = 0.5 * torch.randn(1, nq, h)
        n_images = len(spans[0])
        hidden = torch.randn(batch, t, d)
        xs = [torch.randn(batch, ng, cfg.encoder_hidden_size) for _ in range(n_images)]
        with torch.no_grad():
            guide = torch.stack([f_adaptation(hidden[b, last[b]]) for b in range(batch)])
            q = query_tokens + guide.unsqueeze(1)
            out = hidden.clone()
            for i, x in enumerate(xs):
                emb = f_reintegration(qformer(query_embeds=q, encoder_hidden_states=x).last_hidden_state)
                for b in range(batch):
                    s, e = spans[b][i]
                    out[b, s:e] += emb[b]
        weights = {f"qformer.{k}": v.detach().clone() for k, v in qformer.state_dict().items()}
        weights["query_tokens"] = query_tokens
        for n, m in (("f_adaptation", f_adaptation), ("f_reintegration", f_reintegration)):
            weights[f"cam.{layer}.{n}.weight"] = m.weight.detach().clone()
            weights[f"cam.{layer}.{n}.bias"] = m.bias.detach().clone()
        config = {k: getattr(cfg, k) for k in CONFIG_KEYS}
        config["num_query_tokens"] = nq
        inputs = {
            "hidden": hidden,
            "last_instruction_idx": torch.tensor(last, dtype=torch.int64),
            "spans": torch.tensor(spans, dtype=torch.int64),
        }
        for i, x in enumerate(xs):
            inputs[f"x_global.{i}"] = x
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="cam",
            config={"qformer": config, "layer": layer, "d_llm": d},
            weights=weights,
            inputs=inputs,
            outputs={"hidden": out},
            description=(
                f"VPG-C update with HF Blip2QFormerModel, layer {layer}, D_llm {d}, "
                f"{nq} queries, {n_images} images, batch {batch}, {t} tokens, seed {seed}"
            ),
            script=__file__,
        )


if __name__ == "__main__":
    main()
