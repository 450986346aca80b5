#!/usr/bin/env python3
"""Forward time of each vision block at ViT-B-class size: candle vs PyTorch eager, same run.

    .venv-ref/bin/python tools/bench/vision_bench.py [--repeats 3] [--only eva_vit,qformer,...]

For every block the script builds the reference module (HF transformers or
segment_anything, versions pinned in tools/reference/requirements-model.txt)
at a ViT-B-class configuration with random weights, times its forward pass
(CPU, eager, float32, torch threads = machine cores, best of R after one
warm-up), writes weights + inputs + outputs as a parity case
(docs/parity.md) and runs `cargo bench -p calico-model --bench vision` on
that case, which loads the weights by their checkpoint names, replays the
forward R times and reports its best time and its relative error against
PyTorch's outputs. Prints one table; ratio = PyTorch time / candle time
(> 1 means candle is faster).

Blocks (batch = images of one Calico pair where it applies):
  eva_vit                  Blip2VisionModel, 768 wide, 12 layers, 224 px / patch 14, batch 2
  qformer                  Blip2QFormerModel, BERT-base (768, 12 layers), 32 queries over 257 tokens, batch 2
  dinov2                   Dinov2Model ViT-B/14 at 224 px, batch 2
  sam_image_encoder        segment_anything ImageEncoderViT ViT-B at 1024 px, batch 1
  sam_prompt_mask_decoder  PromptEncoder + MaskDecoder at SAM's size (256, 64x64), 3 [SEG] prompts
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "reference", "parity"))
import common  # noqa: E402


def best_time(fn, repeats):
    with torch.no_grad():
        fn()
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t)
    return best, out


def eva_vit():
    from transformers import Blip2VisionConfig, Blip2VisionModel
    cfg = Blip2VisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, image_size=224, patch_size=14)
    cfg._attn_implementation = "eager"
    model = Blip2VisionModel(cfg).eval()
    x = torch.randn(2, 3, 224, 224)
    config = {k: getattr(cfg, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "image_size", "patch_size",
                                          "hidden_act", "layer_norm_eps", "qkv_bias")}

    def run():
        return {"last_hidden_state": model(pixel_values=x).last_hidden_state}
    return "768×12, 224 px, batch 2", model.state_dict(), {"pixel_values": x}, config, run


def qformer():
    from transformers import Blip2QFormerConfig, Blip2QFormerModel
    cfg = Blip2QFormerConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, cross_attention_frequency=2,
                             encoder_hidden_size=768)
    cfg._attn_implementation = "eager"
    model = Blip2QFormerModel(cfg).eval()
    q = torch.randn(2, 32, 768)
    enc = torch.randn(2, 257, 768)
    config = {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "intermediate_size", "hidden_act", "layer_norm_eps",
                                          "cross_attention_frequency", "encoder_hidden_size")}
    config["num_query_tokens"] = 32

    def run():
        return {"last_hidden_state": model(query_embeds=q, encoder_hidden_states=enc).last_hidden_state}
    return ("BERT-base, 32 q × 257 tokens, batch 2", model.state_dict(),
            {"query_embeds": q, "encoder_hidden_states": enc}, config, run)


def dinov2():
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       image_size=518, patch_size=14)
    cfg._attn_implementation = "eager"
    model = Dinov2Model(cfg).eval()
    x = torch.randn(2, 3, 224, 224)
    config = {k: getattr(cfg, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "mlp_ratio", "image_size", "patch_size", "layer_norm_eps",
                                          "layerscale_value", "hidden_act", "qkv_bias",
                                          "use_swiglu_ffn")}
    config["names"] = "hf"
    config["interpolation"] = "hf"
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        from safetensors.torch import load_file
        state = load_file(os.path.join(d, "model.safetensors"))

    def run():
        o = model(pixel_values=x)
        return {"last_hidden_state": o.last_hidden_state}
    return "ViT-B/14, 224 px, batch 2", state, {"pixel_values": x}, config, run


def sam_image_encoder():
    from functools import partial
    from segment_anything.modeling import ImageEncoderViT
    enc = ImageEncoderViT(depth=12, embed_dim=768, img_size=1024, mlp_ratio=4,
                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=12,
                          patch_size=16, qkv_bias=True, use_rel_pos=True,
                          global_attn_indexes=[2, 5, 8, 11], window_size=14, out_chans=256).eval()
    x = torch.randn(1, 3, 1024, 1024)
    config = {"img_size": 1024, "patch_size": 16, "embed_dim": 768, "depth": 12, "num_heads": 12,
              "mlp_ratio": 4.0, "out_chans": 256, "qkv_bias": True, "use_rel_pos": True,
              "window_size": 14, "global_attn_indexes": [2, 5, 8, 11]}
    state = {f"image_encoder.{k}": v for k, v in enc.state_dict().items()}

    def run():
        return {"image_embeddings": enc(x)}
    return "ViT-B, 1024 px, batch 1", state, {"pixel_values": x}, config, run


def sam_prompt_mask_decoder():
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
    pe = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                       mask_in_chans=16).eval()
    dec = MaskDecoder(transformer_dim=256, transformer=TwoWayTransformer(
        depth=2, embedding_dim=256, num_heads=8, mlp_dim=2048), num_multimask_outputs=3,
        iou_head_depth=3, iou_head_hidden_dim=256).eval()
    emb = torch.randn(1, 256, 64, 64)
    text = torch.randn(3, 1, 256)
    config = {
        "prompt_encoder": {"embed_dim": 256, "image_embedding_size": [64, 64],
                           "input_image_size": [1024, 1024], "mask_in_chans": 16},
        "mask_decoder": {"transformer_dim": 256, "depth": 2, "num_heads": 8, "mlp_dim": 2048,
                         "attention_downsample_rate": 2, "num_multimask_outputs": 3,
                         "iou_head_depth": 3, "iou_head_hidden_dim": 256},
        "multimask_output": False,
    }
    state = {f"prompt_encoder.{k}": v for k, v in pe.state_dict().items()}
    state.update({f"mask_decoder.{k}": v for k, v in dec.state_dict().items()})

    def run():
        dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(3, -1, 64, 64)
        dense_pe = pe.get_dense_pe()
        masks, iou = dec(image_embeddings=emb, image_pe=dense_pe, sparse_prompt_embeddings=text,
                         dense_prompt_embeddings=dense, multimask_output=False)
        return {"low_res_masks": masks, "iou_predictions": iou}
    return ("256 wide, 64×64, 3 [SEG] prompts", state,
            {"image_embeddings": emb, "text_embeds": text}, config, run)


BLOCKS = {
    "eva_vit": eva_vit,
    "qformer": qformer,
    "dinov2": dinov2,
    "sam_image_encoder": sam_image_encoder,
    "sam_prompt_mask_decoder": sam_prompt_mask_decoder,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=",".join(BLOCKS))
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n]
    for n in names:
        if n not in BLOCKS:
            sys.exit(f"unknown block {n!r}; known: {', '.join(BLOCKS)}")
    torch.set_num_threads(os.cpu_count())
    subprocess.run(["cargo", "bench", "-q", "-p", "calico-model", "--bench", "vision", "--no-run"],
                   cwd=ROOT, check=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            torch.manual_seed(0)
            label, state, inputs, config, run = BLOCKS[name]()
            t_torch, outputs = best_time(run, args.repeats)
            path = os.path.join(tmp, f"{name}.safetensors")
            common.write_case(path, component=name, config=config, weights=state, inputs=inputs,
                              outputs=outputs, description=f"benchmark {label}", script=__file__)
            del state
            out = subprocess.run(["cargo", "bench", "-q", "-p", "calico-model", "--bench", "vision",
                                  "--", path, "--repeats", str(args.repeats)],
                                 cwd=ROOT, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            os.unlink(path)
            rows.append((name, label, t_torch, r["best_s"], r["max_rel_error"]))
            print(f"  {name}: torch {t_torch:.3f} s, candle {r['best_s']:.3f} s", file=sys.stderr)
    print(f"CPU threads: torch {torch.get_num_threads()}, machine {os.cpu_count()}; "
          f"torch {torch.__version__}; best of {args.repeats} after a warm-up")
    print(f"{'block':26}{'size':38}{'PyTorch s':>11}{'candle s':>10}{'ratio':>8}{'rel err':>10}")
    for name, label, tt, tc, err in rows:
        print(f"{name:26}{label:38}{tt:>11.3f}{tc:>10.3f}{tt / tc:>8.2f}{err:>10.1e}")


if __name__ == "__main__":
    main()
