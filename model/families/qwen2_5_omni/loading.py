"""Qwen2.5-Omni's part of `load_omni`: its weights, its voices and its processor.

The voices are the released `spk_dict.pt` beside config.json: for each, the talker's BOS text token and the
token2wav's speaker condition and reference mel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from model import constants as C
from model.engine.sampling import TALKER_DEFAULT
from model.families.family import LoadError

HUB_7B, HUB_3B = C.HUB_7B, C.HUB_3B
MODEL_TYPE = "qwen2_5_omni"
# Answers in speech ask for a voice; this family's default (transformers' generate picks "Chelsie").
DEFAULT_VOICE = "Chelsie"
# It speaks only under this system prompt (the processor warns otherwise).
SYSTEM_PROMPT = C.AUDIO_SYSTEM_PROMPT
TALKER_SAMPLING = TALKER_DEFAULT  # transformers' generate defaults for the talker
# Free GPU memory that `--model auto` asks for before choosing a size: the official minimum for a 15 s
# video (bf16, flash-attention 2: 7B 31 GB, 3B 18 GB) with the float32 vocoder and some headroom.
MIN_FREE_GIB = {HUB_7B: 34.0, HUB_3B: 20.0}


def check_voices_file(directory: Path) -> None:
    if not (directory / "spk_dict.pt").is_file():
        raise LoadError(
            f"{directory} has no spk_dict.pt, the file that holds the voices. Copy it from the released checkpoint "
            f"(it sits beside config.json in {C.HUB_7B} and {C.HUB_3B})."
        )


def load_voices(path: Path) -> dict[str, dict]:
    try:
        voices = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:
        raise LoadError(f"{path} is not a readable voices file: {error}") from error
    for name, voice in voices.items() if isinstance(voices, dict) else [("?", None)]:
        if not (isinstance(voice, dict) and {"bos_token", "cond", "ref_mel"} <= voice.keys()):
            raise LoadError(f"{path}: voice {name!r} lacks bos_token, cond or ref_mel; is it a Qwen2.5-Omni spk_dict.pt?")
    if not voices:
        raise LoadError(f"{path} holds no voices.")
    return voices


class ThinkerIdsInTheTalkerConfig(logging.Filter):
    """Drops transformers' warning that a talker config's token id lies outside the talker's vocabulary, for
    the seven ids the released config keeps there: they are the thinker's (its vision, audio and TTS text
    markers, all above 151000), which the talker's codec vocabulary (8448) never embeds; the engine reads
    them as thinker ids. Every other warning passes."""

    NAMES = ("tts_text_start_token_id", "tts_text_end_token_id", "tts_text_pad_token_id", "vision_start_token_id",
             "vision_end_token_id", "audio_start_token_id", "audio_end_token_id")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (
            message.startswith("Model config: ")
            and "must be `None` or an integer within the vocabulary" in message
            and message.split()[2] in self.NAMES
        )


def quiet_known_config_warnings() -> None:
    config_logger = logging.getLogger("transformers.configuration_utils")
    if not any(isinstance(f, ThinkerIdsInTheTalkerConfig) for f in config_logger.filters):
        config_logger.addFilter(ThinkerIdsInTheTalkerConfig())


def load_model_weights(directory: Path, device: torch.device, dtype: torch.dtype, attn: str):
    """Qwen2_5OmniForConditionalGeneration from `directory`, refusing missing or unexpected weights."""
    from transformers import Qwen2_5OmniForConditionalGeneration as Omni

    quiet_known_config_warnings()
    # Omni.from_pretrained loads the speakers itself and breaks with output_loading_info (it calls
    # load_speakers on the returned tuple): use the generic loader and load the voices ourselves.
    model, info = super(Omni, Omni).from_pretrained(
        str(directory),
        dtype=dtype,
        attn_implementation=attn,
        device_map={"": device},
        output_loading_info=True,
    )
    problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "mismatched_keys") and v}
    if problems:
        listed = "; ".join(f"{k}: {', '.join(map(str, v[:5]))}{' ...' if len(v) > 5 else ''}" for k, v in problems.items())
        raise LoadError(f"{directory} does not match the Qwen2.5-Omni architecture ({listed}).")
    unexpected = [k for k in info.get("unexpected_keys", ()) if not k.endswith("inv_freq")]
    if unexpected:  # the released files carry the DiT's rotary inv_freq, a buffer transformers recomputes
        raise LoadError(f"{directory} has weights Qwen2.5-Omni does not use: {', '.join(sorted(unexpected)[:5])}")
    model.token2wav.float()  # the DiT and BigVGAN are only correct in float32
    return model.eval()


def processor(directory: Path):
    from model.families.qwen2_5_omni.processing import OmniProcessor

    return OmniProcessor.from_pretrained(str(directory))
