"""Parity cases for Calico's CEM (crates/calico-model/src/cem.rs).

No released CEM exists; the reference is PyTorch's own cross-attention,
`torch.nn.MultiheadAttention(embed_dim=D_g, num_heads, kdim=D_s, vdim=D_s,
batch_first=True)`, with EVA tokens as queries and DINOv2 tokens as keys and
values, optional pre-LayerNorms on both inputs, and the residual:
X'_global = X_global + MHA(LN_g(X_global), LN_s(X_semantic)).

MHA's `q_proj_weight`, `k_proj_weight`, `v_proj_weight`, `in_proj_bias`
(split in three) and `out_proj` are stored under our names
`cem.{q,k,v,out}_proj.{weight,bias}` (and `cem.norm_{global,semantic}.*`).

Usage: case_cem.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randomise_, seed_everything, write_case  # noqa: E402

CASES = [
    # name, D_g, D_s, heads, layer_norm, batch, N_g, N_s, seed
    ("cem_g32_s48_h4", 32, 48, 4, False, 2, 5, 9, 31),
    ("cem_g24_s16_h2_ln", 24, 16, 2, True, 2, 7, 4, 32),
    ("cem_g64_s40_h8", 64, 40, 8, False, 1, 17, 16, 33),
]


class Reference(torch.nn.Module):
    def __init__(self, dg, ds, heads, layer_norm):
        super().__init__()
        self.mha = torch.nn.MultiheadAttention(dg, heads, kdim=ds, vdim=ds, batch_first=True)
        self.norm_global = torch.nn.LayerNorm(dg, eps=1e-6) if layer_norm else None
        self.norm_semantic = torch.nn.LayerNorm(ds, eps=1e-6) if layer_norm else None

    def forward(self, xg, xs):
        q, kv = xg, xs
        if self.norm_global is not None:
            q, kv = self.norm_global(xg), self.norm_semantic(xs)
        out, _ = self.mha(q, kv, kv, need_weights=False)
        return xg + out


def our_names(model, dg):
    sd = model.state_dict()
    b = sd["mha.in_proj_bias"]
    w = {
        "cem.q_proj.weight": sd["mha.q_proj_weight"],
        "cem.k_proj.weight": sd["mha.k_proj_weight"],
        "cem.v_proj.weight": sd["mha.v_proj_weight"],
        "cem.q_proj.bias": b[:dg],
        "cem.k_proj.bias": b[dg:2 * dg],
        "cem.v_proj.bias": b[2 * dg:],
        "cem.out_proj.weight": sd["mha.out_proj.weight"],
        "cem.out_proj.bias": sd["mha.out_proj.bias"],
    }
    for n in ("norm_global", "norm_semantic"):
        if f"{n}.weight" in sd:
            w[f"cem.{n}.weight"] = sd[f"{n}.weight"]
            w[f"cem.{n}.bias"] = sd[f"{n}.bias"]
    return {k: v.detach().clone() for k, v in w.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, dg, ds, heads, layer_norm, batch, ng, ns, seed in CASES:
        seed_everything(seed)
        model = Reference(dg, ds, heads, layer_norm).eval()
        randomise_(model, seed)
        xg = torch.randn(batch, ng, dg)
        xs = torch.randn(batch, ns, ds)
        with torch.no_grad():
            out = model(xg, xs)
        config = {
            "cem": {"num_attention_heads": heads, "layer_norm": layer_norm, "layer_norm_eps": 1e-6},
            "d_global": dg,
            "d_semantic": ds,
        }
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="cem",
            config=config,
            weights=our_names(model, dg),
            inputs={"x_global": xg, "x_semantic": xs},
            outputs={"x_global_fused": out},
            description=(
                f"torch.nn.MultiheadAttention(kdim/vdim) cross-attention + residual, "
                f"D_g {dg}, D_s {ds}, {heads} heads, layer_norm {layer_norm}, batch {batch}, "
                f"{ng} EVA / {ns} DINOv2 tokens, seed {seed}"
            ),
            script=__file__,
        )


if __name__ == "__main__":
    main()
