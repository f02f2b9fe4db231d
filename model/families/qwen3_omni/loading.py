"""Qwen3-Omni's part of `load_omni`: its weights, its voices and its processor.

The voices are the talker's speaker codes in config.json (`talker_config.speaker_id`), not a file of
reference mels as for Qwen2.5-Omni; the page shows their names capitalised, the config keeps them lower-case.
"""

from __future__ import annotations

from pathlib import Path

import torch

from model.engine.sampling import Sampling

HUB_ID = "Qwen/Qwen3-Omni-30B-A3B-Instruct"
MODEL_TYPE = "qwen3_omni_moe"
# Answers in speech ask for a voice; this family's default (transformers' generate picks "Ethan").
DEFAULT_VOICE = "Ethan"
# The Qwen3-Omni cookbooks' voice-chat system prompt is their own choice; any prompt works with speech (no
# fixed prompt is required, unlike Qwen2.5-Omni), so the app keeps a short one.
SYSTEM_PROMPT = "You are Qwen-Omni, a smart voice assistant created by Alibaba Qwen."
# transformers' generate defaults for the talker (its code predictor then samples top-k 50, top-p 0.8).
TALKER_SAMPLING = Sampling(greedy=False, temperature=0.9, top_k=50, top_p=1.0, repetition_penalty=1.05)
# Free GPU memory `--model auto` asks for: 35.3 billion parameters in bfloat16 are 65.7 GiB (70.5 GB), plus
# the KV caches of a few conversations and the activations.
MIN_FREE_GIB = 76.0


def voices(config: dict) -> dict[str, dict]:
    """Voice name -> {"speaker_id": the talker's codec id for it}."""
    speakers = config.get("talker_config", {}).get("speaker_id") or {}
    return {name.capitalize(): {"speaker_id": int(code)} for name, code in speakers.items()}


def load_model_weights(directory: Path, device: torch.device, dtype: torch.dtype, attn: str, error: type[Exception]):
    """Qwen3OmniMoeForConditionalGeneration from `directory`, refusing missing, mismatched or unexpected weights."""
    from transformers import Qwen3OmniMoeForConditionalGeneration as Omni

    model, info = Omni.from_pretrained(
        str(directory),
        dtype=dtype,
        attn_implementation=attn,
        device_map={"": device},
        output_loading_info=True,
    )
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys", "unexpected_keys") and v}
    if problems:
        listed = "; ".join(f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise error(f"{directory} does not match the Qwen3-Omni architecture ({listed}).")
    return model.eval()


def processor(directory: Path):
    from model.families.qwen3_omni.processing import Qwen3OmniProcessor

    return Qwen3OmniProcessor.from_pretrained(str(directory))
