#!/usr/bin/env python3
"""SmolLM2 prefill and greedy decode: candle vs transformers in the same run, then Calico's presets.

    .venv-ref/bin/python tools/bench/llm_bench.py [--gguf PATH] [--prompt TEXT] [--new-tokens 32]
                                                  [--repeats 3] [--presets tiny,small]

Part 1 loads SmolLM2-135M-Instruct from its llama.cpp GGUF (default
models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf; fetch it with
`bash tools/reference/fetch_llm.sh`) in transformers
(`AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)`,
the GGUF dequantised to float32, versions pinned in
tools/reference/requirements-model.txt), writes the prompt as a one-turn chat
with the tokenizer's template and generates N tokens greedily with the KV
cache, never stopping at end-of-sequence: one prefill pass (logits of the last
position only), then N - 1 one-token steps. CPU, eager, torch threads =
machine cores, one warm-up, best of R. It then runs
`cargo bench -p calico-model --bench calico -- --gguf PATH ...` on the same
prompt (the same loop in candle) and prints one markdown table: prefill
seconds, decode tokens/s (N - 1 steps over the best decode time) and the
ratio candle / transformers in speed (> 1 means candle is faster), plus
whether the prompt ids and the generated ids are identical. A second table
adds the LLM held in the GGUF's own blocks (`--quantized dequantize` and
`--quantized q8`, docs/quantized.md): bytes of the LLM's weights as held, the
process's peak resident memory, speed, and whether the generated ids match
transformers'.

Part 2 runs `cargo bench -p calico-model --bench calico -- --preset P` for
each preset (random weights; no PyTorch counterpart exists) and prints a
second table: pair encoding, the teacher-forced forward pass of one sample and
generation of N tokens (see the header of crates/calico-model/benches/calico.rs).
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct.Q4_1.gguf")
CARGO = ["cargo", "bench", "-q", "-p", "calico-model", "--bench", "calico"]


def greedy_run(model, ids, n):
    """Prefill + (n - 1) cached one-token steps; returns (prefill s, decode s, new ids)."""
    with torch.no_grad():
        t = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        tokens = [int(out.logits[0, -1].argmax())]
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        while len(tokens) < n:
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=past, use_cache=True)
            past = out.past_key_values
            tokens.append(int(out.logits[0, -1].argmax()))
        decode = time.perf_counter() - t
    return prefill, decode, tokens


def cargo_json(args):
    r = subprocess.run(CARGO + ["--"] + args, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cargo bench {' '.join(args)} failed:\n{r.stderr.strip()}")
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=os.environ.get("CALICO_SMOLLM2_GGUF", DEFAULT_GGUF))
    ap.add_argument("--prompt", default="What is the capital of France?")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="tiny,small", help="comma-separated; empty skips part 2")
    args = ap.parse_args()
    if args.new_tokens < 1 or args.repeats < 1:
        sys.exit("--new-tokens and --repeats must be positive")
    presets = [p for p in args.presets.split(",") if p]
    for p in presets:
        if p not in ("tiny", "small"):
            sys.exit(f"unknown preset {p!r}; known: tiny, small")
    if not os.path.isfile(args.gguf):
        sys.exit(f"{args.gguf} not found: run `bash tools/reference/fetch_llm.sh` or pass --gguf PATH")

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(os.cpu_count())
    subprocess.run(CARGO + ["--no-run"], cwd=ROOT, check=True)

    # ---------------------------------------------------------------- part 1
    gdir, gname = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32).eval()
    text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text)["input_ids"]
    n = args.new_tokens
    _, _, hf_ids = greedy_run(model, ids, n)
    prefill, decode = [], []
    for _ in range(args.repeats):
        p, d, again = greedy_run(model, ids, n)
        assert again == hf_ids, "transformers' greedy decoding changed between runs"
        prefill.append(p)
        decode.append(d)
    hf_prefill, hf_decode = min(prefill), min(decode)
    hf_tps = (n - 1) / hf_decode if n > 1 else float("nan")
    hf_weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e6
    hf_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6
    print(f"  transformers: prefill {hf_prefill:.3f} s, decode {hf_tps:.1f} tok/s", file=sys.stderr)
    del model

    ours = cargo_json(["--gguf", args.gguf, "--prompt", args.prompt, "--new-tokens", str(n),
                       "--repeats", str(args.repeats)])[-1]
    c_prefill, c_tps = ours["prefill_best_s"], ours["decode_tokens_per_s"]
    print(f"  candle: prefill {c_prefill:.3f} s, decode {c_tps:.1f} tok/s", file=sys.stderr)

    print(f"SmolLM2-135M-Instruct ({gname}, dequantised to float32), prompt {len(ids)} tokens, "
          f"{n} new tokens greedy (no early stop); CPU threads: torch {torch.get_num_threads()}, "
          f"machine {os.cpu_count()}; torch {torch.__version__}, "
          f"transformers {__import__('transformers').__version__}; best of {args.repeats} after a warm-up; "
          f"{time.strftime('%Y-%m-%d')}")
    print()
    print("| | transformers (PyTorch) | calico-model (candle) | candle / transformers |")
    print("|---|---:|---:|---:|")
    print(f"| prefill, {len(ids)} tokens (s) | {hf_prefill:.3f} | {c_prefill:.3f} | "
          f"{hf_prefill / c_prefill:.2f}× speed |")
    print(f"| decode, {n - 1} steps (tokens/s) | {hf_tps:.1f} | {c_tps:.1f} | {c_tps / hf_tps:.2f}× speed |")
    print()
    print(f"prompt ids identical: {'yes' if ours['prompt_ids'] == ids else 'NO'}; "
          f"generated ids identical: {'yes' if ours['ids'] == hf_ids else 'NO'}")
    if ours["ids"] != hf_ids:
        first = next((i for i, (a, b) in enumerate(zip(ours["ids"], hf_ids)) if a != b), None)
        print(f"  first difference at new token {first}: candle {ours['ids']}, transformers {hf_ids}")
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    answer = hf_ids[:hf_ids.index(eos)] if eos in hf_ids else hf_ids
    print(f"answer up to the first <|im_end|>: {tok.decode(answer, skip_special_tokens=True)!r}")

    # ------------------------------------------------------------ part 1b
    rows = [("candle, float32", ours)]
    for m in ("dequantize", "q8"):
        rows.append((f"candle, {m}", cargo_json(["--gguf", args.gguf, "--prompt", args.prompt,
                                                 "--new-tokens", str(n), "--repeats", str(args.repeats),
                                                 "--quantized", m])[-1]))
    print()
    print(f"The LLM's weights as held ({gname}); each candle row is its own process, "
          f"so peak RSS is that run's alone; the transformers process also holds PyTorch itself")
    print()
    print("| run | LLM weights | weights (MB) | peak RSS (MB) | prefill (s) | decode (tokens/s) | "
          "ids as transformers |")
    print("|---|---|---:|---:|---:|---:|---|")
    print(f"| transformers | float32 | {hf_weights_mb:.0f} | {hf_rss_mb:.0f} | {hf_prefill:.3f} | "
          f"{hf_tps:.1f} | — |")
    for name, r in rows:
        same = r["ids"] == hf_ids
        if not same:
            first = next((i for i, (a, b) in enumerate(zip(r["ids"], hf_ids)) if a != b), len(hf_ids))
            same = f"no, from new token {first}"
        else:
            same = "yes"
        print(f"| {name} | {r['llm_weights']} | {r['weights_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['prefill_best_s']:.3f} | {r['decode_tokens_per_s']:.1f} | {same} |")

    # ---------------------------------------------------------------- part 2
    if not presets:
        return
    print()
    print(f"Calico with random weights (candle), one image pair, best of {args.repeats} after a warm-up "
          f"(mean in brackets), {n} new tokens")
    print()
    print("| preset | SAM encoder in the model | encode pair (s) | forward, 1 sample (s) | "
          "generate (s) | tokens/s | tokens/s without encoding |")
    print("|---|---|---:|---:|---:|---:|---:|")
    notes = []
    for p in presets:
        rows = {r["op"]: r for r in cargo_json(["--preset", p, "--repeats", str(args.repeats),
                                                "--new-tokens", str(n)])}
        e, f, g = rows["encode_images"], rows["forward"], rows["generate"]
        print(f"| {p} | {e['sam_encoder']} | {e['best_s']:.3f} ({e['mean_s']:.3f}) | "
              f"{f['best_s']:.3f} ({f['mean_s']:.3f}) | {g['best_s']:.3f} ({g['mean_s']:.3f}) | "
              f"{g['tokens_per_s']:.1f} | {g['tokens_per_s_without_encode']:.1f} |")
        b = rows["build"]
        notes.append(f"{p}: {b['params'] / 1e6:.1f} M parameters (built in {b['seconds']:.1f} s), "
                     f"forward sequence {f['seq_len']} tokens with {f['masks']} masks, "
                     f"generate prompt {g['prompt_len']} tokens, {g['generated']} tokens generated")
        if "sam_encoder" in rows:
            s = rows["sam_encoder"]
            notes.append(f"{p}: real SAM encoder ({s['sam_encoder']}) on the pair, run once: "
                         f"{s['seconds']:.1f} s")
    print()
    for line in notes:
        print(f"- {line}")


if __name__ == "__main__":
    main()
