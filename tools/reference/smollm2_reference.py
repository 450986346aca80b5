#!/usr/bin/env python3
"""Write transformers' outputs for SmolLM2-135M-Instruct loaded from its GGUF.

The Rust test `crates/calico-model/tests/smollm2.rs` reads the fixture and
checks that `calico_model::gguf::load_llama_gguf`,
`calico_model::tokenizer::CalicoTokenizer` and `calico_model::llama::Llama`
give the same weights, token ids, logits and greedy continuations.

    bash tools/reference/fetch_llm.sh
    /work/main/.venv-ref/bin/python tools/reference/smollm2_reference.py \
        [--gguf PATH] [--out DIR]

The environment is the one in tools/reference/requirements-model.txt
(transformers, torch, gguf; nothing is installed by this script). The GGUF is
loaded with `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...,
dtype=float32)`: gguf-py dequantises every tensor to float32 and
transformers undoes llama.cpp's q/k row permutation. The tokenizer is
`AutoTokenizer.from_pretrained(dir, gguf_file=...)`.

Written to DIR (default crates/calico-model/tests/fixtures/smollm2/):

* reference.json: GGUF sha256, package versions, the config transformers
  built, tokenizer cases (text -> ids), chat-template cases, and per prompt
  its text, ids and greedy continuation (ids and decoded text); per sampled
  weight its name and whole-tensor sums.
* reference.safetensors: `logits.<i>` (vocab,) last-position logits of
  prompt i; `seq_logits.<i>` (T, 1024) logits of every position over the
  first 1024 vocabulary entries for two prompts; `weight_idx.<name>` (int64)
  and `weight_val.<name>` (float32) 512 sampled elements of a few
  dequantised weights (flat indices into the HF-layout tensor).

Greedy decoding is a plain argmax loop with the KV cache: at most
MAX_NEW tokens, stopping after the end-of-turn token (which is kept).

Also written (always; `--only-gguf-cases` writes just these, in seconds):
DIR/gguf_cases/quant_types.gguf, one (2, 256) tensor per storage type with
gguf-py's dequantisation of each in quant_types.safetensors (K-quant blocks
are random bytes: gguf-py cannot quantise to them), and
DIR/gguf_cases/tiny_llama.gguf, a random 2-layer LLaMA (GQA, untied output,
mixed storage types) written the way llama.cpp's converter writes one (q/k
rows permuted), with the HF-named float32 tensors transformers loads from it
in tiny_llama.safetensors.
"""
import argparse
import hashlib
import json
import os
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import gguf  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import GGMLQuantizationType as Q  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_GGUF = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct", GGUF_NAME)
DEFAULT_OUT = os.path.join(ROOT, "crates", "calico-model", "tests", "fixtures", "smollm2")
MAX_NEW = 32
SEQ_VOCAB = 1024
SAMPLES = 512

# Tokenizer cases: spaces, numbers, code, unicode, special tokens.
TOKENIZER_TEXTS = [
    "Hello world",
    "What is the capital of France?",
    "  leading and   multiple spaces  ",
    "tab\tand\nnew lines\r\n\n",
    "Numbers: 3, 42, 1234567, 3.14159, -0.5e10, 2nd, 1990s",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "fn main() { println!(\"{}\", vec![1, 2, 3].iter().sum::<i32>()); }",
    "café naïve façade Zürich señor",
    "日本語のテキストと中文文本",
    "Здравствуй, мир! Ελληνικά",
    "emoji 🙂👍🏽 and e\u0301clair, non\u00a0breaking",
    "don't I'll we're they've it's O'Neill's",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>plain text after a special token<repo_name>x",
    "URL https://example.com/a/b?c=d&e=f#g and email a.b@c.org",
    "",
    " ",
    "[SEG] <p>a chair</p> <image>",
]

# Chat-template cases (the model's own template, add_generation_prompt=True).
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Name a colour."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Tell me a joke."},
    ],
]

# Prompts for logits and greedy decoding: (name, chat messages or plain text).
PROMPTS = [
    ("capital", [{"role": "user", "content": "What is the capital of France?"}]),
    ("haiku", [{"role": "user", "content": "Write a haiku about the sea."}]),
    ("primes", [{"role": "user", "content": "List three prime numbers greater than 10."}]),
    (
        "system",
        [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": "Explain photosynthesis in one sentence."},
        ],
    ),
    ("fox", "The quick brown fox"),
    ("code", "def fibonacci(n):\n    "),
]
SEQ_LOGIT_PROMPTS = ("capital", "fox")

SAMPLED_WEIGHTS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.layers.0.input_layernorm.weight",
    "model.layers.0.post_attention_layernorm.weight",
    "model.layers.29.self_attn.q_proj.weight",
    "model.layers.29.self_attn.k_proj.weight",
    "model.norm.weight",
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def greedy(model, ids, eos):
    out = model(torch.tensor([ids]), use_cache=True)
    cache = out.cache
    new = []
    logits = out.logits[0, -1]
    for _ in range(MAX_NEW):
        nxt = int(torch.argmax(logits))
        new.append(nxt)
        if nxt == eos:
            break
        out = model(torch.tensor([[nxt]]), cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[0, -1]
    return new


QUANT_TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0,
               Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
K_QUANTS = {Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K}


def stored(rng, x, qtype):
    """`x` as GGUF stores it in `qtype` (raw bytes for quantised types)."""
    if qtype in K_QUANTS:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        return rng.integers(0, 256, size=(x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
    return gguf.quants.quantize(x.astype(np.float32), qtype)


def add(writer, name, data, qtype):
    if data.dtype == np.uint8:
        writer.add_tensor(name, data, raw_dtype=qtype)
    else:
        writer.add_tensor(name, data)


def write_gguf(path, writer):
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def permute_like_llama_cpp(w, n_head):
    """HF row order -> llama.cpp's interleaved-rope row order (convert_hf_to_gguf)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf_cases(out):
    out = os.path.join(out, "gguf_cases")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1)

    # One tensor per storage type, and gguf-py's dequantisation of it.
    path = os.path.join(out, "quant_types.gguf")
    w = gguf.GGUFWriter(path, "calico-test")
    for qt in QUANT_TYPES:
        add(w, f"t.{qt.name}", stored(rng, rng.standard_normal((2, 256)), qt), qt)
    write_gguf(path, w)
    expected = {}
    for t in gguf.GGUFReader(path).tensors:
        expected[t.name] = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
    save_file(expected, os.path.join(out, "quant_types.safetensors"))

    # A tiny LLaMA, converted the way llama.cpp converts one.
    hidden, inter, heads, kv, layers, vocab = 64, 96, 4, 2, 2, 64
    head_dim = hidden // heads
    path = os.path.join(out, "tiny_llama.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("calico tiny llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(5000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)

    def lin(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm(n):
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    add(w, "token_embd.weight", stored(rng, lin(vocab, hidden), Q.Q8_0), Q.Q8_0)
    for i in range(layers):
        p = f"blk.{i}."
        add(w, p + "attn_norm.weight", norm(hidden), Q.F32)
        add(w, p + "attn_q.weight", stored(rng, permute_like_llama_cpp(lin(hidden, hidden), heads), Q.Q4_1), Q.Q4_1)
        add(w, p + "attn_k.weight", stored(rng, permute_like_llama_cpp(lin(kv * head_dim, hidden), kv), Q.Q4_0), Q.Q4_0)
        add(w, p + "attn_v.weight", stored(rng, lin(kv * head_dim, hidden), Q.Q5_0), Q.Q5_0)
        add(w, p + "attn_output.weight", stored(rng, lin(hidden, hidden), Q.Q5_1), Q.Q5_1)
        add(w, p + "ffn_norm.weight", norm(hidden), Q.F32)
        add(w, p + "ffn_gate.weight", lin(inter, hidden).astype(np.float16), Q.F16)
        add(w, p + "ffn_up.weight", stored(rng, lin(inter, hidden), Q.BF16), Q.BF16)
        add(w, p + "ffn_down.weight", stored(rng, lin(hidden, inter), Q.Q8_0), Q.Q8_0)
    add(w, "output_norm.weight", norm(hidden), Q.F32)
    add(w, "output.weight", stored(rng, lin(vocab, hidden), Q.Q4_1), Q.Q4_1)
    write_gguf(path, w)
    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="tiny_llama.gguf", dtype=torch.float32)
    assert not model.config.tie_word_embeddings
    sd = {k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(out, "tiny_llama.safetensors"))
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)
    print(f"wrote {out}/ ({len(expected)} storage types, tiny llama with {len(sd)} tensors)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gguf", default=os.environ.get("CALICO_SMOLLM2_GGUF", DEFAULT_GGUF))
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--only-gguf-cases", action="store_true", help="write only DIR/gguf_cases/")
    args = ap.parse_args()
    write_gguf_cases(args.out)
    if args.only_gguf_cases:
        return
    torch.manual_seed(0)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    gdir, gname = os.path.split(os.path.abspath(args.gguf))
    tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname)
    model = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
    model.eval()
    cfg = model.config
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr(), "expected tied"

    tensors = {}
    ref = {
        "gguf": GGUF_NAME,
        "gguf_sha256": sha256(args.gguf),
        "versions": {p: version(p) for p in ("transformers", "torch", "gguf", "tokenizers", "numpy")},
        "config": {
            k: getattr(cfg, k, None)
            for k in (
                "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "max_position_embeddings", "tie_word_embeddings", "hidden_act",
                "bos_token_id", "eos_token_id",
            )
        },
        "rope_theta": float(cfg.rope_parameters["rope_theta"]),
        "eos_token": tok.eos_token,
        "eos_id": eos,
        "max_new": MAX_NEW,
        "tokenizer": [],
        "chats": [],
        "prompts": [],
        "weights": [],
        "seq_vocab": SEQ_VOCAB,
    }

    for text in TOKENIZER_TEXTS:
        ids = tok(text)["input_ids"]
        ref["tokenizer"].append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids),
                "decoded_skip_special": tok.decode(ids, skip_special_tokens=True),
            }
        )

    for msgs in CHATS:
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ref["chats"].append({"messages": msgs, "text": text, "ids": tok(text)["input_ids"]})

    for i, (name, p) in enumerate(PROMPTS):
        if isinstance(p, str):
            text, kind, msgs = p, "plain", None
        else:
            text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            kind, msgs = "chat", p
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        tensors[f"logits.{i}"] = logits[-1].numpy().astype(np.float32)
        if name in SEQ_LOGIT_PROMPTS:
            tensors[f"seq_logits.{i}"] = np.ascontiguousarray(logits[:, :SEQ_VOCAB].numpy(), dtype=np.float32)
        new = greedy(model, ids, eos)
        ref["prompts"].append(
            {
                "name": name,
                "kind": kind,
                "messages": msgs,
                "text": text,
                "ids": ids,
                "greedy_ids": new,
                "greedy_text": tok.decode(new, skip_special_tokens=True),
                "seq_logits": name in SEQ_LOGIT_PROMPTS,
            }
        )
        print(f"{name}: {len(ids)} tokens -> {tok.decode(new, skip_special_tokens=True)!r}")

    sd = model.state_dict()
    rng = np.random.default_rng(0)
    for name in SAMPLED_WEIGHTS:
        w = sd[name].numpy().astype(np.float32)
        flat = w.reshape(-1)
        idx = np.sort(rng.choice(flat.size, size=min(SAMPLES, flat.size), replace=False)).astype(np.int64)
        tensors[f"weight_idx.{name}"] = idx
        tensors[f"weight_val.{name}"] = flat[idx]
        w64 = flat.astype(np.float64)
        ref["weights"].append(
            {
                "name": name,
                "shape": list(w.shape),
                "sum": float(w64.sum()),
                "sum_abs": float(np.abs(w64).sum()),
                "sum_sq": float((w64 * w64).sum()),
            }
        )

    os.makedirs(args.out, exist_ok=True)
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))
    os.chmod(os.path.join(args.out, "reference.safetensors"), 0o644)
    with open(os.path.join(args.out, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(ref, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {args.out}/reference.{{json,safetensors}}")


if __name__ == "__main__":
    main()
