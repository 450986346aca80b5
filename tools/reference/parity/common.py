"""Writing parity cases (the format is specified in docs/parity.md).

A case is one .safetensors file:
  weights.<checkpoint tensor name>   the block's weights, under the names a
                                     real checkpoint uses
  inputs.<name>                      the inputs
  outputs.<name>                     the reference outputs
and string metadata: component, config (JSON), tolerance, generator,
description.
"""

import json
import os
import platform
import sys

import numpy as np
import torch
from safetensors.torch import save_file

TOLERANCE = 1e-4


def generator_string(script):
    import importlib.metadata as md

    parts = [os.path.basename(script), f"python {platform.python_version()}"]
    for pkg in ("torch", "transformers", "segment-anything", "pillow", "numpy"):
        try:
            parts.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return "; ".join(parts)


def _flat(prefix, tensors):
    out = {}
    for name, t in tensors.items():
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.float64:
            t = t.float()
        out[f"{prefix}.{name}"] = t.clone()
    return out


def write_case(path, *, component, config, weights, inputs, outputs,
               description, script, tolerance=TOLERANCE):
    """Writes one case; `weights`, `inputs`, `outputs` map names to tensors."""
    tensors = {}
    tensors.update(_flat("weights", weights))
    tensors.update(_flat("inputs", inputs))
    tensors.update(_flat("outputs", outputs))
    metadata = {
        "component": component,
        "config": json.dumps(config, sort_keys=True),
        "tolerance": repr(float(tolerance)),
        "generator": generator_string(script),
        "description": description,
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)
    size = os.path.getsize(path)
    print(f"wrote {path} ({size / 1024:.0f} KiB, {len(tensors)} tensors)", file=sys.stderr)


def seed_everything(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def randomise_(module, seed, std=0.5):
    """Gives every parameter and buffer-like float parameter a random value
    (random init leaves LayerNorms at 1/0 and some biases at 0, which would
    hide a loader that skipped them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("weight") and p.dim() == 1:
                p.copy_(1.0 + std * 0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else 1
                scale = std / max(1.0, fan_in) ** 0.5 if p.dim() > 1 else std * 0.2
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module
