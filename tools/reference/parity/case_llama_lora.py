"""Parity cases for LoRA on the LLaMA decoder (crates/calico-model/src/llama/).

Reference: PEFT `get_peft_model(LlamaForCausalLM, LoraConfig(r, lora_alpha,
target_modules, lora_dropout=0.05))` in eval mode, with random NON-zero
`lora_A`/`lora_B` (a fresh adapter is a no-op and would hide a loader bug).
Outputs: `logits` (adapter applied unmerged) and `logits_merged` (after
`merge_and_unload()`); the Rust side computes the second with `merge_lora`.

Two tensor-name layouts (config `names`):
  peft_state_dict    every tensor as `get_peft_model(..).state_dict()` names it:
                     `base_model.model.model.layers.N.self_attn.q_proj.base_layer.weight`,
                     `...q_proj.lora_A.default.weight`, other tensors under
                     `base_model.model.`;
  peft_adapter_file  the base model under HF names plus the adapter as
                     `save_pretrained` writes adapter_model.safetensors:
                     `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`.

Usage: case_llama_lora.py --out DIR
"""

import argparse
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from case_llama import base_weights, build, make_inputs  # noqa: E402
from common import write_case  # noqa: E402

from peft import LoraConfig, get_peft_model  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

CASES = [
    # name, llama config, lora (r, alpha, targets), batch, seq, padding, seed, names
    ("llama_lora_statedict_gqa_h32_d2",
     dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0),
     (4, 8, ["q_proj", "v_proj"]), 2, 6, None, 41, "peft_state_dict"),
    ("llama_lora_adapterfile_tied_h48_d2",
     dict(vocab_size=56, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
          num_attention_heads=6, num_key_value_heads=3, tie_word_embeddings=True,
          rope_theta=100000.0),
     (2, 16, ["q_proj", "v_proj"]), 1, 8, None, 42, "peft_adapter_file"),
    ("llama_lora_statedict_alltargets_padded_h32_d2",
     dict(vocab_size=48, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
          num_attention_heads=4, num_key_value_heads=4, rope_theta=10000.0),
     (8, 16, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
     2, 7, ["L2", "R1"], 43, "peft_state_dict"),
]


def randomise_lora_(model, seed):
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    for name, over, (r, alpha, targets), batch, seq, padding, seed, names in CASES:
        model, cfg, config, theta = build(over, seed)
        config["rope_theta"] = theta
        config["lora"] = {"r": r, "lora_alpha": alpha, "target_modules": targets}
        config["names"] = names
        base = base_weights(model, cfg)
        peft_model = get_peft_model(
            model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.05))
        randomise_lora_(peft_model, seed)
        peft_model.eval()
        if names == "peft_state_dict":
            weights = {k: v.detach().clone() for k, v in peft_model.state_dict().items()}
            if cfg.tie_word_embeddings:
                weights.pop("base_model.model.lm_head.weight", None)
        else:
            with tempfile.TemporaryDirectory() as d:
                peft_model.save_pretrained(d)
                adapter = load_file(os.path.join(d, "adapter_model.safetensors"))
            weights = dict(base)
            weights.update(adapter)
        ids, mask, pos = make_inputs(cfg, batch, seq, padding, seed)
        inputs = {"input_ids": ids}
        if mask is not None:
            inputs["attention_mask"] = mask.float()
        with torch.no_grad():
            logits = peft_model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
            merged = peft_model.merge_and_unload()
            logits_merged = merged(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        write_case(
            os.path.join(args.out, f"{name}.safetensors"),
            component="llama_lora",
            config=config,
            weights=weights,
            inputs=inputs,
            outputs={"logits": logits, "logits_merged": logits_merged},
            description=(
                f"PEFT LoRA r {r} alpha {alpha} on {targets} over HF LlamaForCausalLM eager "
                f"(hidden {cfg.hidden_size}, {cfg.num_attention_heads}/{cfg.num_key_value_heads} "
                f"heads, tied {cfg.tie_word_embeddings}), {names} names, batch {batch}x{seq}, "
                f"padding {padding}, seed {seed}"
            ),
            script=__file__,
        )


if __name__ == "__main__":
    main()
