"""Parity cases for the BLIP-2 Q-Former (crates/calico-model/src/qformer.rs).

Reference: HF transformers `Blip2QFormerModel` (eager attention, float32) on
the query-only path (`query_embeds`, no text). Output: `last_hidden_state`.

The `lavis` case stores the weights under LAVIS BLIP-2 keys
(`Qformer.bert.*`, renamed here with this script's own table) together with
a `query_tokens` tensor; its queries are `query_tokens + query_offset`
(Calico's CAM q'), which the Rust side builds from the checkpoint.

Usage: case_qformer.py --out DIR
"""

import argparse
import os
import re
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
    # name, config, batch, queries, image tokens, masked tokens per row, seed, names
    ("qformer_h32_d2_f2", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, encoder_hidden_size=24,
                               cross_attention_frequency=2), 2, 4, 5, None, 21, "hf"),
    ("qformer_h40_d3_f1", dict(hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                               intermediate_size=72, encoder_hidden_size=28,
                               cross_attention_frequency=1), 1, 8, 10, None, 22, "hf"),
    ("qformer_h32_d4_f2_mask", dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                    intermediate_size=56, encoder_hidden_size=32,
                                    cross_attention_frequency=2), 3, 6, 7, [0, 2, 4], 23, "hf"),
    ("qformer_lavis_h32_d3_f2", dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=64, encoder_hidden_size=24,
                                     cross_attention_frequency=2), 2, 4, 9, None, 24, "lavis"),
]


def lavis_key(k):
    """HF Blip2QFormerModel key -> LAVIS BLIP-2 checkpoint key."""
    if k.startswith("layernorm."):
        return "Qformer.bert.embeddings.LayerNorm." + k[len("layernorm."):]
    m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.*)", k)
    if m is None:
        raise KeyError(k)
    rest = m.group(2)
    for kind in ("attention", "crossattention"):
        if rest.startswith(kind + ".attention."):
            rest = kind + ".self." + rest[len(kind + ".attention."):]
    return f"Qformer.bert.encoder.layer.{m.group(1)}.{rest}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, batch, nq, ntok, masked, seed, names in CASES:
        seed_everything(seed)
        cfg = Blip2QFormerConfig(**over)
        cfg._attn_implementation = "eager"
        model = Blip2QFormerModel(cfg).eval()
        randomise_(model, seed)
        config = {k: getattr(cfg, k) for k in CONFIG_KEYS}
        config["num_query_tokens"] = nq
        encoder = torch.randn(batch, ntok, cfg.encoder_hidden_size)
        inputs = {"encoder_hidden_states": encoder}
        mask = None
        if masked is not None:
            # row b masks its last `masked[b]` tokens
            mask = torch.ones(batch, ntok, dtype=torch.long)
            for b, m in enumerate(masked):
                if m:
                    mask[b, ntok - m:] = 0
            inputs["encoder_attention_mask"] = mask.float()
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if names == "lavis":
            query_tokens = 0.5 * torch.randn(1, nq, cfg.hidden_size)
            offset = 0.3 * torch.randn(batch, 1, cfg.hidden_size)
            queries = query_tokens + offset
            weights = {lavis_key(k): v for k, v in weights.items()}
            weights["query_tokens"] = query_tokens
            inputs["query_offset"] = offset
            config["names"] = "lavis"
        else:
            queries = torch.randn(batch, nq, cfg.hidden_size)
            inputs["query_embeds"] = queries
        with torch.no_grad():
            out = model(
                query_embeds=queries,
                encoder_hidden_states=encoder,
                encoder_attention_mask=mask,
            ).last_hidden_state
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="qformer",
            config=config,
            weights=weights,
            inputs=inputs,
            outputs={"last_hidden_state": out},
            description=(
                f"HF Blip2QFormerModel query-only, {names} tensor names, batch {batch}, "
                f"{nq} queries, {ntok} image tokens, mask {masked}, seed {seed}"
            ),
            script=__file__,
        )


if __name__ == "__main__":
    main()
