"""The model a benchmark runs: a checkpoint (`tiny`, a directory) or a real architecture with random weights.

`--model 3b` / `--model 7b` build the released 3B config and the reconstructed 7B config (model/configs)
with random weights directly on the device, nothing downloaded: the work per token is the real model's,
the outputs are noise; `--model qwen3-30b-a3b` Qwen3-Omni's released config the same way (65.7 GiB in
bfloat16: a GPU of 80 GB or more). `random_omni` and `random_qwen3` take any config, so CI runs the same
builders on the tiny configs on a CPU (`--model tiny-random`, `--model tiny-random-qwen3`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from model import constants as C
from model.families import QWEN3_OMNI
from model.families.qwen2_5_omni import tiny
from model.families.qwen3_omni import loading as loading_qwen3
from model.families.qwen3_omni import tiny as tiny_qwen3_omni
from model.loading import (
    LoadedOmni,
    default_device,
    default_dtype,
    ensure_tiny_checkpoint,
    load_omni,
    pick_attention,
)

RANDOM_CONFIGS = {
    "3b": C.REFERENCE_3B_DIR / "config.json",
    "7b": C.REFERENCE_7B_CONFIG,
}
RANDOM_SEED = 0


def _init_like_tiny(model: torch.nn.Module, seed: int) -> None:
    """The tiny checkpoint's initialisation rule (variance-preserving weights, unit norms, sharper output
    heads), drawn on the parameters' own device: a 7B drawn on a CPU would take minutes."""
    generator = None
    with torch.no_grad():
        for name, param in model.named_parameters():
            if generator is None or generator.device != param.device:
                generator = torch.Generator(device=param.device).manual_seed(seed)
            leaf = name.rsplit(".", 1)[-1]
            if param.ndim == 1:
                if leaf == "bias":
                    param.normal_(0.0, 0.02, generator=generator)
                elif "norm" in name or leaf == "weight":
                    param.fill_(1.0)
                else:
                    param.zero_()  # BigVGAN's log-scale Snake parameters: exp(0) = 1
                continue
            if "embed" in name and param.ndim == 2:
                std = 1.0
            elif "experts" in name and param.ndim == 3:  # fused experts, (experts, out, in)
                std = 1.0 / param.shape[-1] ** 0.5
            else:
                scale = 4.0 if name.endswith(("lm_head.weight", "codec_head.weight")) else 1.0
                std = scale / param[0].numel() ** 0.5
            param.normal_(0.0, std, generator=generator)


def random_omni(
    config: dict, device: str | torch.device | None = None, seed: int = RANDOM_SEED, dtype: torch.dtype | None = None
) -> LoadedOmni:
    """Qwen2.5-Omni of architecture `config` (a config.json as a dict) with random weights: on CUDA the
    thinker and talker in bfloat16 and token2wav in float32, as load_omni loads real checkpoints; the
    processor and tokenizer from the tiny checkpoint (the real ones); voices in the real spk_dict shapes."""
    from transformers import AutoConfig, Qwen2_5OmniForConditionalGeneration

    from model.families.qwen2_5_omni.processing import OmniProcessor

    device = torch.device(device) if device else default_device()
    dtype = dtype or default_dtype(device)
    attn = pick_attention(device)
    with torch.device(device):  # built in place: a 7B built on the CPU first would need 43 GB there
        model = Qwen2_5OmniForConditionalGeneration._from_config(
            AutoConfig.for_model(**config), dtype=dtype, attn_implementation=attn
        )
    model.token2wav.float()  # the DiT and BigVGAN are only correct in float32
    _init_like_tiny(model, seed)
    # The tiny checkpoint's talker shaping: a random talker must only speak codes the DiT can embed.
    tiny._shape_talker(model)
    model.eval()
    voices = tiny.speaker_dict()
    model.speaker_map = voices  # transformers' generate(speaker=...) reads them here
    checkpoint = ensure_tiny_checkpoint()
    processor = OmniProcessor.from_pretrained(str(checkpoint))
    loaded = LoadedOmni(model, processor, voices, "random", checkpoint, device, dtype, attn, is_tiny=False)
    loaded.notes.append("random weights: the real architecture's work per token, noise for output")
    return loaded


def random_qwen3(
    config: dict, device: str | torch.device | None = None, seed: int = RANDOM_SEED, dtype: torch.dtype | None = None
) -> LoadedOmni:
    """Qwen3-Omni of architecture `config` with random weights, built on the device in the thinker's and
    talker's dtype (code2wav too, as transformers loads it); the processor from the tiny Qwen3-Omni checkpoint
    (the same files), the voices from the config. Random weights never end an answer: benchmarks force its
    length."""
    from transformers import AutoConfig, Qwen3OmniMoeForConditionalGeneration

    device = torch.device(device) if device else default_device()
    dtype = dtype or default_dtype(device)
    attn = pick_attention(device)
    with torch.device(device):  # built in place: 65.7 GiB on a CPU first would not fit
        model = Qwen3OmniMoeForConditionalGeneration._from_config(
            AutoConfig.for_model(**config), dtype=dtype, attn_implementation=attn
        )
    _init_like_tiny(model, seed)
    model.eval()
    checkpoint = ensure_tiny_checkpoint(spec=QWEN3_OMNI.tiny)
    loaded = LoadedOmni(
        model, loading_qwen3.processor(checkpoint), loading_qwen3.voices(config), "random", checkpoint, device, dtype, attn,
        family=QWEN3_OMNI,
    )
    loaded.notes.append("random weights: the real architecture's work per token, noise for output")
    return loaded


RANDOM_QWEN3 = {"qwen3-30b-a3b": "Qwen3-Omni-30B-A3B architecture", "tiny-random-qwen3": "tiny Qwen3-Omni config"}


def load_for_bench(spec: str, device: str | None = None, dtype: torch.dtype | None = None) -> tuple[LoadedOmni, str]:
    """(loaded model, a one-line description). `spec`: tiny, tiny-qwen3-omni, tiny-random, tiny-random-qwen3, 3b,
    7b, qwen3-30b-a3b or a checkpoint directory. `dtype`: the thinker's and talker's (default: bfloat16 on
    CUDA, float32 elsewhere)."""
    if spec in RANDOM_QWEN3:
        config = tiny_qwen3_omni.tiny_config() if spec == "tiny-random-qwen3" else tiny_qwen3_omni.released_config()
        loaded = random_qwen3(config, device, dtype=dtype)
        label = f"{RANDOM_QWEN3[spec]}, random weights"
    elif spec in RANDOM_CONFIGS or spec == "tiny-random":
        config = tiny.tiny_config() if spec == "tiny-random" else json.loads(Path(RANDOM_CONFIGS[spec]).read_text())
        loaded = random_omni(config, device, dtype=dtype)
        name = {"tiny-random": "tiny config", "3b": "Qwen2.5-Omni-3B architecture", "7b": "Qwen2.5-Omni-7B architecture"}[spec]
        label = f"{name}, random weights"
    else:
        loaded = load_omni(spec, device, dtype)
        label = f"tiny random-weight {loaded.family.name} checkpoint" if loaded.is_tiny else loaded.source
    dtype = str(loaded.dtype).removeprefix("torch.")
    vocoder = loaded.family.describe_vocoder(dtype)
    return loaded, f"{label} on {loaded.device.type} ({dtype} thinker/talker, {vocoder}, {loaded.attn_implementation})"


@contextmanager
def torch_threads(count: int | None):
    """torch's CPU threads for one run, put back afterwards: `main` is also called in-process (the tests),
    and the thread count changes the order floats are summed in for everything computed after it."""
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
