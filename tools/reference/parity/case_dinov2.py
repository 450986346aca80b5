"""Parity cases for the DINOv2 ViT (component `dinov2`, crates/calico-model/src/dinov2/).

Three groups of cases:

* `hf`: transformers `Dinov2Model`, weights under the names `save_pretrained`
  writes (and the facebook/dinov2-* files carry): `encoder.layer.N.attention.
  attention.query`, `mlp.weights_in` for SwiGLU, ... One case keeps the names
  of the in-memory transformers 5 modules (`attention.q_proj`, `mlp.gate_proj`)
  instead, which the loader also accepts.
* `hf` with registers: transformers `Dinov2WithRegistersModel` (its position
  embeddings are resampled with antialiased bicubic).
* `hub`: the torch-hub / facebookresearch/dinov2 layout (`blocks.N.attn.qkv`
  fused, `ls1.gamma`, `pos_embed`, `norm`). With `--dinov2-src DIR` (a
  checkout of github.com/facebookresearch/dinov2, which is not pip
  installable) the reference is that repository's own `DinoVisionTransformer`.
  Without it the hub cases are computed by the transformers model with its
  state dict renamed into hub names and its position-embedding resampling
  replaced by the hub rule (scale factor `(grid + offset) / native` when
  `interpolate_offset` is non-zero, else output size; antialias flag), and the
  case description says so.

Every case stores `last_hidden_state`, `pooler_output`, the hidden states
after layer 1 (`hidden_states.1`, no final norm) and the same with the final
norm applied (`hidden_states_norm.1`).

Run:
  python tools/reference/parity/case_dinov2.py --out crates/calico-model/tests/fixtures/parity \
      [--dinov2-src /path/to/facebookresearch/dinov2]
"""

import argparse
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from transformers import (  # noqa: E402
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
)

LAYER = 1  # which intermediate layer the cases record


def hf_config_json(cfg, names="hf", extra=None):
    keys = [
        "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
        "image_size", "patch_size", "num_channels", "layer_norm_eps",
        "layerscale_value", "hidden_act", "qkv_bias", "use_swiglu_ffn",
    ]
    out = {k: getattr(cfg, k) for k in keys}
    out["num_register_tokens"] = getattr(cfg, "num_register_tokens", 0)
    out["names"] = names
    out["interpolation"] = "hf"
    if extra:
        out.update(extra)
    return out


def saved_state_dict(model):
    """The tensors `save_pretrained` writes (the checkpoint-file names)."""
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return load_file(os.path.join(d, "model.safetensors"))


def hf_outputs(model, x):
    with torch.no_grad():
        o = model(pixel_values=x, output_hidden_states=True)
        h = o.hidden_states[LAYER]
        return {
            "last_hidden_state": o.last_hidden_state,
            "pooler_output": o.pooler_output,
            f"hidden_states.{LAYER}": h,
            f"hidden_states_norm.{LAYER}": model.layernorm(h),
        }


def build_hf(kind, seed, **kw):
    common.seed_everything(seed)
    if kind == "registers":
        cfg = Dinov2WithRegistersConfig(**kw)
        model = Dinov2WithRegistersModel(cfg)
    else:
        cfg = Dinov2Config(**kw)
        model = Dinov2Model(cfg)
    model.config._attn_implementation = "eager"
    model.eval()
    common.randomise_(model, seed)
    return cfg, model


def hf_case(args, name, *, kind, seed, input_hw, batch=2, v5_names=False, **kw):
    cfg, model = build_hf(kind, seed, **kw)
    x = torch.randn(batch, 3, *input_hw, generator=torch.Generator().manual_seed(seed + 100))
    weights = dict(model.state_dict()) if v5_names else saved_state_dict(model)
    outputs = hf_outputs(model, x)
    cls = type(model).__name__
    desc = (f"transformers {cls}, weights under the "
            f"{'in-memory transformers 5 module' if v5_names else 'checkpoint-file (save_pretrained)'} names; "
            f"input {tuple(x.shape)}, native grid {cfg.image_size // cfg.patch_size}^2")
    common.write_case(
        os.path.join(args.out, f"dinov2_{name}.safetensors"),
        component="dinov2",
        config=hf_config_json(cfg),
        weights=weights,
        inputs={"pixel_values": x},
        outputs=outputs,
        description=desc,
        script=__file__,
    )


# ----------------------------------------------------------------------------
# hub layout


def hf_to_hub(sd, num_layers, swiglu):
    """transformers 5 in-memory names -> torch-hub names (fusing q, k, v)."""
    out = {
        "cls_token": sd["embeddings.cls_token"],
        "mask_token": sd["embeddings.mask_token"],
        "pos_embed": sd["embeddings.position_embeddings"],
        "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": sd["layernorm.weight"],
        "norm.bias": sd["layernorm.bias"],
    }
    if "embeddings.register_tokens" in sd:
        out["register_tokens"] = sd["embeddings.register_tokens"]
    for i in range(num_layers):
        s, d = f"encoder.layer.{i}.", f"blocks.{i}."
        for n in ("norm1", "norm2"):
            out[d + n + ".weight"] = sd[s + n + ".weight"]
            out[d + n + ".bias"] = sd[s + n + ".bias"]
        out[d + "attn.qkv.weight"] = torch.cat([sd[s + f"attention.{p}_proj.weight"] for p in "qkv"], 0)
        if s + "attention.q_proj.bias" in sd:
            out[d + "attn.qkv.bias"] = torch.cat([sd[s + f"attention.{p}_proj.bias"] for p in "qkv"], 0)
        out[d + "attn.proj.weight"] = sd[s + "attention.o_proj.weight"]
        out[d + "attn.proj.bias"] = sd[s + "attention.o_proj.bias"]
        out[d + "ls1.gamma"] = sd[s + "layer_scale1.lambda1"]
        out[d + "ls2.gamma"] = sd[s + "layer_scale2.lambda1"]
        if swiglu:
            out[d + "mlp.w12.weight"] = torch.cat([sd[s + "mlp.gate_proj.weight"], sd[s + "mlp.up_proj.weight"]], 0)
            out[d + "mlp.w12.bias"] = torch.cat([sd[s + "mlp.gate_proj.bias"], sd[s + "mlp.up_proj.bias"]], 0)
            out[d + "mlp.w3.weight"] = sd[s + "mlp.down_proj.weight"]
            out[d + "mlp.w3.bias"] = sd[s + "mlp.down_proj.bias"]
        else:
            for n in ("fc1", "fc2"):
                out[d + f"mlp.{n}.weight"] = sd[s + f"mlp.{n}.weight"]
                out[d + f"mlp.{n}.bias"] = sd[s + f"mlp.{n}.bias"]
    return out


def hub_rule_interpolation(offset, antialias):
    """A replacement for the transformers embeddings' `interpolate_pos_encoding`
    that resamples like the facebookresearch/dinov2 repository."""

    def interpolate(self, embeddings, height, width):
        n = embeddings.shape[1] - 1
        pos = self.position_embeddings
        m2 = pos.shape[1] - 1
        if n == m2 and height == width:
            return pos
        m = int(math.sqrt(m2))
        p = self.patch_embeddings.patch_size[0]
        gh, gw = height // p, width // p
        grid = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        if offset:
            kwargs = {"scale_factor": (float(gh + offset) / m, float(gw + offset) / m)}
        else:
            kwargs = {"size": (gh, gw)}
        grid = F.interpolate(grid, mode="bicubic", antialias=antialias, **kwargs)
        assert grid.shape[-2:] == (gh, gw)
        grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat((pos[:, :1], grid.to(pos.dtype)), dim=1)

    return interpolate


def hub_case(args, name, *, seed, input_hw, hidden, layers, heads, image_size, patch,
             registers, swiglu, mlp_ratio=4, batch=2):
    offset = 0.0 if registers else 0.1
    antialias = registers > 0
    x = torch.randn(batch, 3, *input_hw, generator=torch.Generator().manual_seed(seed + 100))
    config = {
        "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "mlp_ratio": mlp_ratio, "image_size": image_size, "patch_size": patch,
        "layer_norm_eps": 1e-6, "layerscale_value": 1.0, "hidden_act": "gelu",
        "qkv_bias": True, "use_swiglu_ffn": swiglu, "num_register_tokens": registers,
        "names": "hub", "interpolation": "hub",
    }
    if args.dinov2_src:
        sys.path.insert(0, args.dinov2_src)
        from dinov2.models.vision_transformer import DinoVisionTransformer

        common.seed_everything(seed)
        model = DinoVisionTransformer(
            img_size=image_size, patch_size=patch, embed_dim=hidden, depth=layers,
            num_heads=heads, mlp_ratio=mlp_ratio, init_values=1.0,
            ffn_layer="swiglufused" if swiglu else "mlp", block_chunks=0,
            num_register_tokens=registers, interpolate_antialias=antialias,
            interpolate_offset=offset,
        ).eval()
        common.randomise_(model, seed)
        with torch.no_grad():
            (h,) = model.get_intermediate_layers(x, n=[LAYER - 1], norm=False)
            # get_intermediate_layers drops CLS and registers; recompute the
            # full sequence the same way for the recorded output
            (h_full,) = model._get_intermediate_layers_not_chunked(x, n=[LAYER - 1])
            assert torch.equal(h_full[:, 1 + registers:], h)
            feats = model.forward_features(x)
            last = torch.cat(
                [feats["x_norm_clstoken"][:, None], feats["x_norm_regtokens"], feats["x_norm_patchtokens"]], 1
            )
            outputs = {
                "last_hidden_state": last,
                "pooler_output": feats["x_norm_clstoken"],
                f"hidden_states.{LAYER}": h_full,
                f"hidden_states_norm.{LAYER}": model.norm(h_full),
            }
        weights = dict(model.state_dict())
        ref = "facebookresearch/dinov2 DinoVisionTransformer (from --dinov2-src)"
    else:
        kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  mlp_ratio=mlp_ratio, image_size=image_size, patch_size=patch,
                  use_swiglu_ffn=swiglu)
        if registers:
            cfg, model = build_hf("registers", seed, num_register_tokens=registers, **kw)
        else:
            cfg, model = build_hf("plain", seed, **kw)
        emb = model.embeddings
        emb.interpolate_pos_encoding = hub_rule_interpolation(offset, antialias).__get__(emb)
        outputs = hf_outputs(model, x)
        weights = hf_to_hub(dict(model.state_dict()), layers, swiglu)
        ref = ("transformers model with hub-renamed weights and the hub position-embedding "
               "rule re-implemented in the generator (no --dinov2-src given)")
    desc = (f"torch-hub layout ({registers} registers, offset {offset}, antialias {antialias}); "
            f"reference: {ref}; input {tuple(x.shape)}, native grid {image_size // patch}^2")
    common.write_case(
        os.path.join(args.out, f"dinov2_{name}.safetensors"),
        component="dinov2",
        config=config,
        weights=weights,
        inputs={"pixel_values": x},
        outputs=outputs,
        description=desc,
        script=__file__,
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--dinov2-src", default=os.environ.get("DINOV2_SRC"),
                    help="checkout of facebookresearch/dinov2 for the hub-layout references")
    args = ap.parse_args()

    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=16, patch_size=4)
    # transformers Dinov2Model (plain bicubic, output-size mapping)
    hf_case(args, "hf_native", kind="plain", seed=1, input_hw=(16, 16), **small)
    hf_case(args, "hf_interp_nonsquare", kind="plain", seed=2, input_hw=(28, 12),
            hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=2,
            image_size=20, patch_size=4, qkv_bias=False)
    hf_case(args, "hf_swiglu_remainder", kind="plain", seed=3, input_hw=(18, 23), batch=1,
            use_swiglu_ffn=True, layerscale_value=0.5, layer_norm_eps=1e-5, **small)
    hf_case(args, "hf_v5names_swiglu", kind="plain", seed=4, input_hw=(8, 36), batch=1,
            v5_names=True, use_swiglu_ffn=True, **small)
    # transformers Dinov2WithRegistersModel (antialiased bicubic)
    hf_case(args, "reg_native", kind="registers", seed=5, input_hw=(16, 16),
            num_register_tokens=4, **small)
    hf_case(args, "reg_upsample", kind="registers", seed=6, input_hw=(24, 36),
            num_register_tokens=2, **small)
    hf_case(args, "reg_mixed_swiglu", kind="registers", seed=7, input_hw=(8, 28), batch=1,
            num_register_tokens=3, use_swiglu_ffn=True, hidden_size=32, num_hidden_layers=3,
            num_attention_heads=4, mlp_ratio=2, image_size=20, patch_size=4)
    # torch-hub layout
    hub = dict(hidden=32, layers=2, heads=2, image_size=16, patch=4)
    hub_case(args, "hub_native", seed=8, input_hw=(16, 16), registers=0, swiglu=False, **hub)
    hub_case(args, "hub_interp_nonsquare", seed=9, input_hw=(28, 20), registers=0, swiglu=False, **hub)
    hub_case(args, "hub_reg_interp", seed=10, input_hw=(12, 32), registers=4, swiglu=False, **hub)
    hub_case(args, "hub_reg_native", seed=12, input_hw=(16, 16), registers=4, swiglu=False, **hub)
    hub_case(args, "hub_reg_swiglu_nonsquare", seed=13, input_hw=(20, 28), batch=1, registers=2,
             swiglu=True, hidden=32, layers=3, heads=4, image_size=16, patch=4, mlp_ratio=2)
    hub_case(args, "hub_swiglu_interp", seed=11, input_hw=(24, 8), batch=1, registers=0, swiglu=True,
             hidden=32, layers=2, heads=4, image_size=20, patch=4, mlp_ratio=2)


if __name__ == "__main__":
    main()
