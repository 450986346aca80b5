"""Parity cases for the LLaMA decoder (crates/calico-model/src/llama/).

Reference: HF transformers `LlamaForCausalLM` (eager attention, float32),
random tiny configs. Outputs: `logits` and `last_hidden_state` (the
`LlamaModel` output, i.e. after the final RMSNorm).

With an attention mask the reference gets `position_ids = cumsum(mask) - 1`
(1 at padded slots), the positions HF `generate` uses and the Rust model
derives from the mask; padded slots are compared too (HF's eager mask makes
a query that sees no key attend uniformly; ours does the same).

Usage: case_llama.py --out DIR
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import randomise_, seed_everything, write_case  # noqa: E402

from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

CONFIG_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
    "max_position_embeddings", "tie_word_embeddings", "hidden_act", "attention_bias",
    "mlp_bias", "bos_token_id", "eos_token_id",
)

CASES = [
    # name, config overrides, batch, seq, padding per row ("L3" left 3, "R2" right 2), seed,
    # how the config states RoPE θ ("theta": rope_theta, "params": rope_parameters)
    ("llama_gqa_h32_d2",
     dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
     2, 7, None, 31, "theta"),
    ("llama_tied_h48_d3",
     dict(vocab_size=80, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
          num_attention_heads=6, num_key_value_heads=6, tie_word_embeddings=True,
          rms_norm_eps=1e-5, rope_theta=100000.0),
     1, 9, None, 32, "params"),
    ("llama_padded_mqa_bias_h40_d2",
     dict(vocab_size=64, hidden_size=40, intermediate_size=72, num_hidden_layers=2,
          num_attention_heads=5, num_key_value_heads=1, attention_bias=True, mlp_bias=True,
          rope_theta=500.0),
     3, 8, ["L3", None, "R2"], 33, "theta"),
    ("llama_headdim16_h32_d2_padded",
     dict(vocab_size=72, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0),
     2, 6, ["L2", "L1"], 34, "theta"),
]


def build(over, seed):
    """A random tiny HF LlamaForCausalLM and the config JSON for the Rust side."""
    over = dict(over)
    theta = over.pop("rope_theta")
    cfg = LlamaConfig(rope_parameters={"rope_type": "default", "rope_theta": theta}, **over)
    cfg._attn_implementation = "eager"
    seed_everything(seed)
    model = LlamaForCausalLM(cfg).eval()
    randomise_(model, seed)
    config = {k: getattr(cfg, k) for k in CONFIG_KEYS}
    return model, cfg, config, theta


def base_weights(model, cfg):
    """The tensors a saved checkpoint holds (no lm_head when tied)."""
    w = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        w.pop("lm_head.weight", None)
    return w


def make_inputs(cfg, batch, seq, padding, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    if padding is None:
        return ids, None, None
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b, p in enumerate(padding):
        if p is None:
            continue
        n = int(p[1:])
        if p[0] == "L":
            mask[b, :n] = 0
        else:
            mask[b, seq - n:] = 0
    pos = mask.cumsum(-1) - 1
    pos.masked_fill_(mask == 0, 1)
    return ids, mask, pos


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, batch, seq, padding, seed, theta_style in CASES:
        model, cfg, config, theta = build(over, seed)
        if theta_style == "params":
            config["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        else:
            config["rope_theta"] = theta
        ids, mask, pos = make_inputs(cfg, batch, seq, padding, seed)
        inputs = {"input_ids": ids}
        if mask is not None:
            inputs["attention_mask"] = mask.float()
        with torch.no_grad():
            hidden = model.model(input_ids=ids, attention_mask=mask,
                                 position_ids=pos).last_hidden_state
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="llama",
            config=config,
            weights=base_weights(model, cfg),
            inputs=inputs,
            outputs={"logits": logits, "last_hidden_state": hidden},
            description=(
                f"HF LlamaForCausalLM eager, hidden {cfg.hidden_size}, {cfg.num_hidden_layers} "
                f"layers, {cfg.num_attention_heads}/{cfg.num_key_value_heads} heads, "
                f"tied {cfg.tie_word_embeddings}, batch {batch}x{seq}, padding {padding}, "
                f"theta {theta} ({theta_style}), seed {seed}"
            ),
            script=__file__,
        )


if __name__ == "__main__":
    main()
